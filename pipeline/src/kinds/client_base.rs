//! What the per-client kinds (PSG training, Stage 1, personalization) share: the upstream
//! partition, which pool a client is in, and the client's own base model (the shared `model/`
//! plus its `client_state/<id>.safetensors` when the base method keeps private parameters).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use datasets::{ClientInfo, PoolReader, Split, TaskKind};
use stages::fl::fedavg_client::ShardLoader;
use stages::fl::psg_client::BaseLoader;
use stages::methods::all_linear;
use stages::methods::load_base;
use stages::runs::{BaseModel, Pool};
use stages::task::{TaskModel, TaskSetup};
use stages::tokenize::PromptTemplate;
use stages::Device;

use super::artifacts::MODEL_DIR;
use super::base_cache::frozen_base;
use super::task::TaskOptions;
use crate::engine::context::{InputArtifact, StageContext};
use crate::engine::registry::StageError;

/// The single upstream `partition/*` among `inputs`.
pub fn partition_dir<'a>(
    inputs: impl Iterator<Item = &'a InputArtifact>,
) -> Result<PathBuf, StageError> {
    let parts: Vec<_> = inputs
        .filter(|a| a.kind.starts_with("partition/"))
        .collect();
    match parts.as_slice() {
        [one] => Ok(one.dir.clone()),
        _ => Err(StageError::msg(format!(
            "this stage needs exactly one upstream partition stage, found {}",
            parts.len()
        ))),
    }
}

/// A client located in its pool.
pub struct ClientShard {
    pub pool: Pool,
    pub reader: PoolReader,
    pub info: ClientInfo,
}

/// Finds `client` in the seen or unseen pool of the partition at `part`.
pub fn find_client(part: &Path, client: u32) -> Result<ClientShard, StageError> {
    for &pool in Pool::ALL {
        let reader = PoolReader::open(part.join(pool.file_name()))?;
        if let Some(info) = reader
            .clients()
            .iter()
            .find(|c| c.client_id == client)
            .cloned()
        {
            return Ok(ClientShard { pool, reader, info });
        }
    }
    Err(StageError::msg(format!(
        "client {client} is in neither pool of partition {}",
        part.display()
    )))
}

/// The seen pool the federated meta-network kinds (`psg/fedp2eft`, `psg/fedl2p`) train on, and
/// the model setup of its task.
pub struct SeenPool {
    pub reader: PoolReader,
    pub kind: TaskKind,
    pub setup: TaskSetup,
    pub clients: Vec<u32>,
}

impl SeenPool {
    pub fn open(
        ctx: &StageContext,
        base: &BaseArtifact,
        task: &TaskOptions,
    ) -> Result<Self, StageError> {
        let part = partition_dir(ctx.inputs_of_kind("partition/").into_iter())?;
        let reader = PoolReader::open(part.join(Pool::Seen.file_name()))?;
        let kind = reader.task().kind;
        let setup = task.setup(&reader, base.prompt()?);
        let clients = reader.clients().iter().map(|c| c.client_id).collect();
        Ok(Self {
            reader,
            kind,
            setup,
            clients,
        })
    }

    /// (observed, adapted) linears of the clients' base (from the first client's): the
    /// meta-data size and the number of adapted modules.
    pub fn linears(&self, loader: &BaseLoader<'_>) -> Result<(usize, usize), StageError> {
        let first = *self
            .clients
            .first()
            .ok_or_else(|| StageError::msg("the seen pool has no clients"))?;
        let model = loader(first).map_err(StageError)?;
        Ok((model.observed_linears(), all_linear(&model).len()))
    }

    /// Loads a client's train split.
    pub fn train_shards(&self) -> ShardLoader<'_> {
        Box::new(move |c| {
            self.reader
                .load_client(c, Split::Train)
                .map_err(|e| e.to_string())
        })
    }
}

/// The client ids of both pools (what `client: all` expands to).
pub fn all_clients(part: &Path) -> Result<Vec<u32>, StageError> {
    let mut ids = Vec::new();
    for &pool in Pool::ALL {
        let r = PoolReader::open(part.join(pool.file_name()))?;
        ids.extend(r.clients().iter().map(|c| c.client_id));
    }
    Ok(ids)
}

/// The upstream base model directory and how it was obtained (`base/fedavg` → Standard FL).
pub struct BaseArtifact {
    pub dir: PathBuf,
    pub method: BaseModel,
}

impl BaseArtifact {
    pub fn of(ctx: &StageContext) -> Result<Self, StageError> {
        let base = ctx.single_input_of_kind("base/")?;
        let method = BaseModel::of_kind(&base.kind).ok_or_else(|| {
            StageError::msg(format!(
                "{}: unknown base-model kind `{}`",
                base.instance, base.kind
            ))
        })?;
        Ok(Self {
            dir: base.dir.clone(),
            method,
        })
    }

    fn client_state(&self, client: u32) -> PathBuf {
        self.dir
            .join("client_state")
            .join(format!("{client}.safetensors"))
    }

    /// Whether clients have private parameters (DEPT, FedDPA-T).
    pub fn is_per_client(&self) -> bool {
        self.dir.join("client_state").is_dir()
    }

    /// The prompt template the base model was trained with (generation).
    pub fn prompt(&self) -> Result<PromptTemplate, StageError> {
        super::task::read_prompt(&self.dir.join("model"))
    }

    /// `client`'s base, frozen: `model/` plus its private state when it has one (a client that
    /// never trained keeps the starting values in `model/`).
    pub fn load(
        &self,
        client: u32,
        setup: &TaskSetup,
        device: &Device,
    ) -> Result<TaskModel, StageError> {
        let state = self.client_state(client);
        let model_dir = self.dir.join(MODEL_DIR);
        if state.is_file() {
            return load_base(&model_dir, Some(&state), setup, device)
                .map_err(|e| StageError(e.to_string()));
        }
        // No private state: every client's base is the shared `model/`, loaded once per run.
        frozen_base(&model_dir, setup, &format!("{device:?}"), || {
            load_base(&model_dir, None, setup, device).map_err(|e| StageError(e.to_string()))
        })
    }

    /// A loader of clients' bases that reads the shared model once when no client has private
    /// parameters.
    pub fn loader<'a>(
        &'a self,
        setup: &'a TaskSetup,
        device: &'a Device,
    ) -> Result<BaseLoader<'a>, StageError> {
        if self.is_per_client() {
            Ok(Box::new(move |c| {
                self.load(c, setup, device).map(Arc::new).map_err(|e| e.0)
            }))
        } else {
            let shared = Arc::new(
                load_base(&self.dir.join("model"), None, setup, device)
                    .map_err(|e| StageError(e.to_string()))?,
            );
            Ok(Box::new(move |_| Ok(shared.clone())))
        }
    }
}
