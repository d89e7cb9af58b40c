//! FedL2P against PyTorch golden files from `tests/fixtures/gen/gen_fedl2p.py` (torch 2.9.1,
//! transformers 4.57.6; CPU f32, eval mode): the LR network's forward, the reference's inner
//! loop (accumulation rule, clipping, bias-correction-free AdamW) and one implicit-function
//! hypergradient through the tiny BERT of `core/bert_tiny` with LoRA r 2, α 4 on all 14 linears.
//!
//! Error measure: max |rust − torch| / max |torch| per tensor (`common::scale_err`; gradients
//! are sums with heavy cancellation, so elements far below the tensor's scale carry f32
//! rounding of large terms).
//! A separate test binary, so the lazy start of the second-order workers cannot race with
//! other tests' first backprop.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor, Var};
use stages::fedl2p::hypergrad::{pair_hypergrad, Hypergrad, Pair};
use stages::fedl2p::inner::{inner_loop, InnerConfig};
use stages::fedl2p::lr_net::{LrNet, LrNetConfig};
use stages::fedl2p::meta::chain_through_rates;
use stages::fedl2p::{InnerModel, Split};
use stages::model::bert::{self, BertForSequenceClassification, BertInput};
use stages::params::{read_safetensors, ParamStore};
use stages::peft::layer::ForwardCtx;
use stages::peft::{a_name, b_name, AdapterKind, AdapterSpec};

mod common;
use common::{assert_scaled, host, scale_err};

fn fixture(dir: &str, name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(dir)
        .join(name)
}

fn load(name: &str) -> HashMap<String, Tensor> {
    read_safetensors(&fixture("fedl2p", name), &Device::Cpu).unwrap()
}

const LINEARS: usize = 14;

fn net_cfg() -> LrNetConfig {
    LrNetConfig {
        input_dim: 2 * LINEARS,
        hidden: 100,
        extra_hidden_layers: 1,
        outputs: 2 * LINEARS,
    }
}

fn lr_net_store() -> ParamStore {
    ParamStore::from_tensors(load("lr_net.safetensors"), &Device::Cpu, DType::F32, |_| {
        true
    })
    .unwrap()
}

/// The fixture's tiny BERT with LoRA (r 2, α 4) in eval mode; train/val examples are rows of
/// `core/inputs.safetensors` picked by the maps.
struct Fixture {
    net: BertForSequenceClassification,
    params: Vec<Var>,
    batch: BertInput,
    labels: Tensor,
    train: Vec<u32>,
    val: Vec<u32>,
}

impl Fixture {
    fn new(train: Vec<u32>, val: Vec<u32>) -> Self {
        let (cfg, mut store) = bert::load_pretrained(
            &fixture("core", "bert_tiny"),
            &Device::Cpu,
            DType::F32,
            |_| false,
        )
        .unwrap();
        let theta0 = load("inner.safetensors");
        let modules = cfg.linear_modules(cfg.num_labels());
        assert_eq!(modules.len(), LINEARS);
        for (i, m) in modules.iter().enumerate() {
            let a = theta0[&format!("theta0.{}", 2 * i)].clone();
            let b = theta0[&format!("theta0.{}", 2 * i + 1)].clone();
            store.insert(&a_name(&m.name), a, true).unwrap();
            store.insert(&b_name(&m.name), b, true).unwrap();
        }
        let spec = AdapterSpec {
            kind: AdapterKind::Lora { alpha: 4.0 },
            dropout: 0.0,
        };
        let net = BertForSequenceClassification::load(&store, &cfg, &spec).unwrap();
        let var = |n: &str| match store.param(n) {
            Some(stages::params::Param::Trainable(v)) => v.clone(),
            _ => panic!("{n} not trainable"),
        };
        let params = modules
            .iter()
            .flat_map(|m| [var(&a_name(&m.name)), var(&b_name(&m.name))])
            .collect();
        let f = read_safetensors(&fixture("core", "inputs.safetensors"), &Device::Cpu).unwrap();
        let u = |k: &str| f[k].to_dtype(DType::U32).unwrap();
        Self {
            net,
            params,
            batch: BertInput {
                input_ids: u("input_ids"),
                attention_mask: u("attention_mask"),
                token_type_ids: u("token_type_ids"),
            },
            labels: u("labels"),
            train,
            val,
        }
    }

    fn set(&self, prefix: &str, file: &HashMap<String, Tensor>) {
        for (j, p) in self.params.iter().enumerate() {
            p.set(&file[&format!("{prefix}.{j}")]).unwrap();
        }
    }
}

impl InnerModel for Fixture {
    fn params(&self) -> &[Var] {
        &self.params
    }

    fn len(&self, split: Split) -> usize {
        match split {
            Split::Train => self.train.len(),
            Split::Val => self.val.len(),
        }
    }

    fn loss(&self, split: Split, idx: &[usize], _seed: u64) -> stages::fedl2p::Result<Tensor> {
        let map = match split {
            Split::Train => &self.train,
            Split::Val => &self.val,
        };
        let rows = Tensor::new(
            idx.iter().map(|&i| map[i]).collect::<Vec<_>>(),
            &Device::Cpu,
        )?;
        let pick = |t: &Tensor| t.index_select(&rows, 0);
        let input = BertInput {
            input_ids: pick(&self.batch.input_ids)?,
            attention_mask: pick(&self.batch.attention_mask)?,
            token_type_ids: pick(&self.batch.token_type_ids)?,
        };
        let logits = self.net.forward(&input, &ForwardCtx::eval())?;
        Ok(bert::cross_entropy(&logits, &pick(&self.labels)?)?)
    }
}

#[test]
fn lr_net_forward_matches_pytorch() {
    let f = load("lr_net_forward.safetensors");
    let net = LrNet::load(&lr_net_store(), &net_cfg()).unwrap();
    let out = net.forward(&f["features"]).unwrap();
    // Dense f32 MLP (measured 1.2e-7): agreement to a few ulps of the output scale.
    assert_scaled("LR-net output", &out, &f["output"], 1e-6);
    assert_eq!(
        host(&out).iter().filter(|v| **v == 0.0).count(),
        host(&f["output"]).iter().filter(|v| **v == 0.0).count(),
        "the same outputs are clamped at 0"
    );
    let lrs = net.learning_rates(&f["features"]).unwrap();
    assert_scaled("learning rates", &lrs, &f["lrs"], 1e-6);
}

#[test]
fn inner_loop_matches_the_reference_optimiser() {
    let f = load("inner.safetensors");
    let lrs = host(&load("lr_net_forward.safetensors")["lrs"]);
    // Three copies of one example, batch 1: the shuffle cannot change any batch.
    let fx = Fixture::new(vec![2, 2, 2], vec![0]);
    let init: Vec<Tensor> = (0..2 * LINEARS)
        .map(|j| f[&format!("theta0.{j}")].clone())
        .collect();
    let cfg = InnerConfig {
        epochs: 2,
        batch_size: 1,
        clip_norm: 0.05,
        ..InnerConfig::default()
    };
    let run = inner_loop(&fx, &init, &lrs, &cfg, 0).unwrap();
    assert_eq!(run.updates, 4);
    let mean = f["mean_loss"].to_vec1::<f32>().unwrap()[0];
    assert!(
        (run.mean_loss - mean).abs() < 1e-5 * mean,
        "{} vs {mean}",
        run.mean_loss
    );
    let mut worst = (0f64, 0usize);
    for (j, p) in fx.params.iter().enumerate() {
        let e = scale_err(p.as_tensor(), &f[&format!("theta_T.{j}")]);
        if e > worst.0 {
            worst = (e, j);
        }
        // The Adam direction m̂/(√v̂+ε) divides by |g|: elements with tiny gradients amplify
        // f32 differences (measured ≤ 2.6e-5), hence a looser bound than for θ (≤ 1.4e-6).
        assert_scaled(
            &format!("direction {j}"),
            &run.direction[j],
            &f[&format!("direction.{j}")],
            2e-4,
        );
    }
    assert!(worst.0 <= 1e-5, "θ_T {}: error {:.3e}", worst.1, worst.0);
}

#[test]
fn hypergradient_through_bert_matches_pytorch() {
    let f = load("inner.safetensors");
    let want = load("hypergrad.safetensors");
    // Pairs (train 0, val 1) and (train 1, val 0), losses scaled by 1/2.
    let fx = Fixture::new(vec![0, 1], vec![0, 1]);
    fx.set("theta_T", &f);
    let direction: Vec<Tensor> = (0..2 * LINEARS)
        .map(|j| f[&format!("direction.{j}")].clone())
        .collect();
    let store = lr_net_store();
    let net = LrNet::load(&store, &net_cfg()).unwrap();
    let lrs = net
        .learning_rates(&load("lr_net_forward.safetensors")["features"])
        .unwrap();
    let mut lr_grads = vec![0f64; 2 * LINEARS];
    let mut val = 0f64;
    for (train, v) in [(0, 1), (1, 0)] {
        let pair = Pair {
            train,
            val: v,
            scale: 0.5,
            train_seed: 0,
            val_seed: 0,
        };
        let h = pair_hypergrad(&fx, &direction, &pair, &Hypergrad::default()).unwrap();
        for (a, g) in lr_grads.iter_mut().zip(&h.lr_grads) {
            *a += g;
        }
        val += h.val_loss;
    }
    let want_val = f64::from(want["val_loss"].to_vec1::<f32>().unwrap()[0]);
    assert!(
        (val - want_val).abs() < 1e-5 * want_val,
        "{val} vs {want_val}"
    );
    let grads = chain_through_rates(&lrs, &lr_grads).unwrap();
    let mut checked = 0;
    for (name, param) in store.iter() {
        let got = grads.get(param.tensor()).unwrap();
        // Second-order products through BERT in f32 (torch and candle round differently;
        // measured ≤ 3.1e-6): 1e-4 of each tensor's scale.
        assert_scaled(name, got, &want[&format!("grad.{name}")], 1e-4);
        checked += 1;
    }
    assert_eq!(checked, 6 + 2 * LINEARS);
}
