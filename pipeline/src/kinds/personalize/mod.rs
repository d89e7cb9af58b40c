//! `personalize` (PAPER_NOTES §4, §6): one method at one budget on one client of the upstream
//! partition (seen or unseen pool), starting from the single upstream `base/*` model. Writes
//! `predictions.csv` and `result.csv` (the report's classification-result schema), or
//! `generations.csv` on a generation dataset, and `ranks.csv` (BayesTune methods also
//! `lambdas.csv`, FedL2P `lrs.csv`).

mod methods;
mod outputs;

use std::sync::Arc;

use datasets::Split;
use serde::Deserialize;
use serde_json::Value;
use stages::runs::{Method, RunKey};
use stages::task::device_from_name;

use super::client_base::{all_clients, find_client, partition_dir, BaseArtifact};
use super::task::TaskOptions;
use super::trainer_seed::{client_train_seed, default_trainer_seed};
use crate::engine::context::StageContext;
use crate::engine::registry::{
    typed_params, ParamError, PlanInputs, Registry, StageError, StageKind,
};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(PersonalizeKind));
}

// PAPER_NOTES §4, §6: 2 epochs; lr 1e-4 (AdaLoRA 1e-3); batch, accumulation and lengths per task
// (`kinds::task`).
fn default_epochs() -> usize {
    2
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PersonalizeParams {
    #[serde(deserialize_with = "method_id")]
    method: Method,
    budget: usize,
    /// Client id (from `matrix: {client: all}`).
    client: u32,
    #[serde(default = "default_epochs")]
    epochs: usize,
    /// Default per method: 1e-3 for AdaLoRA, 1e-4 otherwise.
    #[serde(default)]
    lr: Option<f64>,
    /// Shuffling and dropout (see `kinds::trainer_seed`).
    #[serde(default = "default_trainer_seed")]
    trainer_seed: u64,
    #[serde(flatten)]
    task: TaskOptions,
}

impl PersonalizeParams {
    fn lr(&self) -> f64 {
        self.lr.unwrap_or(if self.method == Method::AdaLora {
            1e-3
        } else {
            1e-4
        })
    }
}

/// Partial params for validation before `client` is expanded.
#[derive(Deserialize)]
struct MethodOnly {
    method: String,
}

/// A method id, named and listed when unknown.
fn parse_method(id: &str) -> Result<Method, String> {
    id.parse().map_err(|_| {
        let known: Vec<&str> = Method::ALL.iter().map(|m| m.as_str()).collect();
        format!("unknown method `{id}` (supported: {})", known.join(", "))
    })
}

fn method_id<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Method, D::Error> {
    let id = String::deserialize(d)?;
    parse_method(&id).map_err(serde::de::Error::custom)
}

struct PersonalizeKind;
impl StageKind for PersonalizeKind {
    fn name(&self) -> &'static str {
        "personalize"
    }
    fn version(&self) -> u32 {
        // 5: the A each method's federated/Stage-1 stage used (recorded in `run.json`), the
        // reference's fixed Trainer seed, clipping at 1.0, AdaLoRA's 0-based steps.
        // 6: curve.csv (loss per step) and updates.csv (‖ΔW‖ per module).
        6
    }
    fn default_resources(&self) -> crate::engine::resources::Resources {
        crate::engine::resources::Resources::new(2, "8G", "4:00:00")
    }
    fn describe(&self) -> &'static str {
        "personalize a base model on one client (lora, adalora, bayestune_lora, fedl2p, fedp2eft) and score its test split"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        let m: MethodOnly = typed_params(params)?;
        parse_method(&m.method).map_err(|e| ParamError::new(Some("method"), e))?;
        // The manifest validates before `client: all` is expanded: check the rest with a
        // stand-in client id.
        let mut params = params.clone();
        if let Some(map) = params.as_object_mut() {
            map.entry("client").or_insert(Value::from(0u32));
        }
        let p: PersonalizeParams = typed_params(&params)?;
        if p.budget == 0 || p.epochs == 0 {
            return Err(ParamError::new(
                Some("budget"),
                "`budget` and `epochs` must be ≥ 1",
            ));
        }
        p.task.check()?;
        if p.method == Method::AdaLora && p.budget < 2 {
            return Err(ParamError::new(
                Some("budget"),
                "AdaLoRA needs `budget` ≥ 2 (initial rank ⌊1.5·r_b⌋ must exceed r_b)",
            ));
        }
        if !(p.lr() > 0.0 && p.lr().is_finite()) {
            return Err(ParamError::new(Some("lr"), "`lr` must be positive"));
        }
        Ok(())
    }
    fn reads_input(&self, params: &Value, upstream_kind: &str) -> bool {
        // Each method reads only its own federated/Stage-1 upstream (plus partition and base).
        let method = params
            .get("method")
            .and_then(Value::as_str)
            .and_then(|m| m.parse::<Method>().ok());
        match upstream_kind {
            "psg/fedp2eft" => method == Some(Method::FedP2eft),
            "psg/fedl2p" => method == Some(Method::FedL2p),
            "lambda/bayestune" => method == Some(Method::BayesTuneLora),
            _ => true,
        }
    }
    fn expandable_keys(&self) -> &'static [&'static str] {
        &["client"]
    }
    fn expand(&self, key: &str, plan: &PlanInputs<'_>) -> Result<Vec<Value>, StageError> {
        if key != "client" {
            return Err(StageError::msg(format!(
                "personalize cannot expand `{key}`"
            )));
        }
        let dir = partition_dir(plan.inputs.values().flatten())?;
        Ok(all_clients(&dir)?.into_iter().map(Value::from).collect())
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: PersonalizeParams = ctx.params()?;
        let part = partition_dir(ctx.inputs_of_kind("partition/").into_iter())?;
        let shard = find_client(&part, p.client)?;
        let base = BaseArtifact::of(ctx)?;
        let device = device_from_name(ctx.device()).map_err(err)?;
        let setup = p.task.setup(&shard.reader, base.prompt()?);
        let model = base.load(p.client, &setup, &device)?;
        let train = shard.reader.load_client(p.client, Split::Train)?;
        let test = shard.reader.load_client(p.client, Split::Test)?;
        if test.is_empty() {
            return Err(StageError::msg(format!(
                "client {} has no test examples",
                p.client
            )));
        }
        let seed = client_train_seed(p.trainer_seed, "personalize", p.client);
        let kind = shard.reader.task().kind;
        let run = methods::run(ctx, &p, kind, model, &train, &test, seed, &device)?;
        let (out, lambdas) = (run.out, run.lambdas);
        let key = RunKey {
            dataset: shard.reader.task().dataset.clone(),
            pool: shard.pool,
            base_model: base.method,
            method: p.method,
            budget: p.budget as u32,
            seed: ctx.run_seed(),
            client_id: p.client,
        };
        outputs::write(
            ctx,
            &key,
            &shard.info.language,
            &out,
            lambdas.as_deref(),
            &test,
        )?;
        outputs::write_seeds(ctx, run.init_seed, seed)?;
        Ok(())
    }
}

fn err(e: impl std::fmt::Display) -> StageError {
    StageError(e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flattened_task_options_keep_unknown_fields_rejected() {
        let ok = serde_json::json!({"method": "lora", "budget": 2, "client": 0, "max_len": 64});
        let p: PersonalizeParams = typed_params(&ok).unwrap();
        assert_eq!(p.task.max_len, Some(64));
        let bad = serde_json::json!({"method": "lora", "budget": 2, "client": 0, "max_lne": 64});
        let e = typed_params::<PersonalizeParams>(&bad)
            .err()
            .expect("rejected");
        assert!(e.message.contains("max_lne"), "{}", e.message);
    }
}
