//! HF `BertForSequenceClassification`: the encoder, a tanh pooler over the first token and a
//! linear classifier.

use candle_core::{DType, Result as CResult, Tensor, D};

use super::config::BertConfig;
use super::encoder::{BertEncoder, BertInput};
use super::Result;
use crate::nn::Dropout;
use crate::params::ParamStore;
use crate::peft::layer::ForwardCtx;
use crate::peft::{AdaptedLinear, AdapterSpec, LinearShape};

/// HF `BertForSequenceClassification` over a [`ParamStore`].
pub struct BertForSequenceClassification {
    encoder: BertEncoder,
    num_labels: usize,
    pooler: AdaptedLinear,
    classifier: AdaptedLinear,
    classifier_dropout: Dropout,
}

impl BertForSequenceClassification {
    /// Builds the model from the store (the classifier must exist; see [`ensure_classifier`]).
    pub fn load(store: &ParamStore, cfg: &BertConfig, spec: &AdapterSpec) -> Result<Self> {
        let encoder = BertEncoder::load(store, cfg, spec, "bert.")?;
        let cls = store.get("classifier.weight")?;
        let num_labels = cls.dim(0)?;
        let h = cfg.hidden_size;
        let lin = |name: &str, out_dim: usize| {
            let shape = LinearShape {
                name: name.into(),
                in_dim: h,
                out_dim,
            };
            AdaptedLinear::load(store, &shape, true, spec)
        };
        Ok(Self {
            encoder,
            num_labels,
            pooler: lin("bert.pooler.dense", h)?,
            classifier: lin("classifier", num_labels)?,
            classifier_dropout: Dropout::new(
                cfg.classifier_dropout.unwrap_or(cfg.hidden_dropout_prob),
            ),
        })
    }

    pub fn config(&self) -> &BertConfig {
        self.encoder.config()
    }

    pub fn num_labels(&self) -> usize {
        self.num_labels
    }

    /// Every adapted linear in module order (see [`BertConfig::linear_modules`]).
    pub fn linears(&self) -> Vec<&AdaptedLinear> {
        let mut v: Vec<&AdaptedLinear> = self.encoder.linears().collect();
        v.push(&self.pooler);
        v.push(&self.classifier);
        v
    }

    /// Mutable access for merge/unmerge of all adapters.
    pub fn linears_mut(&mut self) -> Vec<&mut AdaptedLinear> {
        let mut v: Vec<&mut AdaptedLinear> = self.encoder.linears_mut().collect();
        v.push(&mut self.pooler);
        v.push(&mut self.classifier);
        v
    }

    /// Merges every adapter into its base weight (evaluation after personalization, §4).
    pub fn merge_adapters(&mut self) -> CResult<()> {
        self.linears_mut()
            .into_iter()
            .try_for_each(AdaptedLinear::merge)
    }

    pub fn unmerge_adapters(&mut self) -> CResult<()> {
        self.linears_mut()
            .into_iter()
            .try_for_each(AdaptedLinear::unmerge)
    }

    /// Logits (B, num_labels). Train mode when `ctx.dropout` is set.
    pub fn forward(&self, input: &BertInput, ctx: &ForwardCtx<'_>) -> CResult<Tensor> {
        let hs = self.encoder.forward(input, ctx)?;
        let first = hs.narrow(1, 0, 1)?.squeeze(1)?;
        let pooled = self.pooler.forward(&first, ctx)?.tanh()?;
        let pooled = self.classifier_dropout.forward(&pooled, ctx.dropout)?;
        self.classifier.forward(&pooled, ctx)
    }
}

/// Mean cross-entropy of logits (B, C) against u32 labels (B), as `torch.nn.CrossEntropyLoss`;
/// computed in f32 whatever the model's dtype (as under PyTorch's bf16 autocast).
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> CResult<Tensor> {
    candle_nn::loss::cross_entropy(&logits.to_dtype(DType::F32)?, labels)
}

/// Arg-max predictions of logits (B, C).
pub fn predictions(logits: &Tensor) -> CResult<Vec<u32>> {
    logits.argmax(D::Minus1)?.to_vec1::<u32>()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::bert::random_init;
    use candle_core::Device;

    /// The λ layout and top-k tie-breaking follow `BertConfig::linear_modules`; the model's
    /// linears, found by name, must come in that order with those shapes.
    #[test]
    fn linears_come_in_the_configs_module_order() {
        let cfg = BertConfig::tiny(40);
        let store = random_init(&cfg, 3, 1, &Device::Cpu, DType::F32).unwrap();
        let model = BertForSequenceClassification::load(&store, &cfg, &AdapterSpec::NONE).unwrap();
        let got: Vec<&str> = model.linears().iter().map(|l| l.name()).collect();
        let want = cfg.linear_modules(3);
        assert_eq!(
            got,
            want.iter().map(|m| m.name.as_str()).collect::<Vec<_>>()
        );
        for (l, m) in model.linears().iter().zip(&want) {
            assert_eq!(l.weight().dims(), [m.out_dim, m.in_dim], "{}", m.name);
        }
    }
}
