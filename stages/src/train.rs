//! One training step and evaluation for sequence classification, as the FL engine calls them
//! per batch: forward → cross-entropy (+ BayesTune priors or AdaLoRA orthogonality) → backward
//! → gradient clipping over a chosen subset → optimiser step.

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

use crate::model::bert::{cross_entropy, predictions, BertForSequenceClassification, BertInput};
use crate::nn::DropoutRng;
use crate::optim::{clip_grad_norm, Adam, OptimError};
use crate::params::ParamStore;
use crate::peft::layer::ForwardCtx;
use crate::peft::{adalora, bayestune, LinearShape, PeftError};

/// Errors of a training step.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Peft(#[from] PeftError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("loss is not finite ({0})")]
    NonFinite(f32),
}

pub type Result<T> = std::result::Result<T, TrainError>;

/// A tokenised classification batch; `labels` are u32 class ids (B).
#[derive(Debug, Clone)]
pub struct ClassifierBatch {
    pub input: BertInput,
    pub labels: Tensor,
}

/// Extra loss terms added to the batch-mean cross-entropy.
#[derive(Clone, Copy)]
pub enum Regulariser<'a> {
    None,
    /// `+ (100·L_B + 0.01·L_λ)/N` (PAPER_NOTES §3), N = client train-set size.
    BayesTune {
        store: &'a ParamStore,
        modules: &'a [LinearShape],
        n_train: usize,
    },
    /// `+ w · orth_reg` (PEFT AdaLoRA).
    AdaLoraOrth {
        store: &'a ParamStore,
        modules: &'a [LinearShape],
        weight: f64,
    },
}

/// Gradient clipping of a subset of parameters (`clip_grad_norm_` over those only).
pub struct Clip<'a> {
    pub vars: &'a [&'a Var],
    pub max_norm: f64,
}

/// Scalars of one step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepStats {
    /// Total loss that was differentiated.
    pub loss: f32,
    /// Cross-entropy part.
    pub task_loss: f32,
    /// Gradient norm before clipping (when clipping).
    pub grad_norm: Option<f64>,
}

/// Forward (train mode when `dropout_seed` is set, eval mode otherwise) → loss → backward →
/// clip → `opt.step`. Returns the stats and the (clipped) gradients, e.g. for AdaLoRA's
/// rank allocator.
pub fn train_step(
    model: &BertForSequenceClassification,
    batch: &ClassifierBatch,
    reg: Regulariser<'_>,
    opt: &mut Adam,
    clip: Option<Clip<'_>>,
    dropout_seed: Option<u64>,
) -> Result<(StepStats, GradStore)> {
    let rng = dropout_seed.map(DropoutRng::new);
    let ctx = match &rng {
        Some(r) => ForwardCtx::train(r),
        None => ForwardCtx::eval(),
    };
    let (loss, ce) = loss(model, batch, reg, &ctx)?;
    let task_loss = scalar(&ce)?;
    let total = scalar(&loss)?;
    if !total.is_finite() {
        return Err(TrainError::NonFinite(total));
    }
    let mut grads = loss.backward()?;
    let grad_norm = match clip {
        Some(c) => Some(clip_grad_norm(&mut grads, c.vars, c.max_norm)?),
        None => None,
    };
    opt.step(&grads)?;
    Ok((
        StepStats {
            loss: total,
            task_loss,
            grad_norm,
        },
        grads,
    ))
}

/// (total loss, cross-entropy) of a batch, without stepping.
pub fn loss(
    model: &BertForSequenceClassification,
    batch: &ClassifierBatch,
    reg: Regulariser<'_>,
    ctx: &ForwardCtx<'_>,
) -> Result<(Tensor, Tensor)> {
    let logits = model.forward(&batch.input, ctx)?;
    let ce = cross_entropy(&logits, &batch.labels)?;
    let total = match reg {
        Regulariser::None => ce.clone(),
        Regulariser::BayesTune {
            store,
            modules,
            n_train,
        } => (&ce + bayestune::prior_penalty(store, modules, n_train)?)?,
        Regulariser::AdaLoraOrth {
            store,
            modules,
            weight,
        } => (&ce + (adalora::orth_regulariser(store, modules)? * weight)?)?,
    };
    Ok((total, ce))
}

/// Eval-mode predictions (arg-max class per example).
pub fn predict(model: &BertForSequenceClassification, input: &BertInput) -> Result<Vec<u32>> {
    Ok(predictions(&model.forward(input, &ForwardCtx::eval())?)?)
}

fn scalar(t: &Tensor) -> Result<f32> {
    Ok(t.to_dtype(DType::F32)?.to_scalar::<f32>()?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bert::{random_init, BertConfig};
    use crate::optim::{AdamConfig, ParamGroup};
    use crate::peft::bayestune::{add_bayestune, BayesTuneConfig};
    use candle_core::Device;

    fn run(seed: u64) -> Vec<f32> {
        let cfg = BertConfig::tiny(30);
        let mut store = random_init(&cfg, 2, 5, &Device::Cpu, DType::F32).unwrap();
        let mods = cfg.linear_modules(2);
        let bt = BayesTuneConfig {
            r_max: 4,
            dropout: 0.1,
            ..BayesTuneConfig::default()
        };
        add_bayestune(&mut store, &mods, &bt, 3, DType::F32).unwrap();
        let model = BertForSequenceClassification::load(&store, &cfg, &bt.spec()).unwrap();
        let batch = ClassifierBatch {
            input: BertInput {
                input_ids: Tensor::new(&[[2u32, 7, 9, 4], [3, 5, 0, 0]], &Device::Cpu).unwrap(),
                attention_mask: Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 0, 0]], &Device::Cpu)
                    .unwrap(),
                token_type_ids: Tensor::zeros((2, 4), DType::U32, &Device::Cpu).unwrap(),
            },
            labels: Tensor::new(&[1u32, 0], &Device::Cpu).unwrap(),
        };
        let mut opt = Adam::new(
            AdamConfig::adamw(),
            vec![ParamGroup {
                params: store.trainable(),
                lr: 1e-2,
                weight_decay: 0.0,
            }],
        )
        .unwrap();
        let reg = Regulariser::BayesTune {
            store: &store,
            modules: &mods,
            n_train: 10,
        };
        let mut losses = Vec::new();
        for step in 0..3 {
            let (s, _) =
                train_step(&model, &batch, reg, &mut opt, None, Some(seed + step)).unwrap();
            losses.push(s.loss);
        }
        assert_eq!(predict(&model, &batch.input).unwrap().len(), 2);
        losses
    }

    #[test]
    fn seeded_train_steps_are_bit_identical() {
        let a = run(11);
        assert_eq!(a, run(11));
        assert_ne!(a, run(12), "different dropout seeds should change the loss");
    }

    /// A bf16 base (embeddings, linears, layer norms in bf16; adapters f32, loss f32) against the
    /// same model in f32, eval mode, B given seeded non-zero values so every adapter gradient is
    /// live. Error = max |bf16 − f32| / max |f32| per tensor; tolerance 3e-2 (bf16 keeps 8
    /// significant bits, 2^-8 ≈ 4e-3 per rounding, compounded over two post-LN blocks; measured
    /// ≈ 1e-2 at most).
    #[test]
    fn bf16_forward_and_backward_agree_with_f32() {
        use crate::peft::{b_name, lora::normal_tensor};
        let cfg = BertConfig::tiny(30);
        let mods = cfg.linear_modules(2);
        let bt = BayesTuneConfig {
            r_max: 4,
            lambda_init: 0.5,
            ..BayesTuneConfig::default()
        };
        let build = |dtype: DType| {
            let mut store = random_init(&cfg, 2, 5, &Device::Cpu, dtype).unwrap();
            add_bayestune(&mut store, &mods, &bt, 3, DType::F32).unwrap();
            for (i, m) in mods.iter().enumerate() {
                let b = normal_tensor(40 + i as u64, (m.out_dim, 4), 0.5, &Device::Cpu, DType::F32)
                    .unwrap();
                store.insert(&b_name(&m.name), b, true).unwrap();
            }
            store
        };
        let batch = ClassifierBatch {
            input: BertInput {
                input_ids: Tensor::new(&[[2u32, 7, 9, 4, 11, 3], [3, 5, 8, 1, 0, 0]], &Device::Cpu)
                    .unwrap(),
                attention_mask: Tensor::new(
                    &[[1u32, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]],
                    &Device::Cpu,
                )
                .unwrap(),
                token_type_ids: Tensor::zeros((2, 6), DType::U32, &Device::Cpu).unwrap(),
            },
            labels: Tensor::new(&[1u32, 0], &Device::Cpu).unwrap(),
        };
        let run = |store: &ParamStore| {
            let model = BertForSequenceClassification::load(store, &cfg, &bt.spec()).unwrap();
            let logits = model.forward(&batch.input, &ForwardCtx::eval()).unwrap();
            let reg = Regulariser::BayesTune {
                store,
                modules: &mods,
                n_train: 10,
            };
            let (total, _) = loss(&model, &batch, reg, &ForwardCtx::eval()).unwrap();
            let grads = total.backward().unwrap();
            let mut out = vec![("logits".to_string(), logits.to_dtype(DType::F32).unwrap())];
            out.push(("loss".into(), total));
            for (name, var) in store.trainable() {
                out.push((
                    name,
                    grads
                        .get(var.as_tensor())
                        .unwrap()
                        .to_dtype(DType::F32)
                        .unwrap(),
                ));
            }
            out
        };
        let (s32, s16) = (build(DType::F32), build(DType::BF16));
        assert_eq!(
            s16.get("bert.encoder.layer.0.attention.self.query.weight")
                .unwrap()
                .dtype(),
            DType::BF16
        );
        let max_abs = |t: &Tensor| -> f32 {
            t.abs()
                .unwrap()
                .flatten_all()
                .unwrap()
                .max(0)
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
        };
        let mut worst = 0f32;
        for ((name, want), (_, got)) in run(&s32).into_iter().zip(run(&s16)) {
            let e = max_abs(&(&got - &want).unwrap()) / max_abs(&want).max(1e-12);
            assert!(e <= 3e-2, "{name}: bf16 vs f32 relative error {e:.3e}");
            worst = worst.max(e);
        }
        eprintln!("bf16 vs f32: worst relative error {worst:.3e}");
    }
}
