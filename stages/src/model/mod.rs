//! Models in candle: BERT sequence classifier and LLaMA causal LM, loaded from HF layout.

pub mod bert;
pub mod hf_layout;
pub mod llama;
pub mod llama_config;
pub mod llama_io;
