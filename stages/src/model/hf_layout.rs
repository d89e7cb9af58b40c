//! Reading and writing models in the HF layout: `config.json`, `model.safetensors` (or shards
//! listed in `model.safetensors.index.json`) and `tokenizer.json`.

use candle_core::{DType, Device, Tensor};
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Errors reading or writing a model directory; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum HfLayoutError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: invalid JSON: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: PathBuf, message: String },
    #[error("{path}: {source}")]
    Tensor {
        path: PathBuf,
        source: candle_core::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> HfLayoutError + '_ {
    move |source| HfLayoutError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Parses `dir/config.json` into `T`.
pub fn read_config<T: serde::de::DeserializeOwned>(dir: &Path) -> Result<T, HfLayoutError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(io(&path))?;
    serde_json::from_str(&text).map_err(|source| HfLayoutError::Json { path, source })
}

/// Safetensors files of a model: the shards named by `model.safetensors.index.json` if present,
/// else `model.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, HfLayoutError> {
    shard_files(dir, "model.safetensors", pytorch_hint(dir))
}

/// The files of a checkpoint saved as `single` or as shards listed in `{single}.index.json`
/// (its `weight_map`), as transformers writes both safetensors and `.bin` checkpoints. `note`
/// ends the message when neither is there.
pub fn shard_files(dir: &Path, single: &str, note: &str) -> Result<Vec<PathBuf>, HfLayoutError> {
    let index = dir.join(format!("{single}.index.json"));
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(io(&index))?;
        let v: serde_json::Value =
            serde_json::from_str(&text).map_err(|source| HfLayoutError::Json {
                path: index.clone(),
                source,
            })?;
        let invalid = |message: String| HfLayoutError::Invalid {
            path: index.clone(),
            message,
        };
        let map = v
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| invalid("missing object \"weight_map\"".into()))?;
        let mut files = BTreeSet::new();
        for (name, f) in map {
            let f = f
                .as_str()
                .ok_or_else(|| invalid(format!("weight_map[{name:?}] is not a file name")))?;
            files.insert(dir.join(f));
        }
        return Ok(files.into_iter().collect());
    }
    let path = dir.join(single);
    if !path.exists() {
        return Err(HfLayoutError::Invalid {
            path: dir.to_path_buf(),
            message: format!("no {single} or {single}.index.json{note}"),
        });
    }
    Ok(vec![path])
}

/// Checks a model directory without loading it: `config.json` is a JSON object, every
/// safetensors file is as long as its header says (a cut download or copy fails here, not at
/// load time, mid-run) and `tokenizer.json` exists.
pub fn check_dir(dir: &Path) -> Result<(), HfLayoutError> {
    let config: serde_json::Value = read_config(dir)?;
    if !config.is_object() {
        return Err(HfLayoutError::Invalid {
            path: dir.join("config.json"),
            message: "not a JSON object".into(),
        });
    }
    for file in weight_files(dir)? {
        check_safetensors_length(&file)?;
    }
    let tokenizer = dir.join("tokenizer.json");
    if !tokenizer.is_file() {
        return Err(HfLayoutError::Invalid {
            path: tokenizer,
            message: "missing (the HF layout needs the fast-tokenizer file)".into(),
        });
    }
    Ok(())
}

/// A safetensors file is an 8-byte little-endian header length, a JSON header giving each
/// tensor's `data_offsets` into the data section, then the data: its length is fixed by the header.
fn check_safetensors_length(path: &Path) -> Result<(), HfLayoutError> {
    use std::io::Read;
    let invalid = |message: String| HfLayoutError::Invalid {
        path: path.to_path_buf(),
        message,
    };
    let mut f = std::fs::File::open(path).map_err(io(path))?;
    let actual = f.metadata().map_err(io(path))?.len();
    let mut len = [0u8; 8];
    f.read_exact(&mut len)
        .map_err(|_| invalid(format!("truncated: {actual} bytes, not even a header")))?;
    let header_len = u64::from_le_bytes(len);
    if header_len > actual.saturating_sub(8) {
        return Err(invalid(format!(
            "truncated: the header alone needs {header_len} bytes, the file has {actual}"
        )));
    }
    let mut header = vec![0u8; header_len as usize];
    f.read_exact(&mut header).map_err(io(path))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&header)
        .map_err(|source| HfLayoutError::Json {
            path: path.to_path_buf(),
            source,
        })?;
    let data_end = header
        .iter()
        .filter(|(name, _)| *name != "__metadata__")
        .filter_map(|(_, t)| t.get("data_offsets")?.get(1)?.as_u64())
        .max()
        .unwrap_or(0);
    let expected = 8 + header_len + data_end;
    if actual != expected {
        return Err(invalid(format!(
            "{actual} bytes, but its header describes {expected} (truncated or damaged copy)"
        )));
    }
    Ok(())
}

/// A note for a directory that holds a PyTorch checkpoint instead of safetensors.
pub fn pytorch_hint(dir: &Path) -> &'static str {
    if dir.join("pytorch_model.bin").exists() || dir.join("pytorch_model.bin.index.json").exists() {
        " (it has a PyTorch checkpoint: convert it with `pipeline import-model --format pytorch`)"
    } else {
        ""
    }
}

/// Loads every tensor of the model's safetensors files, converted to `dtype`.
pub fn load_tensors(
    dir: &Path,
    dtype: DType,
    device: &Device,
) -> Result<HashMap<String, Tensor>, HfLayoutError> {
    let mut all = HashMap::new();
    for path in weight_files(dir)? {
        let ts = candle_core::safetensors::load(&path, device).map_err(|source| {
            HfLayoutError::Tensor {
                path: path.clone(),
                source,
            }
        })?;
        for (name, t) in ts {
            let t = t.to_dtype(dtype).map_err(|source| HfLayoutError::Tensor {
                path: path.clone(),
                source,
            })?;
            if all.insert(name.clone(), t).is_some() {
                return Err(HfLayoutError::Invalid {
                    path,
                    message: format!("tensor {name:?} appears in two shards"),
                });
            }
        }
    }
    Ok(all)
}

/// Writes `config.json`, `model.safetensors` and `tokenizer.json` into `dir`, all or nothing:
/// files go to a sibling staging directory that replaces `dir` at the end.
pub fn write_model_dir(
    dir: &Path,
    config: &serde_json::Value,
    tensors: &HashMap<String, Tensor>,
    tokenizer_json: &str,
) -> Result<(), HfLayoutError> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "model".into());
    let staging = dir.with_file_name(format!(".{name}.partial"));
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(&staging))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(&staging))?;
    let cfg_path = staging.join("config.json");
    let text = serde_json::to_string_pretty(config).map_err(|source| HfLayoutError::Json {
        path: cfg_path.clone(),
        source,
    })?;
    std::fs::write(&cfg_path, text + "\n").map_err(io(&cfg_path))?;
    let w_path = staging.join("model.safetensors");
    // The safetensors writer orders tensors by dtype and name: identical tensors give
    // byte-identical files.
    candle_core::safetensors::save(tensors, &w_path).map_err(|source| HfLayoutError::Tensor {
        path: w_path.clone(),
        source,
    })?;
    let t_path = staging.join("tokenizer.json");
    std::fs::write(&t_path, tokenizer_json).map_err(io(&t_path))?;
    if dir.exists() {
        std::fs::remove_dir_all(dir).map_err(io(dir))?;
    }
    std::fs::rename(&staging, dir).map_err(io(dir))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_dir_finds_truncated_weights_and_bad_config() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("m");
        let w = Tensor::zeros((4, 3), candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
        let tensors = HashMap::from([("w".to_string(), w)]);
        write_model_dir(
            &dir,
            &serde_json::json!({"model_type": "bert"}),
            &tensors,
            "{}",
        )
        .unwrap();
        check_dir(&dir).unwrap();

        let weights = dir.join("model.safetensors");
        let bytes = std::fs::read(&weights).unwrap();
        std::fs::write(&weights, &bytes[..bytes.len() - 4]).unwrap();
        let e = check_dir(&dir).unwrap_err().to_string();
        assert!(
            e.contains("model.safetensors") && e.contains("truncated"),
            "{e}"
        );
        std::fs::write(&weights, &bytes[..5]).unwrap();
        assert!(check_dir(&dir)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
        std::fs::write(&weights, &bytes).unwrap();

        std::fs::write(dir.join("config.json"), "{\"model_type\": ").unwrap();
        let e = check_dir(&dir).unwrap_err().to_string();
        assert!(e.contains("config.json: invalid JSON"), "{e}");
    }
}
