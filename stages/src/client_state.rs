//! Compact storage of a client's private parameters (PAPER_NOTES §2, DEPT(SPEC)): a private
//! matrix is stored as the rows that differ from the shared model's (`NAME.__rows`, u32 row
//! indices, and `NAME.__values`, those rows), since a client's embeddings only move on the
//! tokens its data contains — kilobytes instead of mBERT's 370 MB word-embedding table.
//! Anything else (vectors, tensors the shared model lacks, adapters) is stored whole.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

use crate::params::{ParamError, ParamStore};

const ROWS: &str = ".__rows";
const VALUES: &str = ".__values";

fn invalid(name: &str, msg: impl std::fmt::Display) -> ParamError {
    ParamError::Invalid(format!("client state `{name}`: {msg}"))
}

/// Encodes `state` against `shared` (the values every client without private state uses).
pub fn compact(
    state: &HashMap<String, Tensor>,
    shared: &ParamStore,
) -> Result<HashMap<String, Tensor>, ParamError> {
    let mut out = HashMap::new();
    for (name, t) in state {
        let base = shared.get(name).ok().filter(|b| b.dims() == t.dims());
        let (Some(base), 2) = (base, t.rank()) else {
            out.insert(name.clone(), t.clone());
            continue;
        };
        let (n, d) = t.dims2()?;
        let a: Vec<f32> = t.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let b: Vec<f32> = base.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut rows = Vec::new();
        let mut values = Vec::new();
        for r in 0..n {
            let (x, y) = (&a[r * d..(r + 1) * d], &b[r * d..(r + 1) * d]);
            if x.iter().zip(y).any(|(p, q)| p.to_bits() != q.to_bits()) {
                rows.push(r as u32);
                values.extend_from_slice(x);
            }
        }
        let k = rows.len();
        out.insert(
            format!("{name}{ROWS}"),
            Tensor::from_vec(rows, k, &Device::Cpu)?,
        );
        out.insert(
            format!("{name}{VALUES}"),
            Tensor::from_vec(values, (k, d), &Device::Cpu)?,
        );
    }
    Ok(out)
}

/// Decodes what [`compact`] wrote: full tensors by name, rows scattered into `shared`'s values.
pub fn expand(
    stored: HashMap<String, Tensor>,
    shared: &ParamStore,
) -> Result<HashMap<String, Tensor>, ParamError> {
    let mut out = HashMap::new();
    let mut sparse: HashMap<String, (Option<Tensor>, Option<Tensor>)> = HashMap::new();
    for (name, t) in stored {
        if let Some(base) = name.strip_suffix(ROWS) {
            sparse.entry(base.to_string()).or_default().0 = Some(t);
        } else if let Some(base) = name.strip_suffix(VALUES) {
            sparse.entry(base.to_string()).or_default().1 = Some(t);
        } else {
            out.insert(name, t);
        }
    }
    for (name, pair) in sparse {
        let (Some(rows), Some(values)) = pair else {
            return Err(invalid(&name, "needs both `.__rows` and `.__values`"));
        };
        let base = shared
            .get(&name)
            .map_err(|_| invalid(&name, "not a parameter of the base model"))?;
        let (n, d) = base.dims2().map_err(|e| invalid(&name, e))?;
        let rows: Vec<u32> = rows.to_vec1().map_err(|e| invalid(&name, e))?;
        if values.dims() != [rows.len(), d] {
            return Err(invalid(
                &name,
                format!(
                    "{} rows but values of shape {:?}",
                    rows.len(),
                    values.dims()
                ),
            ));
        }
        let v: Vec<f32> = values.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        let mut full: Vec<f32> = base.to_dtype(DType::F32)?.flatten_all()?.to_vec1()?;
        for (i, &r) in rows.iter().enumerate() {
            let r = r as usize;
            if r >= n {
                return Err(invalid(&name, format!("row {r} out of range (< {n})")));
            }
            full[r * d..(r + 1) * d].copy_from_slice(&v[i * d..(i + 1) * d]);
        }
        let t = Tensor::from_vec(full, (n, d), base.device())?.to_dtype(base.dtype())?;
        out.insert(name, t);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_changed_rows_are_stored_and_expand_restores_exactly() {
        let dev = Device::Cpu;
        let mut shared = ParamStore::new(&dev);
        let base = Tensor::arange(0f32, 12.0, &dev)
            .unwrap()
            .reshape((4, 3))
            .unwrap();
        shared.insert("emb.weight", base.clone(), false).unwrap();
        let mut v: Vec<f32> = base.flatten_all().unwrap().to_vec1().unwrap();
        v[4] = 100.0; // row 1
        v[11] = -1.0; // row 3
        let changed = Tensor::from_vec(v, (4, 3), &dev).unwrap();
        let bias = Tensor::new(&[1f32, 2.0], &dev).unwrap();
        let state: HashMap<String, Tensor> = [
            ("emb.weight".to_string(), changed.clone()),
            ("x.bias".to_string(), bias),
        ]
        .into();
        let c = compact(&state, &shared).unwrap();
        assert_eq!(c["emb.weight.__rows"].to_vec1::<u32>().unwrap(), vec![1, 3]);
        assert_eq!(c["emb.weight.__values"].dims(), &[2, 3]);
        assert!(c.contains_key("x.bias"), "vectors are stored whole");
        let e = expand(c.clone(), &shared).unwrap();
        assert_eq!(
            e["emb.weight"]
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap(),
            changed.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        );
        let mut bad = c;
        bad.remove("emb.weight.__values");
        assert!(expand(bad, &shared)
            .unwrap_err()
            .to_string()
            .contains("emb.weight"));
    }
}
