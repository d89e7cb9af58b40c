//! Models in candle: BERT sequence classifier and LLaMA causal LM, loaded from HF layout.

pub mod bert;
