//! NLTK's `word_tokenize(text, preserve_line=True)`: the `NLTKWordTokenizer` (improved
//! Treebank) regex rules of nltk 3.10.4, applied in the same order, then `str.split()`.
//!
//! `preserve_line=True` skips the Punkt sentence splitter, whose model (`punkt_tab`) cannot be
//! obtained here; without it a period ends a token only at the end of the whole text
//! ("York. Please" stays "York." while NLTK's default call would split it after Punkt).
//!
//! Translation from Python `re` to `fancy_regex` (the rules need look-around):
//! - `\w`, `\s`, `\d` become explicit classes with Python's Unicode meaning (see `pytext`);
//! - `\b` next to a word character becomes the look-around it implies (`(?<!\w)` before,
//!   `(?!\w)` after), since the engine's `\b` uses a different `\w`;
//! - `$` (end, or before a final newline): after a greedy `\s*` it can only match at the very
//!   end, so `\s*$` becomes `\s*\z`; `([:,])$` becomes `([:,])(\n?)\z` with the newline
//!   put back by the replacement — no look-ahead, so these rules run on the fast engine;
//! - the possessive `*+` of nltk's first period rule becomes `*`: a shorter run of the class
//!   (which contains the space) can only match where the maximal run also does, so the
//!   matches and groups are the same (nltk's own comment on that rule says so).

use std::sync::OnceLock;

use fancy_regex::Regex;

use super::pytext::{py_split, PY_SPACE_CLASS, PY_WORD_CLASS};
use super::MetricsError;

/// One substitution: the pattern as written here (for error messages), its replacement, and
/// for look-around rules a look-around-free prefilter that every match of the rule contains.
/// Look-around forces fancy_regex onto its backtracking VM, ~20x slower than the `regex`
/// engine it uses for the rest; texts the prefilter rejects cannot change under the rule.
struct Rule {
    source: &'static str,
    regex: Regex,
    prefilter: Option<Regex>,
    replacement: &'static str,
}

/// (pattern, replacement, prefilter or ""). Patterns use placeholders `{W}` (Python `\w`
/// class) and `{S}` (Python `\s` class), expanded at compile time. Replacement syntax is
/// `${n}`.
type RuleSource = (&'static str, &'static str, &'static str);

const STARTING_QUOTES: &[RuleSource] = &[
    ("([«“‘„]|[`]+)", " ${1} ", ""),
    ("^\"", "``", ""),
    ("(``)", " ${1} ", ""),
    (r#"([ (\[{<])("|'{2})"#, "${1} `` ", ""),
    (
        r"(?i)(?<!{W})(')(?!(?:re|ve|ll|m|t|s|d|n)(?!{W}))(?={W})",
        "${1} ",
        "'",
    ),
];

const PUNCTUATION: &[RuleSource] = &[
    (r#"([^.])(\.)([\])}>"'»”’ ]*){S}*\z"#, "${1} ${2} ${3} ", ""),
    (r"([:,])([^\p{Nd}])", " ${1} ${2}", ""),
    (r"([:,])(\n?)\z", " ${1} ${2}", ""),
    (r"\.{2,}", " ${0} ", ""),
    (r"[;@#$%&]", " ${0} ", ""),
    (r"[\x{2012}-\x{2015}]", " ${0} ", ""),
    (r#"([^.])(\.)([\])}>"']*){S}*\z"#, "${1} ${2}${3} ", ""),
    (r"[?!]", " ${0} ", ""),
    (r"([^'])' ", "${1} ' ", ""),
    (r"[*]", " ${0} ", ""),
];

const PARENS_BRACKETS: RuleSource = (r"[\]\[(){}<>]", " ${0} ", "");

const DOUBLE_DASHES: RuleSource = ("--", " -- ", "");

const ENDING_QUOTES: &[RuleSource] = &[
    ("([»”’])", " ${1} ", ""),
    ("''", " '' ", ""),
    ("\"", " '' ", ""),
    ("{S}+", " ", ""),
    (r"([^' ])('[sS]|'[mM]|'[dD]|') ", "${1} ${2} ", ""),
    (
        r"([^' ])('ll|'LL|'re|'RE|'ve|'VE|n't|N'T) ",
        "${1} ${2} ",
        "",
    ),
];

/// MacIntyre contractions (CONTRACTIONS2 then CONTRACTIONS3; nltk leaves CONTRACTIONS4 out).
const CONTRACTIONS: &[RuleSource] = &[
    (
        r"(?i)(?<!{W})(can)(not)(?!{W})",
        " ${1} ${2} ",
        "(?i)cannot",
    ),
    (r"(?i)(?<!{W})(d)('ye)(?!{W})", " ${1} ${2} ", "(?i)d'ye"),
    (r"(?i)(?<!{W})(gim)(me)(?!{W})", " ${1} ${2} ", "(?i)gimme"),
    (r"(?i)(?<!{W})(gon)(na)(?!{W})", " ${1} ${2} ", "(?i)gonna"),
    (r"(?i)(?<!{W})(got)(ta)(?!{W})", " ${1} ${2} ", "(?i)gotta"),
    (r"(?i)(?<!{W})(lem)(me)(?!{W})", " ${1} ${2} ", "(?i)lemme"),
    (
        r"(?i)(?<!{W})(more)('n)(?!{W})",
        " ${1} ${2} ",
        "(?i)more'n",
    ),
    (r"(?i)(?<!{W})(wan)(na)(?={S})", " ${1} ${2} ", "(?i)wanna"),
    (r"(?i) ('t)(is)(?!{W})", " ${1} ${2} ", "(?i) 'tis"),
    (r"(?i) ('t)(was)(?!{W})", " ${1} ${2} ", "(?i) 'twas"),
];

/// The compiled rules in nltk's order, split where the text gets its padding spaces.
struct Rules {
    before_padding: Vec<Rule>,
    after_padding: Vec<Rule>,
}

fn compile(&(source, replacement, prefilter): &RuleSource) -> Rule {
    let expanded = source
        .replace("{W}", PY_WORD_CLASS)
        .replace("{S}", PY_SPACE_CLASS);
    // The patterns are constants of this file; the unit tests compile every one of them.
    let build = |p: &str| {
        Regex::new(p).unwrap_or_else(|e| panic!("tokenizer rule {p:?} does not compile: {e}"))
    };
    Rule {
        source,
        regex: build(&expanded),
        prefilter: (!prefilter.is_empty()).then(|| build(prefilter)),
        replacement,
    }
}

fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        let before_padding = STARTING_QUOTES
            .iter()
            .chain(PUNCTUATION)
            .chain([&PARENS_BRACKETS, &DOUBLE_DASHES])
            .map(compile)
            .collect();
        let after_padding = ENDING_QUOTES
            .iter()
            .chain(CONTRACTIONS)
            .map(compile)
            .collect();
        Rules {
            before_padding,
            after_padding,
        }
    })
}

fn apply(rule: &Rule, text: String) -> Result<String, MetricsError> {
    let error = |e: fancy_regex::Error| MetricsError::Tokenizer {
        pattern: rule.source,
        chars: text.chars().count(),
        message: e.to_string(),
    };
    if let Some(prefilter) = &rule.prefilter {
        if !prefilter.is_match(&text).map_err(error)? {
            return Ok(text);
        }
    }
    match rule.regex.try_replacen(&text, 0, rule.replacement) {
        Ok(std::borrow::Cow::Borrowed(_)) => Ok(text),
        Ok(std::borrow::Cow::Owned(replaced)) => Ok(replaced),
        Err(e) => Err(error(e)),
    }
}

/// `nltk.word_tokenize(text, preserve_line=True)`.
pub fn word_tokenize(text: &str) -> Result<Vec<String>, MetricsError> {
    let rules = rules();
    let mut text = text.to_owned();
    for rule in &rules.before_padding {
        text = apply(rule, text)?;
    }
    // nltk: "add extra space to make things easier"
    text = format!(" {text} ");
    for rule in &rules.after_padding {
        text = apply(rule, text)?;
    }
    Ok(py_split(&text).map(str::to_owned).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tok(s: &str) -> Vec<String> {
        word_tokenize(s).unwrap()
    }

    #[test]
    fn all_rules_compile() {
        let r = rules();
        assert_eq!(r.before_padding.len(), 17);
        assert_eq!(r.after_padding.len(), 16);
    }

    #[test]
    fn nltk_docstring_example() {
        // NLTKWordTokenizer docstring (nltk 3.10.4, destructive.py).
        let s = "Good muffins cost $3.88 (roughly 3,36 euros)\nin New York.  Please buy me\ntwo of them.\nThanks.";
        let expected = [
            "Good", "muffins", "cost", "$", "3.88", "(", "roughly", "3,36", "euros", ")", "in",
            "New", "York.", "Please", "buy", "me", "two", "of", "them.", "Thanks", ".",
        ];
        assert_eq!(tok(s), expected);
    }

    #[test]
    fn contractions_and_quotes() {
        // Python: word_tokenize("\"I can't,\" she said; 'tis gonna work.", preserve_line=True)
        assert_eq!(
            tok("\"I can't,\" she said; 'tis gonna work."),
            [
                "``", "I", "ca", "n't", ",", "''", "she", "said", ";", "'", "tis", "gon", "na",
                "work", "."
            ]
        );
    }

    #[test]
    fn empty_and_whitespace_only_give_no_tokens() {
        assert!(tok("").is_empty());
        assert!(tok(" \t\n").is_empty());
    }
}
