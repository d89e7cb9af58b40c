//! A linear layer with an optional low-rank adapter (LoRA, BayesTune-LoRA or AdaLoRA) that can
//! be merged into and unmerged from its base weight.

use candle_core::{Result as CResult, Tensor};

use super::{a_name, b_name, e_name, lambda_name};
use crate::nn::{fused, linear_forward, Dropout, DropoutRng};
use crate::params::{ParamStore, Result as PResult};

/// Name and size of a base linear layer (weight is out × in, as `torch.nn.Linear`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinearShape {
    pub name: String,
    pub in_dim: usize,
    pub out_dim: usize,
}

/// How adapter tensors found in the store are used.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum AdapterKind {
    /// Adapters ignored: base weights only (also "LoRA off" for PSG meta-data, §5).
    None,
    /// PEFT LoRA: `W0x + (α/r)·B·A·x`, r = this module's rank (PEFT rank_pattern semantics).
    Lora { alpha: f64 },
    /// BayesTune-LoRA (§3): `W0x + s·B(λ ⊙ A x)` with raw λ and a fixed `s = α/r_max` that is not
    /// recomputed after pruning.
    BayesTune { scaling: f64 },
    /// PEFT AdaLoRA SVD form: `W0x + α/(ranknum+1e-5) · B((A ⊙ E) x)` with ranknum = the
    /// module's initial rank (rows of A; masking zeroes E but keeps the shapes).
    AdaLora { alpha: f64 },
}

/// Adapter interpretation plus the adapter-input dropout probability (`lora_dropout`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdapterSpec {
    pub kind: AdapterKind,
    pub dropout: f32,
}

impl AdapterSpec {
    pub const NONE: AdapterSpec = AdapterSpec {
        kind: AdapterKind::None,
        dropout: 0.0,
    };
}

#[derive(Debug, Clone)]
enum Form {
    Lora,
    BayesTune { lambda: Tensor },
    AdaLora { e: Tensor },
}

#[derive(Debug, Clone)]
struct Adapter {
    a: Tensor,
    b: Tensor,
    form: Form,
    /// Final multiplier of the adapter branch (AdaLoRA: α/(ranknum+1e-5) folded in).
    scaling: f64,
}

impl Adapter {
    /// ΔW (out × in) such that the adapter branch equals `x · ΔWᵀ` (dropout aside).
    fn delta_weight(&self) -> CResult<Tensor> {
        let d = match &self.form {
            Form::Lora => self.b.matmul(&self.a)?,
            Form::BayesTune { lambda } => self.b.broadcast_mul(lambda)?.matmul(&self.a)?,
            Form::AdaLora { e } => self.b.matmul(&self.a.broadcast_mul(e)?)?,
        };
        d * self.scaling
    }
}

/// Observer of every adapted linear's input (name, x) during a forward pass; used to compute
/// the PSG client meta-data (PAPER_NOTES §5).
pub type InputObserver<'a> = &'a dyn Fn(&str, &Tensor) -> CResult<()>;

/// Per-forward context: dropout stream (None = eval mode) and an optional input observer.
#[derive(Clone, Copy, Default)]
pub struct ForwardCtx<'a> {
    pub dropout: Option<&'a DropoutRng>,
    pub observe_input: Option<InputObserver<'a>>,
}

impl<'a> ForwardCtx<'a> {
    pub fn eval() -> Self {
        Self::default()
    }

    pub fn train(rng: &'a DropoutRng) -> Self {
        Self {
            dropout: Some(rng),
            observe_input: None,
        }
    }
}

/// A base linear plus an optional adapter.
#[derive(Debug, Clone)]
pub struct AdaptedLinear {
    name: String,
    weight: Tensor,
    bias: Option<Tensor>,
    adapter: Option<Adapter>,
    dropout: Dropout,
    merged: bool,
}

impl AdaptedLinear {
    /// Loads `{name}.weight` (out × in), `{name}.bias` if `bias`, and the adapter tensors present
    /// in the store for this module (interpreted by `spec`).
    pub fn load(
        store: &ParamStore,
        shape: &LinearShape,
        bias: bool,
        spec: &AdapterSpec,
    ) -> PResult<Self> {
        let name = &shape.name;
        let weight = store.get_shaped(&format!("{name}.weight"), &[shape.out_dim, shape.in_dim])?;
        let bias = if bias {
            Some(store.get_shaped(&format!("{name}.bias"), &[shape.out_dim])?)
        } else {
            None
        };
        let adapter = if spec.kind == AdapterKind::None || !store.contains(&a_name(name)) {
            None
        } else {
            let a = store.get(&a_name(name))?;
            let r = a.dim(0)?;
            let a = store.get_shaped(&a_name(name), &[r, shape.in_dim])?;
            let b = store.get_shaped(&b_name(name), &[shape.out_dim, r])?;
            let (form, scaling) = match spec.kind {
                AdapterKind::Lora { alpha } => (Form::Lora, alpha / r as f64),
                AdapterKind::BayesTune { scaling } => (
                    Form::BayesTune {
                        lambda: store.get_shaped(&lambda_name(name), &[r])?,
                    },
                    scaling,
                ),
                AdapterKind::AdaLora { alpha } => (
                    Form::AdaLora {
                        e: store.get_shaped(&e_name(name), &[r, 1])?,
                    },
                    alpha / (r as f64 + 1e-5),
                ),
                AdapterKind::None => unreachable!("handled above"),
            };
            (r > 0).then_some(Adapter {
                a,
                b,
                form,
                scaling,
            })
        };
        Ok(Self {
            name: name.clone(),
            weight,
            bias,
            adapter,
            dropout: Dropout::new(spec.dropout),
            merged: false,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    pub fn has_adapter(&self) -> bool {
        self.adapter.is_some()
    }

    pub fn rank(&self) -> usize {
        self.adapter
            .as_ref()
            .map_or(0, |a| a.a.dims().first().copied().unwrap_or(0))
    }

    pub fn is_merged(&self) -> bool {
        self.merged
    }

    pub fn forward(&self, xs: &Tensor, ctx: &ForwardCtx<'_>) -> CResult<Tensor> {
        if let Some(obs) = ctx.observe_input {
            obs(&self.name, xs)?;
        }
        let fused = fused::linear::applies(xs, &self.weight, self.bias.as_ref());
        let Some(ad) = self.adapter.as_ref().filter(|_| !self.merged) else {
            return if fused {
                fused::linear::frozen_linear(xs, &self.weight, self.bias.as_ref())
            } else {
                linear_forward(xs, &self.weight, self.bias.as_ref())
            };
        };
        // The adapter branch runs in the adapters' dtype (f32 adapters on a bf16 base, as PEFT's
        // autocast_adapter_dtype), its result rounded to the base output's dtype.
        if fused && fused::supported(&ad.a) {
            let gain = match &ad.form {
                Form::Lora => Tensor::ones(ad.a.dim(0)?, ad.a.dtype(), ad.a.device())?,
                Form::BayesTune { lambda } => lambda.clone(),
                // x·(A ⊙ E)ᵀ = (x·Aᵀ) ⊙ Eᵀ: E scales each rank.
                Form::AdaLora { e } => e.flatten_all()?,
            };
            return fused::linear::adapted_linear(
                xs,
                &self.weight,
                self.bias.as_ref(),
                &ad.a,
                &gain,
                &ad.b,
                ad.scaling,
                self.dropout.mask(ctx.dropout),
            );
        }
        let x = self
            .dropout
            .forward(&xs.to_dtype(ad.a.dtype())?, ctx.dropout)?;
        let down = match &ad.form {
            Form::Lora => linear_forward(&x, &ad.a, None)?,
            // λ multiplies A x per rank, raw (unclamped) — PAPER_NOTES §3 [code].
            Form::BayesTune { lambda } => linear_forward(&x, &ad.a, None)?.broadcast_mul(lambda)?,
            Form::AdaLora { e } => linear_forward(&x, &ad.a.broadcast_mul(e)?, None)?,
        };
        let y = linear_forward(xs, &self.weight, self.bias.as_ref())?;
        let up = (linear_forward(&down, &ad.b, None)? * ad.scaling)?.to_dtype(y.dtype())?;
        y + up
    }

    /// The adapter's ΔW (out × in); None without adapter.
    pub fn delta_weight(&self) -> CResult<Option<Tensor>> {
        self.adapter.as_ref().map(Adapter::delta_weight).transpose()
    }

    /// W ← W + ΔW; the adapter branch is then skipped. No-op if already merged or no adapter.
    pub fn merge(&mut self) -> CResult<()> {
        if self.merged {
            return Ok(());
        }
        if let Some(d) = self.delta_weight()? {
            self.weight = (&self.weight + d.to_dtype(self.weight.dtype())?)?.detach();
            self.merged = true;
        }
        Ok(())
    }

    /// W ← W − ΔW (inverse of [`merge`](Self::merge), up to float rounding).
    pub fn unmerge(&mut self) -> CResult<()> {
        if !self.merged {
            return Ok(());
        }
        if let Some(d) = self.delta_weight()? {
            self.weight = (&self.weight - d.to_dtype(self.weight.dtype())?)?.detach();
        }
        self.merged = false;
        Ok(())
    }
}
