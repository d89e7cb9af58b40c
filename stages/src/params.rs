//! Named parameter store: every tensor of a model under its Hugging Face name, each either
//! frozen (a plain `Tensor`, no gradient work) or trainable (a `candle_core::Var`).
//!
//! The split is chosen by a name predicate, which covers every FL method of PAPER_NOTES §2:
//! full fine-tuning (everything), adapters only (`*lora_*`), DEPT (everything but
//! `*_embeddings*`), FedDPA-T (global vs local adapters). Models are built from the store and
//! keep clones of the same storage, so an optimiser updating a `Var` updates the model in place.
//! Any named subset can be exported/imported as safetensors; FedAvg lives in [`crate::fl::aggregate`].

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};

/// Errors of the parameter store; each names the tensor or file concerned.
#[derive(Debug, thiserror::Error)]
pub enum ParamError {
    #[error("parameter `{0}` is not in the store")]
    Missing(String),
    #[error("parameter `{name}`: expected shape {expected:?}, found {found:?}")]
    Shape {
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("reading safetensors {path}: {source}")]
    Read {
        path: PathBuf,
        source: candle_core::Error,
    },
    #[error("writing safetensors {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("safetensors serialisation: {0}")]
    Serialize(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, ParamError>;

/// One named parameter: frozen constants never enter the autograd graph.
#[derive(Debug, Clone)]
pub enum Param {
    Frozen(Tensor),
    Trainable(Var),
}

impl Param {
    /// The tensor view (for a `Var`, sharing its storage and tracked by autograd).
    pub fn tensor(&self) -> &Tensor {
        match self {
            Param::Frozen(t) => t,
            Param::Trainable(v) => v.as_tensor(),
        }
    }

    pub fn is_trainable(&self) -> bool {
        matches!(self, Param::Trainable(_))
    }
}

/// Parameters by name, iterated in name order (deterministic).
#[derive(Debug, Clone)]
pub struct ParamStore {
    entries: BTreeMap<String, Param>,
    device: Device,
}

impl ParamStore {
    pub fn new(device: &Device) -> Self {
        Self {
            entries: BTreeMap::new(),
            device: device.clone(),
        }
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Builds a store from named tensors; names matching `trainable` become `Var`s.
    pub fn from_tensors(
        tensors: HashMap<String, Tensor>,
        device: &Device,
        dtype: DType,
        trainable: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        let mut store = Self::new(device);
        for (name, t) in tensors {
            let t = t.to_device(device)?.to_dtype(dtype)?;
            let is_trainable = trainable(&name);
            store.insert(&name, t, is_trainable)?;
        }
        Ok(store)
    }

    /// Loads a safetensors file (e.g. an HF `model.safetensors`).
    pub fn load_safetensors(
        path: &Path,
        device: &Device,
        dtype: DType,
        trainable: impl Fn(&str) -> bool,
    ) -> Result<Self> {
        let tensors = read_safetensors(path, device)?;
        Self::from_tensors(tensors, device, dtype, trainable)
    }

    /// Inserts (or replaces) a parameter. A trainable one gets its own storage, so later
    /// in-place optimiser updates never alias the caller's tensor.
    pub fn insert(&mut self, name: &str, t: Tensor, trainable: bool) -> Result<()> {
        let p = if trainable {
            Param::Trainable(Var::from_tensor(&t.detach())?)
        } else {
            Param::Frozen(t.detach())
        };
        self.entries.insert(name.to_string(), p);
        Ok(())
    }

    pub fn remove(&mut self, name: &str) -> Option<Param> {
        self.entries.remove(name)
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Whether `name` is a trainable parameter (false when absent).
    pub fn is_trainable(&self, name: &str) -> bool {
        self.entries.get(name).is_some_and(Param::is_trainable)
    }

    pub fn get(&self, name: &str) -> Result<Tensor> {
        self.entries
            .get(name)
            .map(|p| p.tensor().clone())
            .ok_or_else(|| ParamError::Missing(name.to_string()))
    }

    /// Like [`get`](Self::get) but checks the shape, naming the parameter on mismatch.
    pub fn get_shaped(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let t = self.get(name)?;
        if t.dims() != shape {
            return Err(ParamError::Shape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.dims().to_vec(),
            });
        }
        Ok(t)
    }

    pub fn param(&self, name: &str) -> Option<&Param> {
        self.entries.get(name)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.keys().map(String::as_str)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Param)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Trainable parameters in name order.
    pub fn trainable(&self) -> Vec<(String, Var)> {
        self.entries
            .iter()
            .filter_map(|(k, p)| match p {
                Param::Trainable(v) => Some((k.clone(), v.clone())),
                Param::Frozen(_) => None,
            })
            .collect()
    }

    /// Every floating-point parameter converted to `dtype`, trainable ones staying trainable
    /// (integer tensors are left alone).
    pub fn cast(&mut self, dtype: DType) -> Result<()> {
        let names: Vec<String> = self.entries.keys().cloned().collect();
        for name in names {
            let p = &self.entries[&name];
            let t = p.tensor();
            if t.dtype().is_float() && t.dtype() != dtype {
                let (t, trainable) = (t.to_dtype(dtype)?, p.is_trainable());
                self.insert(&name, t, trainable)?;
            }
        }
        Ok(())
    }

    /// Re-partitions frozen/trainable by a new predicate, keeping current values. Models built
    /// before this call keep the old tensors: rebuild them from the store afterwards.
    pub fn set_trainable(&mut self, trainable: impl Fn(&str) -> bool) -> Result<()> {
        let names: Vec<String> = self.entries.keys().cloned().collect();
        for name in names {
            let want = trainable(&name);
            let p = &self.entries[&name];
            if p.is_trainable() != want {
                let t = p.tensor().clone();
                self.insert(&name, t, want)?;
            }
        }
        Ok(())
    }

    /// Copies of the parameters whose names match `select` (detached, safe to keep).
    pub fn export(&self, select: impl Fn(&str) -> bool) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (k, p) in &self.entries {
            if select(k) {
                out.insert(k.clone(), p.tensor().detach().copy()?);
            }
        }
        Ok(out)
    }

    /// Overwrites existing parameters with the given values (shapes must match). Trainable ones
    /// are updated in place so models built from the store see the new values; frozen ones are
    /// replaced (rebuild models that hold them). Unknown names are an error.
    pub fn assign(&mut self, values: &HashMap<String, Tensor>) -> Result<()> {
        // Check everything first: no partial update on error.
        for (name, t) in values {
            let cur = self.get(name)?;
            if cur.dims() != t.dims() {
                return Err(ParamError::Shape {
                    name: name.clone(),
                    expected: cur.dims().to_vec(),
                    found: t.dims().to_vec(),
                });
            }
        }
        for (name, t) in values {
            let p = self.entries.get_mut(name).expect("checked above");
            let cur_dtype = p.tensor().dtype();
            let t = t.to_device(&self.device)?.to_dtype(cur_dtype)?;
            match p {
                Param::Trainable(v) => v.set(&t)?,
                Param::Frozen(f) => *f = t.detach(),
            }
        }
        Ok(())
    }

    /// Saves the selected parameters as one safetensors file.
    pub fn save_safetensors(&self, path: &Path, select: impl Fn(&str) -> bool) -> Result<()> {
        write_safetensors(&self.export(select)?, path)
    }
}

/// Reads every tensor of a safetensors file, naming the file on error.
pub fn read_safetensors(path: &Path, device: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, device).map_err(|source| ParamError::Read {
        path: path.to_path_buf(),
        source,
    })
}

/// Serialises named tensors to safetensors bytes (tensors are copied to the CPU).
pub fn safetensors_bytes(tensors: &HashMap<String, Tensor>) -> Result<Vec<u8>> {
    let mut views = BTreeMap::new();
    for (name, t) in tensors {
        views.insert(name.clone(), HostTensor::from_tensor(t)?);
    }
    safetensors::serialize(&views, None).map_err(|e| ParamError::Serialize(e.to_string()))
}

/// Parses safetensors bytes produced by [`safetensors_bytes`] (or any safetensors file).
pub fn tensors_from_bytes(bytes: &[u8], device: &Device) -> Result<HashMap<String, Tensor>> {
    Ok(candle_core::safetensors::load_buffer(bytes, device)?)
}

/// Writes named tensors to `path` atomically (temp file + rename): no partial file on error.
pub fn write_safetensors(tensors: &HashMap<String, Tensor>, path: &Path) -> Result<()> {
    let bytes = safetensors_bytes(tensors)?;
    let tmp = path.with_extension("safetensors.partial");
    let io = |source| ParamError::Write {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, &bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// A tensor's bytes on the host, in the layout safetensors expects (little-endian, row-major).
struct HostTensor {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl HostTensor {
    fn from_tensor(t: &Tensor) -> Result<Self> {
        let shape = t.dims().to_vec();
        let t = t.to_device(&Device::Cpu)?.flatten_all()?;
        fn le<T: Copy, const N: usize>(v: Vec<T>, f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            v.into_iter().flat_map(f).collect()
        }
        let (dtype, data) = match t.dtype() {
            DType::F32 => (
                safetensors::Dtype::F32,
                le(t.to_vec1::<f32>()?, f32::to_le_bytes),
            ),
            DType::F64 => (
                safetensors::Dtype::F64,
                le(t.to_vec1::<f64>()?, f64::to_le_bytes),
            ),
            DType::BF16 => (
                safetensors::Dtype::BF16,
                le(t.to_vec1::<half::bf16>()?, half::bf16::to_le_bytes),
            ),
            DType::F16 => (
                safetensors::Dtype::F16,
                le(t.to_vec1::<half::f16>()?, half::f16::to_le_bytes),
            ),
            DType::I64 => (
                safetensors::Dtype::I64,
                le(t.to_vec1::<i64>()?, i64::to_le_bytes),
            ),
            DType::U32 => (
                safetensors::Dtype::U32,
                le(t.to_vec1::<u32>()?, u32::to_le_bytes),
            ),
            DType::U8 => (safetensors::Dtype::U8, t.to_vec1::<u8>()?),
            other => {
                return Err(ParamError::Serialize(format!(
                    "dtype {other:?} is not supported"
                )))
            }
        };
        Ok(Self { dtype, shape, data })
    }
}

impl safetensors::View for &HostTensor {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::from_slice(v, v.len(), &Device::Cpu).unwrap()
    }

    #[test]
    fn predicate_splits_frozen_and_trainable() {
        let mut m = HashMap::new();
        m.insert("bert.embeddings.word_embeddings.weight".into(), t(&[1.0]));
        m.insert("bert.encoder.layer.0.output.dense.weight".into(), t(&[2.0]));
        let s =
            ParamStore::from_tensors(m, &Device::Cpu, DType::F32, |n| !n.contains("_embeddings"))
                .unwrap();
        let tr = s.trainable();
        assert_eq!(tr.len(), 1);
        assert_eq!(tr[0].0, "bert.encoder.layer.0.output.dense.weight");
    }

    #[test]
    fn bytes_round_trip_and_assign_updates_in_place() {
        let mut s = ParamStore::new(&Device::Cpu);
        s.insert("a", t(&[1.0, 2.0]), true).unwrap();
        s.insert("b", t(&[3.0]), false).unwrap();
        let held = s.get("a").unwrap();
        let bytes = safetensors_bytes(&s.export(|_| true).unwrap()).unwrap();
        let back = tensors_from_bytes(&bytes, &Device::Cpu).unwrap();
        assert_eq!(back["a"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
        let mut upd = HashMap::new();
        upd.insert("a".to_string(), t(&[5.0, 6.0]));
        s.assign(&upd).unwrap();
        // A model holding the old handle sees the new values (shared storage).
        assert_eq!(held.to_vec1::<f32>().unwrap(), vec![5.0, 6.0]);
        upd.insert("a".to_string(), t(&[1.0]));
        assert!(matches!(s.assign(&upd), Err(ParamError::Shape { .. })));
    }
}
