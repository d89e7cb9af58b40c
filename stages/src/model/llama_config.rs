//! LLaMA configuration mirroring HF `LlamaConfig` (`config.json`), and the rotary-embedding
//! frequencies it implies (plain, linear and Llama-3 `rope_scaling`).

use serde::{Deserialize, Serialize};

/// Token id(s) in `config.json`: HF allows an int or a list (Llama-3 lists several EOS ids).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

impl TokenIds {
    pub fn to_vec(&self) -> Vec<u32> {
        match self {
            Self::One(i) => vec![*i],
            Self::Many(v) => v.clone(),
        }
    }
}

/// HF `rope_scaling`; `rope_type` (or legacy `type`) picks the variant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    #[serde(alias = "type")]
    pub rope_type: String,
    #[serde(default)]
    pub factor: Option<f64>,
    #[serde(default)]
    pub low_freq_factor: Option<f64>,
    #[serde(default)]
    pub high_freq_factor: Option<f64>,
    #[serde(default)]
    pub original_max_position_embeddings: Option<usize>,
}

/// The fields of HF `LlamaConfig` this implementation reads; defaults are HF's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    #[serde(default = "default_architectures")]
    pub architectures: Vec<String>,
    #[serde(default = "default_model_type")]
    pub model_type: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    #[serde(default)]
    pub head_dim: Option<usize>,
    #[serde(default = "default_hidden_act")]
    pub hidden_act: String,
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    #[serde(default = "default_init_range")]
    pub initializer_range: f64,
    #[serde(default = "default_rms_eps")]
    pub rms_norm_eps: f64,
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    #[serde(default)]
    pub rope_scaling: Option<RopeScaling>,
    #[serde(default)]
    pub attention_bias: bool,
    #[serde(default)]
    pub mlp_bias: bool,
    #[serde(default)]
    pub tie_word_embeddings: bool,
    #[serde(default)]
    pub bos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub eos_token_id: Option<TokenIds>,
    #[serde(default)]
    pub pad_token_id: Option<u32>,
    #[serde(default = "default_dtype")]
    pub torch_dtype: String,
}

fn default_architectures() -> Vec<String> {
    vec!["LlamaForCausalLM".into()]
}
fn default_model_type() -> String {
    "llama".into()
}
fn default_hidden_act() -> String {
    "silu".into()
}
fn default_max_positions() -> usize {
    2048
}
fn default_init_range() -> f64 {
    0.02
}
fn default_rms_eps() -> f64 {
    1e-6
}
fn default_rope_theta() -> f64 {
    10_000.0
}
fn default_dtype() -> String {
    "float32".into()
}

/// Invalid or unsupported configuration.
#[derive(Debug, thiserror::Error)]
#[error("config.json: {0}")]
pub struct ConfigError(pub String);

impl LlamaConfig {
    /// A config with HF defaults for everything but the sizes.
    pub fn new(
        vocab_size: usize,
        hidden_size: usize,
        intermediate_size: usize,
        layers: usize,
        heads: usize,
        kv_heads: usize,
    ) -> Self {
        Self {
            architectures: default_architectures(),
            model_type: default_model_type(),
            vocab_size,
            hidden_size,
            intermediate_size,
            num_hidden_layers: layers,
            num_attention_heads: heads,
            num_key_value_heads: Some(kv_heads),
            head_dim: None,
            hidden_act: default_hidden_act(),
            max_position_embeddings: default_max_positions(),
            initializer_range: default_init_range(),
            rms_norm_eps: default_rms_eps(),
            rope_theta: default_rope_theta(),
            rope_scaling: None,
            attention_bias: false,
            mlp_bias: false,
            tie_word_embeddings: false,
            bos_token_id: None,
            eos_token_id: None,
            pad_token_id: None,
            torch_dtype: default_dtype(),
        }
    }

    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
            .unwrap_or(self.hidden_size / self.num_attention_heads)
    }

    /// Checks the shape constraints the forward relies on.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let e = |m: String| Err(ConfigError(m));
        if self.hidden_act != "silu" {
            return e(format!(
                "hidden_act {:?} unsupported (only \"silu\")",
                self.hidden_act
            ));
        }
        if self.num_attention_heads == 0
            || self.kv_heads() == 0
            || self.num_attention_heads % self.kv_heads() != 0
        {
            return e(format!(
                "num_attention_heads {} must be a positive multiple of num_key_value_heads {}",
                self.num_attention_heads,
                self.kv_heads()
            ));
        }
        if self.head_dim() % 2 != 0 || self.head_dim() == 0 {
            return e(format!(
                "head_dim {} must be even and positive",
                self.head_dim()
            ));
        }
        self.inverse_frequencies().map(|_| ())
    }

    /// RoPE inverse frequencies for `head_dim`, after `rope_scaling` — computed in f32 like
    /// HF's `_compute_default_rope_parameters` / `_compute_llama3_parameters`.
    pub fn inverse_frequencies(&self) -> Result<Vec<f32>, ConfigError> {
        let dim = self.head_dim();
        let base = self.rope_theta as f32;
        let plain: Vec<f32> = (0..dim)
            .step_by(2)
            .map(|i| 1.0 / base.powf(i as f32 / dim as f32))
            .collect();
        let Some(scaling) = &self.rope_scaling else {
            return Ok(plain);
        };
        let need = |v: Option<f64>, name: &str| {
            v.ok_or_else(|| {
                ConfigError(format!("rope_scaling {:?} needs {name}", scaling.rope_type))
            })
        };
        match scaling.rope_type.as_str() {
            "default" => Ok(plain),
            "linear" => {
                let factor = need(scaling.factor, "factor")? as f32;
                Ok(plain.into_iter().map(|f| f / factor).collect())
            }
            "llama3" => {
                let factor = need(scaling.factor, "factor")? as f32;
                let low = need(scaling.low_freq_factor, "low_freq_factor")? as f32;
                let high = need(scaling.high_freq_factor, "high_freq_factor")? as f32;
                let old_ctx = scaling.original_max_position_embeddings.ok_or_else(|| {
                    ConfigError("rope_scaling llama3 needs original_max_position_embeddings".into())
                })? as f32;
                let low_wavelen = old_ctx / low;
                let high_wavelen = old_ctx / high;
                Ok(plain
                    .into_iter()
                    .map(|f| {
                        let wavelen = 2.0 * std::f32::consts::PI / f;
                        if wavelen > low_wavelen {
                            f / factor
                        } else if wavelen < high_wavelen {
                            f
                        } else {
                            // Medium band: interpolate between scaled and unscaled frequency.
                            let smooth = (old_ctx / wavelen - low) / (high - low);
                            (1.0 - smooth) * f / factor + smooth * f
                        }
                    })
                    .collect())
            }
            other => Err(ConfigError(format!(
                "rope_scaling type {other:?} unsupported (supported: default, linear, llama3)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hf_llama32_style_config() {
        let json = r#"{"vocab_size": 10, "hidden_size": 8, "intermediate_size": 16,
            "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 1,
            "rope_theta": 500000.0, "eos_token_id": [1, 2], "tie_word_embeddings": true,
            "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
            "original_max_position_embeddings": 8192, "rope_type": "llama3"}}"#;
        let cfg: LlamaConfig = serde_json::from_str(json).unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.eos_token_id.as_ref().unwrap().to_vec(), vec![1, 2]);
        let inv = cfg.inverse_frequencies().unwrap();
        assert_eq!(inv.len(), 2);
        // Highest frequency (1.0) has wavelength 2π < 8192/4: unchanged.
        assert_eq!(inv[0], 1.0);
        // Lowest: 1/500000^0.5 ≈ 1.41e-3, wavelength ≈ 4443 lies in the medium band.
        assert!(inv[1] < 1.0 / 500_000f32.sqrt());
    }

    #[test]
    fn rejects_unknown_rope_type() {
        let mut cfg = LlamaConfig::new(10, 8, 16, 1, 2, 1);
        cfg.rope_scaling = Some(RopeScaling {
            rope_type: "yarn".into(),
            factor: Some(2.0),
            low_freq_factor: None,
            high_freq_factor: None,
            original_max_position_embeddings: None,
        });
        assert!(cfg.validate().is_err());
    }
}
