//! The one constructor every LLaMA linear layer goes through, so adapters (LoRA and variants,
//! branch `core`) can be attached by HF module name (`model.layers.0.self_attn.q_proj`) without
//! touching the model code.

use candle_core::{Result, Tensor};
use candle_nn::{Linear, Module, VarBuilder};

/// An adapter on a linear layer: receives the layer input and the frozen base output and
/// returns the adapted output (e.g. LoRA: `base + s·B·A·dropout(x)`).
pub trait LinearAdapter: Send + Sync {
    fn forward(&self, x: &Tensor, base_out: Tensor, train: bool) -> Result<Tensor>;
}

/// A linear layer with its HF module name and an optional adapter.
pub struct NamedLinear {
    name: String,
    base: Linear,
    adapter: Option<Box<dyn LinearAdapter>>,
}

impl NamedLinear {
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The frozen base layer (`weight` is `(out, in)` as in PyTorch).
    pub fn base(&self) -> &Linear {
        &self.base
    }

    /// Replaces the base layer (e.g. after merging an adapter into the weights).
    pub fn set_base(&mut self, base: Linear) {
        self.base = base;
    }

    pub fn set_adapter(&mut self, adapter: Option<Box<dyn LinearAdapter>>) {
        self.adapter = adapter;
    }

    pub fn adapter(&self) -> Option<&dyn LinearAdapter> {
        self.adapter.as_deref()
    }

    pub fn forward(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        let out = self.base.forward(x)?;
        match &self.adapter {
            Some(a) => a.forward(x, out, train),
            None => Ok(out),
        }
    }
}

/// Builds the linear layer `name` (weights `name.weight`, `name.bias` under `vb`'s root).
pub fn named_linear(
    vb: &VarBuilder,
    name: &str,
    in_dim: usize,
    out_dim: usize,
    bias: bool,
) -> Result<NamedLinear> {
    let vb = vb.pp(name);
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = if bias {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    Ok(NamedLinear {
        name: name.to_string(),
        base: Linear::new(weight, bias),
        adapter: None,
    })
}
