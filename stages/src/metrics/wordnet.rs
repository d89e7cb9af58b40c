//! WordNet 3.0 reader for METEOR's synonym stage, reproducing what nltk 3.10.4's
//! `wordnet.synsets(word)` → `synset.lemmas()` → `lemma.name()` returns.
//!
//! Reads the standard dict files (index.{noun,verb,adj,adv}, data.*, and the *.exc exception
//! lists that NLTK's morphy uses) from a directory the caller names — Debian's `wordnet-base`
//! puts them in /usr/share/wordnet (see scripts/install-wordnet.sh). Index and exception lists
//! are parsed at load; data files are kept in memory and a synset line is parsed when asked,
//! at its byte offset, as NLTK does.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use super::pytext::{py_lower, py_split};
use super::MetricsError;

/// Env var naming the WordNet dict dir for [`Wordnet::load_default`].
pub const WORDNET_DIR_ENV: &str = "FEDP2EFT_WORDNET";
/// Where Debian's `wordnet-base` installs the dict files.
pub const DEFAULT_WORDNET_DIR: &str = "/usr/share/wordnet";

/// NLTK's `POS_LIST` order (noun, verb, adj, adv): `synsets` walks the parts of speech in it.
const POS_TAGS: [&str; 4] = ["n", "v", "a", "r"];
const FILE_SUFFIX: [&str; 4] = ["noun", "verb", "adj", "adv"];
const INDEX_FILES: [&str; 4] = ["index.noun", "index.verb", "index.adj", "index.adv"];
const DATA_FILES: [&str; 4] = ["data.noun", "data.verb", "data.adj", "data.adv"];
const EXC_FILES: [&str; 4] = ["noun.exc", "verb.exc", "adj.exc", "adv.exc"];

/// `WordNetCorpusReader.MORPHOLOGICAL_SUBSTITUTIONS`, per part of speech in `POS_TAGS` order.
const SUBSTITUTIONS: [&[(&str, &str)]; 4] = [
    &[
        ("s", ""),
        ("ses", "s"),
        ("ves", "f"),
        ("xes", "x"),
        ("zes", "z"),
        ("ches", "ch"),
        ("shes", "sh"),
        ("men", "man"),
        ("ies", "y"),
    ],
    &[
        ("s", ""),
        ("ies", "y"),
        ("es", "e"),
        ("es", ""),
        ("ed", "e"),
        ("ed", ""),
        ("ing", "e"),
        ("ing", ""),
    ],
    &[("er", ""), ("est", ""), ("er", "e"), ("est", "e")],
    &[],
];

/// A loaded WordNet. Load once ([`Wordnet::load`]) and share it by reference.
pub struct Wordnet {
    dir: PathBuf,
    /// lemma → synset byte offsets per part of speech (empty: lemma absent for that pos).
    index: HashMap<String, [Vec<u32>; 4]>,
    /// inflected form → base forms, per part of speech.
    exceptions: [HashMap<String, Vec<String>>; 4],
    data: [Vec<u8>; 4],
}

impl std::fmt::Debug for Wordnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wordnet")
            .field("dir", &self.dir)
            .field("lemmas", &self.index.len())
            .finish()
    }
}

fn read_file(dir: &Path, name: &'static str) -> Result<Vec<u8>, MetricsError> {
    let path = dir.join(name);
    match std::fs::read(&path) {
        Ok(bytes) => Ok(bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            Err(MetricsError::WordnetFileMissing {
                dir: dir.to_path_buf(),
                file: name,
            })
        }
        Err(source) => Err(MetricsError::WordnetIo { path, source }),
    }
}

fn format_error(
    dir: &Path,
    file: &str,
    location: String,
    message: impl Into<String>,
) -> MetricsError {
    MetricsError::WordnetFormat {
        path: dir.join(file),
        location,
        message: message.into(),
    }
}

fn utf8_lines<'a>(
    dir: &Path,
    file: &'static str,
    bytes: &'a [u8],
) -> Result<std::str::Lines<'a>, MetricsError> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1;
        format_error(dir, file, format!("line {line}"), "not valid UTF-8")
    })?;
    Ok(text.lines())
}

impl Wordnet {
    /// Loads the dict files from `dir`; a missing file is an error naming `dir` and the file.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self, MetricsError> {
        let dir = dir.as_ref();
        let mut index: HashMap<String, [Vec<u32>; 4]> = HashMap::new();
        for file in INDEX_FILES {
            let bytes = read_file(dir, file)?;
            for (i, line) in utf8_lines(dir, file, &bytes)?.enumerate() {
                parse_index_line(line, &mut index)
                    .map_err(|m| format_error(dir, file, format!("line {}", i + 1), m))?;
            }
        }
        let mut exceptions: [HashMap<String, Vec<String>>; 4] = Default::default();
        for (p, file) in EXC_FILES.into_iter().enumerate() {
            let bytes = read_file(dir, file)?;
            for (i, line) in utf8_lines(dir, file, &bytes)?.enumerate() {
                let mut terms = py_split(line);
                let inflected = terms.next().ok_or_else(|| {
                    format_error(dir, file, format!("line {}", i + 1), "empty line")
                })?;
                exceptions[p].insert(inflected.to_owned(), terms.map(str::to_owned).collect());
            }
        }
        let mut data: [Vec<u8>; 4] = Default::default();
        for (p, file) in DATA_FILES.into_iter().enumerate() {
            data[p] = read_file(dir, file)?;
        }
        Ok(Wordnet {
            dir: dir.to_path_buf(),
            index,
            exceptions,
            data,
        })
    }

    /// The dict files [`Wordnet::load`] reads from `dir` (their digests belong in a cache key).
    pub fn files(dir: &Path) -> Vec<PathBuf> {
        INDEX_FILES
            .iter()
            .chain(&EXC_FILES)
            .chain(&DATA_FILES)
            .map(|f| dir.join(f))
            .collect()
    }

    /// Loads from `$FEDP2EFT_WORDNET`, else /usr/share/wordnet.
    pub fn load_default() -> Result<Self, MetricsError> {
        Self::load(Self::default_dir())
    }

    /// The dir [`Wordnet::load_default`] reads.
    pub fn default_dir() -> PathBuf {
        std::env::var_os(WORDNET_DIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_WORDNET_DIR))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `_morphy(form, pos)` of nltk 3.10.4: the exception list's base forms if `form` is in
    /// it, else one pass of the suffix rules; then `form` and those candidates that are
    /// lemmas of `pos`, first occurrence kept.
    fn morphy<'a>(&self, form: &'a str, p: usize) -> Vec<std::borrow::Cow<'a, str>> {
        use std::borrow::Cow;
        let mut candidates: Vec<Cow<'a, str>> = vec![Cow::Borrowed(form)];
        if let Some(bases) = self.exceptions[p].get(form) {
            candidates.extend(bases.iter().map(|b| Cow::Owned(b.clone())));
        } else {
            for (old, new) in SUBSTITUTIONS[p] {
                if let Some(stem) = form.strip_suffix(old) {
                    candidates.push(Cow::Owned(format!("{stem}{new}")));
                }
            }
        }
        let mut forms: Vec<Cow<'a, str>> = Vec::with_capacity(candidates.len());
        for c in candidates {
            let known = self
                .index
                .get(c.as_ref())
                .is_some_and(|offsets| !offsets[p].is_empty());
            if known && !forms.contains(&c) {
                forms.push(c);
            }
        }
        forms
    }

    /// Lemma names (marker such as "(a)" stripped, case kept) of the synset at `offset` in the
    /// data file of part of speech `p`.
    fn lemma_names(&self, p: usize, offset: u32) -> Result<Vec<&str>, MetricsError> {
        let file = DATA_FILES[p];
        let location = || format!("byte offset {offset} (listed in index.{})", FILE_SUFFIX[p]);
        let bytes = &self.data[p];
        let start = offset as usize;
        let bad = |m: &str| format_error(&self.dir, file, location(), m);
        if start >= bytes.len() {
            return Err(bad("offset past the end of the file"));
        }
        let end = bytes[start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(bytes.len(), |n| start + n);
        let line = std::str::from_utf8(&bytes[start..end]).map_err(|_| bad("not valid UTF-8"))?;
        // NLTK accepts the line only if it starts with the zero-padded 8-digit offset.
        if line.get(..8) != Some(format!("{offset:08}").as_str()) {
            return Err(bad("no synset line starts at this offset"));
        }
        let mut parts = line.trim().split('|');
        let (Some(columns), Some(_gloss), None) = (parts.next(), parts.next(), parts.next()) else {
            return Err(bad("expected exactly one '|' before the gloss"));
        };
        let mut tokens = py_split(columns);
        let mut next = |what: &str| tokens.next().ok_or_else(|| bad(&format!("missing {what}")));
        next("synset offset")?;
        next("lexicographer file number")?;
        next("part of speech")?;
        let n_lemmas = u32::from_str_radix(next("lemma count")?, 16)
            .map_err(|_| bad("lemma count is not hexadecimal"))?;
        let mut names = Vec::with_capacity(n_lemmas as usize);
        for _ in 0..n_lemmas {
            let name = next("lemma name")?;
            next("lex id")?;
            names.push(strip_syntactic_marker(name));
        }
        Ok(names)
    }

    /// The synonym set `nltk.translate.meteor_score` builds for `word`: the names without
    /// "_" of every lemma of every synset of `wordnet.synsets(word)` (all four parts of
    /// speech, morphy with exception lists). The word itself is not added here.
    pub fn synonyms(&self, word: &str) -> Result<HashSet<&str>, MetricsError> {
        let lemma = py_lower(word);
        let mut out = HashSet::new();
        for p in 0..POS_TAGS.len() {
            for form in self.morphy(&lemma, p) {
                let Some(offsets) = self.index.get(form.as_ref()) else {
                    continue;
                };
                for &offset in &offsets[p] {
                    for name in self.lemma_names(p, offset)? {
                        if !name.contains('_') {
                            out.insert(name);
                        }
                    }
                }
            }
        }
        Ok(out)
    }
}

/// NLTK: `re.match(r"(.*?)(\([^()]*\))?$", name)` keeps group 1 — a trailing "(...)" with no
/// parentheses inside is the adjective position marker.
fn strip_syntactic_marker(name: &str) -> &str {
    if let Some(body) = name.strip_suffix(')') {
        if let Some(open) = body.rfind('(') {
            if !body[open + 1..].contains(')') {
                return &name[..open];
            }
        }
    }
    name
}

/// One line of an index file, as `_load_lemma_pos_offset_map` reads it. Lines starting with a
/// space are the license header.
fn parse_index_line(line: &str, index: &mut HashMap<String, [Vec<u32>; 4]>) -> Result<(), String> {
    if line.starts_with(' ') {
        return Ok(());
    }
    let mut tokens = py_split(line);
    let mut next = |what: &str| tokens.next().ok_or_else(|| format!("missing {what}"));
    let number = |s: &str, what: &str| -> Result<usize, String> {
        s.parse::<usize>()
            .map_err(|_| format!("{what} {s:?} is not a number"))
    };
    let lemma = next("lemma")?;
    let pos = next("part of speech")?;
    let n_synsets = number(next("synset count")?, "synset count")?;
    if n_synsets == 0 {
        return Err("synset count is 0".into());
    }
    let n_pointers = number(next("pointer count")?, "pointer count")?;
    for _ in 0..n_pointers {
        next("pointer symbol")?;
    }
    let n_senses = number(next("sense count")?, "sense count")?;
    if n_senses != n_synsets {
        return Err(format!(
            "sense count {n_senses} differs from synset count {n_synsets}"
        ));
    }
    next("tagged sense count")?;
    let mut offsets = Vec::with_capacity(n_synsets);
    for _ in 0..n_synsets {
        let s = next("synset offset")?;
        offsets.push(
            s.parse::<u32>()
                .map_err(|_| format!("synset offset {s:?} is not a number"))?,
        );
    }
    // NLTK keys by the pos column; only n, v, a, r are ever looked up by `synsets`.
    if let Some(p) = POS_TAGS.iter().position(|&t| t == pos) {
        index.entry(lemma.to_owned()).or_default()[p] = offsets;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_stripping_follows_nltk_regex() {
        assert_eq!(strip_syntactic_marker("galore(ip)"), "galore");
        assert_eq!(strip_syntactic_marker("a(b)(c)"), "a(b)");
        assert_eq!(strip_syntactic_marker("a(b)c)"), "a(b)c)");
        assert_eq!(strip_syntactic_marker("plain"), "plain");
    }

    fn tiny_wordnet() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let header = "  1 This software and database is being provided\n";
        let noun_line = "00000042 05 n 02 dog 0 Canis_familiaris 0 000 | a dog\n";
        let data_noun = format!("{}{noun_line}", " ".repeat(42 - 1) + "\n");
        std::fs::write(dir.path().join("data.noun"), data_noun).unwrap();
        std::fs::write(
            dir.path().join("index.noun"),
            format!("{header}dog n 1 0 1 0 00000042\n"),
        )
        .unwrap();
        for f in [
            "data.verb",
            "data.adj",
            "data.adv",
            "index.verb",
            "index.adj",
            "index.adv",
        ] {
            std::fs::write(dir.path().join(f), header).unwrap();
        }
        std::fs::write(dir.path().join("noun.exc"), "dogses dog\n").unwrap();
        for f in ["verb.exc", "adj.exc", "adv.exc"] {
            std::fs::write(dir.path().join(f), "").unwrap();
        }
        dir
    }

    #[test]
    fn synonyms_from_a_tiny_dict_use_rules_and_exceptions() {
        let dir = tiny_wordnet();
        let wn = Wordnet::load(dir.path()).unwrap();
        let expect: HashSet<&str> = ["dog"].into();
        assert_eq!(wn.synonyms("Dogs").unwrap(), expect);
        assert_eq!(wn.synonyms("dogses").unwrap(), expect);
        assert!(wn.synonyms("cat").unwrap().is_empty());
    }

    #[test]
    fn missing_file_error_names_the_dir_and_file() {
        let dir = tiny_wordnet();
        std::fs::remove_file(dir.path().join("verb.exc")).unwrap();
        let err = Wordnet::load(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("verb.exc") && err.contains(&*dir.path().to_string_lossy()),
            "{err}"
        );
    }

    #[test]
    fn bad_offset_is_an_error_not_a_panic() {
        let dir = tiny_wordnet();
        std::fs::write(dir.path().join("index.noun"), "dog n 1 0 1 0 00000007\n").unwrap();
        let wn = Wordnet::load(dir.path()).unwrap();
        let err = wn.synonyms("dog").unwrap_err().to_string();
        assert!(
            err.contains("data.noun") && err.contains("byte offset 7"),
            "{err}"
        );
    }
}
