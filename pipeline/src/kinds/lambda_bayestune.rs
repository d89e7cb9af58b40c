//! `lambda/bayestune` (`client: all`; PAPER_NOTES §6): the BayesTune-LoRA baseline's Stage 1 on
//! one client (λ initialised to 1e-4), once for all budgets. Writes `lambda.safetensors` (one
//! tensor of r_max raw λ per module) and `stage1.json`.

use std::path::Path;
use std::sync::Arc;

use datasets::Split;
use serde::Deserialize;
use serde_json::Value;
use stages::methods::all_linear;
use stages::methods::stage1::{read_lambdas, train_stage1, write_lambdas, LambdaInit};
use stages::task::device_from_name;

use super::client_base::{all_clients, find_client, partition_dir, BaseArtifact};
use super::stage1::{AdapterMeta, Stage1Params};
use super::trainer_seed::{client_train_seed, default_trainer_seed};
use crate::engine::context::StageContext;
use crate::engine::registry::{
    typed_params, ParamError, PlanInputs, Registry, StageError, StageKind,
};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(Stage1Kind));
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Stage1KindParams {
    client: u32,
    /// Shuffling and dropout (see `kinds::trainer_seed`).
    #[serde(default = "default_trainer_seed")]
    trainer_seed: u64,
    #[serde(flatten)]
    stage1: Stage1Params,
}

struct Stage1Kind;
impl StageKind for Stage1Kind {
    fn name(&self) -> &'static str {
        "lambda/bayestune"
    }
    fn version(&self) -> u32 {
        // 3: FedP2EFT's shared A seed, the reference's fixed Trainer seed, λ gradients summed.
        // 4: the Laplace prior's gradient at B = 0 is torch's 0 (`nn::abs_l1`), not +1.
        4
    }
    fn default_resources(&self) -> crate::engine::resources::Resources {
        crate::engine::resources::Resources::new(2, "8G", "4:00:00")
    }
    fn describe(&self) -> &'static str {
        "BayesTune-LoRA Stage 1 on one client (λ init 1e-4), once for all budgets"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        let mut params = params.clone();
        if let Some(map) = params.as_object_mut() {
            map.entry("client").or_insert(Value::from(0u32));
        }
        typed_params::<Stage1KindParams>(&params)?.stage1.check()
    }
    fn expandable_keys(&self) -> &'static [&'static str] {
        &["client"]
    }
    fn expand(&self, key: &str, plan: &PlanInputs<'_>) -> Result<Vec<Value>, StageError> {
        if key != "client" {
            return Err(StageError::msg(format!(
                "lambda/bayestune cannot expand `{key}`"
            )));
        }
        let dir = partition_dir(plan.inputs.values().flatten())?;
        Ok(all_clients(&dir)?.into_iter().map(Value::from).collect())
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: Stage1KindParams = ctx.params()?;
        let device = device_from_name(ctx.device()).map_err(err)?;
        let part = partition_dir(ctx.inputs_of_kind("partition/").into_iter())?;
        let shard = find_client(&part, p.client)?;
        let base = BaseArtifact::of(ctx)?;
        let setup = p.stage1.task().setup(&shard.reader, base.prompt()?);
        let model = base.load(p.client, &setup, &device)?;
        let train = shard.reader.load_client(p.client, Split::Train)?;
        // FedP2EFT's A (shared seed, as in the reference): pruning restores rows of it.
        let init_seed = ctx.shared_seed(&["bayestune_init".into()]);
        let seed = client_train_seed(p.trainer_seed, "lambda/bayestune", p.client);
        let cfg = p.stage1.config(shard.reader.task().kind);
        let out = train_stage1(&model, &train, &cfg, &LambdaInit::Constant, init_seed, seed)
            .map_err(err)?;
        let modules = all_linear(&model);
        write_lambdas(
            &ctx.out_dir().join("lambda.safetensors"),
            &modules,
            &out.lambdas,
        )
        .map_err(err)?;
        AdapterMeta {
            modules: modules.len(),
            observed: None,
            r_max: cfg.bayestune.r_max,
            alpha: cfg.bayestune.alpha,
            init_seed: Some(init_seed),
        }
        .write(&ctx.out_dir().join("stage1.json"))?;
        ctx.log(&format!(
            "client {} ({}): Stage 1 over {} examples, mean loss {}",
            p.client,
            shard.pool,
            train.len(),
            out.mean_loss
        ));
        Ok(())
    }
}

/// λ per module (module order of `modules`) from an upstream `lambda/bayestune` instance.
pub fn read_stage1(
    dir: &Path,
    modules: &[stages::peft::LinearShape],
) -> Result<(Vec<Vec<f32>>, AdapterMeta), StageError> {
    let meta = AdapterMeta::read(&dir.join("stage1.json"))?;
    let lambdas = read_lambdas(&dir.join("lambda.safetensors"), modules).map_err(err)?;
    Ok((lambdas, meta))
}

fn err(e: impl std::fmt::Display) -> StageError {
    StageError(e.to_string())
}
