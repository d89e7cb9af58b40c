//! Parameter-efficient fine-tuning: LoRA, BayesTune-LoRA, AdaLoRA, rank selection.
