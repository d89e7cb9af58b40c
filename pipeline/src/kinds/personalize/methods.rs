//! Each method's run on one client, from the client's base model and the upstream federated or
//! Stage-1 artifact the method reads.

use std::fmt::Write as _;

use datasets::{Example, TaskKind};
use serde_json::Value;
use stages::fl::fedl2p_client::client_split;
use stages::fl::psg_client::psg_lambdas;
use stages::methods::adalora::personalize_adalora;
use stages::methods::fedl2p::{personalize_fedl2p, Fedl2pRun};
use stages::methods::ranked::{personalize_ranked, RankedRun};
use stages::methods::{all_linear, personalize_lora, FineTune, Personalized};
use stages::params::ParamStore;
use stages::peft::bayestune::{LAMBDA_MAX, LAMBDA_MIN};
use stages::runs::Method;
use stages::task::TaskModel;
use stages::Device;

use super::{err, PersonalizeParams};
use crate::engine::context::{InputArtifact, StageContext};
use crate::engine::registry::StageError;
use crate::kinds::artifacts::LRS_FILE;
use crate::kinds::lambda_bayestune::read_stage1;
use crate::kinds::psg_fedl2p::{read_lr_net, LrNetMeta};
use crate::kinds::psg_fedp2eft::read_psg;
use crate::kinds::stage1::AdapterMeta;

/// λ per module (r_max values each) that ranks were selected from.
pub(super) type Lambdas = Vec<Vec<f32>>;

/// What a method's run produced, and the seeds it ran with.
pub(super) struct MethodRun {
    pub out: Personalized,
    /// The λ the ranks were selected from (BayesTune methods).
    pub lambdas: Option<Lambdas>,
    /// The seed of the adapters' initial A: shared by every client of a run seed, and the one
    /// the method's federated or Stage-1 stage trained with.
    pub init_seed: u64,
}

/// Runs `p.method` with shuffling/dropout from `seed`.
#[allow(clippy::too_many_arguments)]
pub(super) fn run(
    ctx: &StageContext,
    p: &PersonalizeParams,
    kind: TaskKind,
    model: TaskModel,
    train: &[Example],
    test: &[Example],
    seed: u64,
    device: &Device,
) -> Result<MethodRun, StageError> {
    let done = |out, lambdas, init_seed| MethodRun {
        out,
        lambdas,
        init_seed,
    };
    let ranked = |lambdas: Vec<Vec<f32>>, meta: &AdapterMeta, init_seed: u64, model| {
        let run = RankedRun {
            budget: p.budget,
            epochs: p.epochs,
            lr: p.lr(),
            batch_size: p.task.batch_size(kind),
            accumulate: p.task.accumulate(kind),
            bayestune: meta.bayestune(),
            init_seed,
            seed,
        };
        personalize_ranked(model, train, test, &lambdas, &run)
            .map(|out| done(out, Some(lambdas), init_seed))
            .map_err(err)
    };
    let tune = |init_seed| FineTune {
        budget: p.budget,
        epochs: p.epochs,
        lr: p.lr(),
        batch_size: p.task.batch_size(kind),
        accumulate: p.task.accumulate(kind),
        init_seed,
        seed,
    };
    match p.method {
        Method::Lora => {
            // Shared with FedL2P's LoRA at the same budget (`psg/fedl2p` uses this seed).
            let init = ctx.shared_seed(&["lora_init".into()]);
            let out = personalize_lora(model, train, test, &tune(init)).map_err(err)?;
            Ok(done(out, None, init))
        }
        Method::AdaLora => {
            let init = ctx.shared_seed(&["adalora_init".into()]);
            let out = personalize_adalora(model, train, test, &tune(init)).map_err(err)?;
            Ok(done(out, None, init))
        }
        Method::FedP2eft => {
            let up = upstream(ctx, "psg/fedp2eft", p.client)?;
            let (psg, cfg, meta) = read_psg(&up.dir, device)?;
            let dtype = p.task.dtype.unwrap_or_default();
            let lambdas = psg_lambdas(&psg, &cfg, &model, train, dtype).map_err(StageError)?;
            if lambdas.len() != all_linear(&model).len() {
                return Err(StageError::msg(format!(
                    "the PSG of {} gives λ for {} modules; this base model has {}",
                    up.instance,
                    lambdas.len(),
                    all_linear(&model).len()
                )));
            }
            // §4: pruning restores rows of the A the PSG's Stage 1 learned λ against.
            let init_seed = meta.init_seed.ok_or_else(|| {
                StageError::msg(format!(
                    "{}: psg/config.json records no init_seed (trained by an older version; rerun the PSG stage)",
                    up.instance
                ))
            })?;
            ranked(lambdas, &meta, init_seed, model)
        }
        Method::FedL2p => {
            let up = upstream(ctx, "psg/fedl2p", p.client)?;
            let (store, meta) = read_lr_net(&up.dir, device)?;
            let run = Fedl2pRun {
                budget: p.budget,
                epochs: p.epochs,
                batch_size: p.task.batch_size(kind),
                accumulate: p.task.accumulate(kind),
                init_seed: meta.init_seed,
                seed,
            };
            let out = personalize_fedl2p_run(
                ctx,
                up,
                (&store, &meta),
                p.client,
                &run,
                model,
                train,
                test,
            )?;
            Ok(done(out, None, meta.init_seed))
        }
        Method::BayesTuneLora => {
            let up = upstream(ctx, "lambda/bayestune", p.client)?;
            let (mut lambdas, meta) = read_stage1(&up.dir, &all_linear(&model))?;
            // §3: after the baseline's Stage 1, λ is hard-clamped to [1e-4, 1000].
            for v in lambdas.iter_mut().flatten() {
                *v = v.clamp(LAMBDA_MIN as f32, LAMBDA_MAX as f32);
            }
            let init_seed = meta.init_seed.ok_or_else(|| {
                StageError::msg(format!("{}: stage1.json has no init_seed", up.instance))
            })?;
            ranked(lambdas, &meta, init_seed, model)
        }
    }
}

/// The upstream instance of `kind` this client's run reads: the single one, or the one whose
/// `client` matrix value is this client.
fn upstream<'a>(
    ctx: &'a StageContext,
    kind: &str,
    client: u32,
) -> Result<&'a InputArtifact, StageError> {
    let all = ctx.inputs_of_kind(kind);
    let of_client: Vec<_> = all
        .iter()
        .copied()
        .filter(|a| a.combo.get("client").and_then(Value::as_u64) == Some(u64::from(client)))
        .collect();
    match (all.as_slice(), of_client.as_slice()) {
        (_, [one]) | ([one], []) => Ok(one),
        _ => Err(StageError::msg(format!(
            "method needs one upstream `{kind}` instance for client {client}, found {} (add the stage to `needs`)",
            all.len()
        ))),
    }
}

/// The `fedl2p` method of `personalize`: fine-tunes on the client's train part (the same
/// 80/20 split as in federated training, as the reference personalizes on its `train` split),
/// with the rates of `upstream`'s LR network; writes `lrs.csv` (module, matrix, lr).
#[allow(clippy::too_many_arguments)]
fn personalize_fedl2p_run(
    ctx: &StageContext,
    upstream: &InputArtifact,
    (store, meta): (&ParamStore, &LrNetMeta),
    client: u32,
    run: &Fedl2pRun,
    model: TaskModel,
    train: &[Example],
    test: &[Example],
) -> Result<Personalized, StageError> {
    if meta.budget != run.budget {
        return Err(StageError::msg(format!(
            "{} trained the LR network for budget {}, this run has budget {} (give the FedL2P \
             stage the same `budget` matrix)",
            upstream.instance, meta.budget, run.budget
        )));
    }
    let (observed, linears) = (model.observed_linears(), all_linear(&model).len());
    if meta.modules != linears || meta.input_dim != 2 * observed {
        return Err(StageError::msg(format!(
            "the LR network of {} is for {} adapted modules and {} meta-data features; this \
             base model has {linears} and {}",
            upstream.instance,
            meta.modules,
            meta.input_dim,
            2 * observed
        )));
    }
    let (train, _) =
        client_split(train, meta.val_ratio, meta.split_seed, client).map_err(StageError)?;
    let (out, rates) =
        personalize_fedl2p(model, &train, test, store, &meta.net_config(), run).map_err(err)?;
    let mut csv = String::from("module,matrix,lr\n");
    for r in &rates {
        writeln!(csv, "{},{},{}", r.module, r.matrix, r.lr).expect("string write");
    }
    std::fs::write(ctx.out_dir().join(LRS_FILE), csv)?;
    Ok(out)
}
