//! One optimiser step as every local training loop calls it: forward of each micro-batch of an
//! accumulation group → task loss (each micro-batch's mean, divided by the number of
//! micro-batches, as transformers 4.44.2 scales it) + BayesTune priors or AdaLoRA orthogonality
//! → backward → gradients summed over the group → clipping over a chosen subset → optimiser step.
//! Works for both tasks through [`crate::task::Net`].

use candle_core::backprop::GradStore;
use candle_core::{Tensor, Var};

use super::carry::GradCarry;
use crate::nn::DropoutRng;
use crate::optim::{clip_grad_norm, Adam, OptimError};
use crate::params::ParamStore;
use crate::peft::layer::ForwardCtx;
use crate::peft::{adalora, bayestune, LinearShape, PeftError};
use crate::rng::derive_seed;
use crate::task::{scalar, Batch, Net};

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

/// One optimiser step over `group` (one micro-batch, or several accumulated: PAPER_NOTES §1,
/// Fed-Aya 4 × 4). Train mode (dropout) when `dropout_seed` is set, eval mode otherwise; micro-
/// batch `i > 0` draws its dropout from a seed derived from `(dropout_seed, i)`. `carry` sums
/// some vars' gradients across steps (after clipping, which never covers them). Returns the
/// stats and the summed (clipped) gradients, e.g. for AdaLoRA's rank allocator.
pub fn train_step(
    model: &Net,
    group: &[Batch],
    reg: Regulariser<'_>,
    opt: &mut Adam,
    clip: Option<Clip<'_>>,
    dropout_seed: Option<u64>,
    carry: Option<&mut GradCarry>,
) -> Result<(StepStats, GradStore)> {
    let k = group.len() as f64;
    let mut grads: Option<GradStore> = None;
    let (mut total, mut task_loss) = (0f32, 0f32);
    for (i, batch) in group.iter().enumerate() {
        let rng = dropout_seed.map(|s| {
            DropoutRng::new(if i == 0 {
                s
            } else {
                derive_seed(s, &["micro_batch".into(), (i as u64).into()])
            })
        });
        let ctx = match &rng {
            Some(r) => ForwardCtx::train(r),
            None => ForwardCtx::eval(),
        };
        // transformers 4.44.2 under accumulation: each micro-batch's mean loss divided by the
        // number of micro-batches (the mean of means, not the mean over the group's items).
        let (sum, _) = model.task_loss_sum(batch, &ctx)?;
        let task = (sum / (batch_items(batch)? as f64 * k))?;
        // The regulariser enters once per step: a k-th of it per micro-batch.
        let loss = match regulariser(reg)? {
            Some(r) if k == 1.0 => (&task + r)?,
            Some(r) => (&task + (r / k)?)?,
            None => task.clone(),
        };
        task_loss += scalar(&task)?;
        let value = scalar(&loss)?;
        if !value.is_finite() {
            return Err(TrainError::NonFinite(value));
        }
        total += value;
        let g = loss.backward()?;
        grads = Some(match grads.take() {
            None => g,
            Some(acc) => add_grads(acc, g, &opt.vars())?,
        });
    }
    let mut grads =
        grads.ok_or_else(|| TrainError::Candle(candle_core::Error::Msg("empty step".into())))?;
    let grad_norm = match clip {
        Some(c) => Some(clip_grad_norm(&mut grads, c.vars, c.max_norm)?),
        None => None,
    };
    if let Some(c) = carry {
        c.apply(&mut grads)?;
    }
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

/// Items (examples, or response tokens) a micro-batch's loss is the mean over.
fn batch_items(batch: &Batch) -> Result<usize> {
    let n = match batch {
        Batch::Classifier(c) => c.labels.dim(0)?,
        Batch::CausalLm(l) => {
            let labels = l.labels.to_vec2::<i64>()?;
            labels
                .iter()
                .map(|row| {
                    row.iter()
                        .skip(1)
                        .filter(|&&y| y != crate::tokenize::IGNORE_INDEX)
                        .count()
                })
                .sum()
        }
    };
    if n == 0 {
        return Err(TrainError::Candle(candle_core::Error::Msg(
            "no items to train on in this micro-batch".into(),
        )));
    }
    Ok(n)
}

/// `acc + g` for the gradients of `vars` (others are dropped: only parameters are stepped).
fn add_grads(mut acc: GradStore, g: GradStore, vars: &[&Var]) -> Result<GradStore> {
    for v in vars {
        let t = v.as_tensor();
        match (acc.get(t), g.get(t)) {
            (Some(a), Some(b)) => {
                let sum = (a + b)?;
                acc.insert(t, sum);
            }
            (None, Some(b)) => {
                acc.insert(t, b.clone());
            }
            _ => {}
        }
    }
    Ok(acc)
}

/// The regulariser's loss term, if any.
fn regulariser(reg: Regulariser<'_>) -> Result<Option<Tensor>> {
    Ok(match reg {
        Regulariser::None => None,
        Regulariser::BayesTune {
            store,
            modules,
            n_train,
        } => Some(bayestune::prior_penalty(store, modules, n_train)?),
        Regulariser::AdaLoraOrth {
            store,
            modules,
            weight,
        } => Some((adalora::orth_regulariser(store, modules)? * weight)?),
    })
}

/// (total loss, task loss) of one batch, without stepping (the task loss is the batch mean).
pub fn loss(
    model: &Net,
    batch: &Batch,
    reg: Regulariser<'_>,
    ctx: &ForwardCtx<'_>,
) -> Result<(Tensor, Tensor)> {
    let (sum, n) = model.task_loss_sum(batch, ctx)?;
    let task = (sum / n as f64)?;
    let total = match regulariser(reg)? {
        Some(r) => (&task + r)?,
        None => task.clone(),
    };
    Ok((total, task))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bert::{random_init, BertConfig};
    use crate::model::bert::{BertForSequenceClassification, BertInput};
    use crate::optim::{AdamConfig, ParamGroup};
    use crate::peft::bayestune::{add_bayestune, BayesTuneConfig};
    use crate::task::classifier::predict;
    use crate::task::ClassifierBatch;
    use candle_core::{DType, Device};

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
        let model =
            Net::Bert(BertForSequenceClassification::load(&store, &cfg, &bt.spec()).unwrap());
        let batch = Batch::Classifier(ClassifierBatch {
            input: BertInput {
                input_ids: Tensor::new(&[[2u32, 7, 9, 4], [3, 5, 0, 0]], &Device::Cpu).unwrap(),
                attention_mask: Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 0, 0]], &Device::Cpu)
                    .unwrap(),
                token_type_ids: Tensor::zeros((2, 4), DType::U32, &Device::Cpu).unwrap(),
            },
            labels: Tensor::new(&[1u32, 0], &Device::Cpu).unwrap(),
        });
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
            let (s, _) = train_step(
                &model,
                std::slice::from_ref(&batch),
                reg,
                &mut opt,
                None,
                Some(seed + step),
                None,
            )
            .unwrap();
            losses.push(s.loss);
        }
        let Net::Bert(bert) = &model else {
            unreachable!()
        };
        assert_eq!(
            predict(bert, crate::task::bert_input(&batch).unwrap())
                .unwrap()
                .len(),
            2
        );
        losses
    }

    #[test]
    fn seeded_train_steps_are_bit_identical() {
        let a = run(11);
        assert_eq!(a, run(11));
        assert_ne!(a, run(12), "different dropout seeds should change the loss");
    }

    /// Tiny LLaMA (causal_lm's test model) with rank-2 LoRA on every linear, B = 0.01 so every
    /// adapter tensor gets a gradient.
    fn tiny_llama_lora(dropout: f32) -> (crate::task::causal_lm::CausalLmModel, ParamStore, Net) {
        use crate::peft::lora::add_lora;
        use crate::peft::{AdapterKind, AdapterSpec};
        let m = crate::task::causal_lm::tests::tiny();
        let mut store = m.store.clone();
        store.set_trainable(|_| false).unwrap();
        let mods = crate::model::llama::llama_linear_modules(&m.config);
        add_lora(&mut store, &mods, |_| 2, 3, DType::F32).unwrap();
        for md in &mods {
            let b = crate::peft::b_name(&md.name);
            let t = (store.get(&b).unwrap().ones_like().unwrap() * 0.01).unwrap();
            store.insert(&b, t, true).unwrap();
        }
        let spec = AdapterSpec {
            kind: AdapterKind::Lora { alpha: 4.0 },
            dropout,
        };
        let net = Net::Llama(m.net(&store, &spec).unwrap());
        (m, store, net)
    }

    /// max |t| as f32.
    /// Two rows of six tokens, the second right-padded by two.
    fn two_row_batch() -> ClassifierBatch {
        ClassifierBatch {
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
        }
    }

    fn max_abs(t: &Tensor) -> f32 {
        t.abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap()
            .to_scalar::<f32>()
            .unwrap()
    }

    /// Under accumulation each micro-batch contributes its own mean loss divided by the number
    /// of micro-batches (transformers 4.44.2: `loss / gradient_accumulation_steps` per
    /// micro-batch, `trainer.py` 3349–3351), so a group of one and three sequences steps with the
    /// average of the two micro-batches' gradients, not the gradient of one pooled batch.
    #[test]
    fn accumulated_micro_batches_average_their_means() {
        use crate::task::causal_lm::tests::ex;
        let examples: Vec<_> = (0..4).map(ex).collect();
        let grads_of = |groups: Vec<Vec<usize>>| {
            let (m, store, net) = tiny_llama_lora(0.0);
            let batches: Vec<Batch> = groups
                .iter()
                .map(|g| Batch::CausalLm(m.batch(&examples, g).unwrap()))
                .collect();
            let mut opt = Adam::new(
                AdamConfig::adamw(),
                vec![ParamGroup {
                    params: store.trainable(),
                    lr: 0.0,
                    weight_decay: 0.0,
                }],
            )
            .unwrap();
            let (_, g) = train_step(
                &net,
                &batches,
                Regulariser::None,
                &mut opt,
                None,
                None,
                None,
            )
            .unwrap();
            store
                .trainable()
                .into_iter()
                .map(|(n, v)| {
                    let t = g.get(v.as_tensor()).unwrap();
                    (n, t.flatten_all().unwrap().to_vec1::<f32>().unwrap())
                })
                .collect::<Vec<_>>()
        };
        let first = grads_of(vec![vec![0]]);
        let rest = grads_of(vec![vec![1, 2, 3]]);
        let pooled = grads_of(vec![vec![0, 1, 2, 3]]);
        let group = grads_of(vec![vec![0], vec![1, 2, 3]]);
        let (mut worst, mut pooled_gap) = (0f32, 0f32);
        for (((n, g), (_, a)), ((_, b), (_, p))) in
            group.iter().zip(&first).zip(rest.iter().zip(&pooled))
        {
            let scale = g.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            for (((x, y), z), q) in g.iter().zip(a).zip(b).zip(p) {
                worst = worst.max((x - 0.5 * (y + z)).abs() / scale);
                pooled_gap = pooled_gap.max((x - q).abs() / scale);
            }
            assert!(!g.is_empty(), "{n}");
        }
        assert!(
            worst <= 1e-5,
            "group vs mean of micro-batch gradients: {worst:e}"
        );
        assert!(
            pooled_gap > 1e-3,
            "1 + 3 sequences must not step like one pooled batch ({pooled_gap:e})"
        );
    }

    /// A bf16 base (embeddings, linears, layer norms in bf16; adapters f32, loss f32) against the
    /// same model in f32, eval mode, B given seeded non-zero values so every adapter gradient is
    /// live. Error = max |bf16 − f32| / max |f32| per tensor. Logits and loss: ≤ 3e-2 (bf16 keeps
    /// 8 significant bits, 2^-8 ≈ 4e-3 per rounding, compounded over two post-LN blocks;
    /// measured 1.3e-2). Gradients: cosine ≥ 0.98 and error ≤ 0.3 — the gradients of A in query
    /// and key are sums of cancelling terms that bf16 inputs perturb most (measured: cosine ≥
    /// 0.9925, error ≤ 0.23 for layer 0's key; every other tensor ≤ 5e-2).
    #[test]
    fn bf16_forward_and_backward_agree_with_f32() {
        use crate::nn::normal_tensor;
        use crate::peft::b_name;
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
        let batch = two_row_batch();
        let run = |store: &ParamStore| {
            let model = BertForSequenceClassification::load(store, &cfg, &bt.spec()).unwrap();
            let logits = model.forward(&batch.input, &ForwardCtx::eval()).unwrap();
            let reg = Regulariser::BayesTune {
                store,
                modules: &mods,
                n_train: 10,
            };
            let net = Net::Bert(model);
            let (total, _) = loss(
                &net,
                &Batch::Classifier(batch.clone()),
                reg,
                &ForwardCtx::eval(),
            )
            .unwrap();
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
        let mut worst = 0f32;
        for ((name, want), (_, got)) in run(&s32).into_iter().zip(run(&s16)) {
            let e = max_abs(&(&got - &want).unwrap()) / max_abs(&want).max(1e-12);
            let dot = |a: &Tensor, b: &Tensor| -> f32 {
                (a * b)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            };
            let cos = dot(&got, &want) / (dot(&got, &got) * dot(&want, &want)).sqrt().max(1e-30);
            if name == "logits" || name == "loss" {
                assert!(e <= 3e-2, "{name}: bf16 vs f32 relative error {e:.3e}");
            } else {
                assert!(
                    cos >= 0.98 && e <= 0.3,
                    "{name}: bf16 vs f32 cosine {cos}, relative error {e:.3e}"
                );
            }
            worst = worst.max(e);
        }
        eprintln!("bf16 vs f32: worst relative error {worst:.3e}");
    }

    /// The fused CPU kernels against the composite graph (`composite_scope`) on whole models:
    /// tiny LLaMA with LoRA and tiny BERT with BayesTune adapters in train mode (dropout on,
    /// same masks): loss within 1e-5 relative, every adapter gradient within 1e-4 of its
    /// tensor's max |value| (f32 rounding only; measured ≤ 2e-7 for LLaMA, ≤ 3.5e-5 for BERT,
    /// whose λ = 0.5, B ~ N(0, 0.5) make activations large).
    #[test]
    fn fused_kernels_match_the_composite_graph_on_whole_models() {
        use crate::nn::fused::composite_scope;
        use crate::task::causal_lm::tests::ex;
        let compare = |what: &str, store: &ParamStore, net: &Net, batch: &Batch| {
            let run = || {
                let rng = DropoutRng::new(21);
                let (total, _) =
                    loss(net, batch, Regulariser::None, &ForwardCtx::train(&rng)).unwrap();
                let g = total.backward().unwrap();
                let grads: Vec<(String, Tensor)> = store
                    .trainable()
                    .into_iter()
                    .map(|(n, v)| (n, g.get(v.as_tensor()).unwrap().clone()))
                    .collect();
                (scalar(&total).unwrap(), grads)
            };
            let (l_f, g_f) = run();
            let (l_c, g_c) = composite_scope(run);
            assert!(
                (l_f - l_c).abs() <= 1e-5 * l_c.abs(),
                "{what}: loss {l_f} vs {l_c}"
            );
            for ((name, a), (_, b)) in g_f.iter().zip(&g_c) {
                let (scale, d) = (max_abs(b), max_abs(&(a - b).unwrap()));
                assert!(
                    d <= 1e-4 * scale.max(1e-12),
                    "{what} {name}: |Δ| {d:e} at scale {scale:e}"
                );
            }
        };

        let (m, store, net) = tiny_llama_lora(0.1);
        let examples: Vec<_> = (0..4).map(ex).collect();
        let batch = Batch::CausalLm(m.batch(&examples, &[0, 1, 2, 3]).unwrap());
        compare("llama", &store, &net, &batch);

        let cfg = BertConfig::tiny(30);
        let mut store = random_init(&cfg, 2, 5, &Device::Cpu, DType::F32).unwrap();
        let bmods = cfg.linear_modules(2);
        let bt = BayesTuneConfig {
            r_max: 4,
            dropout: 0.1,
            lambda_init: 0.5,
            ..BayesTuneConfig::default()
        };
        add_bayestune(&mut store, &bmods, &bt, 3, DType::F32).unwrap();
        for (i, md) in bmods.iter().enumerate() {
            let b = crate::nn::normal_tensor(
                60 + i as u64,
                (md.out_dim, 4),
                0.5,
                &Device::Cpu,
                DType::F32,
            )
            .unwrap();
            store
                .insert(&crate::peft::b_name(&md.name), b, true)
                .unwrap();
        }
        let net = Net::Bert(BertForSequenceClassification::load(&store, &cfg, &bt.spec()).unwrap());
        let batch = Batch::Classifier(two_row_batch());
        compare("bert", &store, &net, &batch);
    }
}
