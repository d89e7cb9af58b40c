//! Small stage kinds that exercise the executor: caching, fan-out, failure, and checkpointed
//! multi-round work that must resume bit-identically after `kill -9`.

use std::sync::Arc;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::engine::context::StageContext;
use crate::engine::registry::{
    typed_params, ParamError, PlanInputs, Registry, StageError, StageKind,
};

pub fn register(r: &mut Registry) {
    r.register(Arc::new(Write));
    r.register(Arc::new(Rounds));
    r.register(Arc::new(Fail));
    r.register(Arc::new(Fanout));
}

/// Collects `value.txt` of every input, in instance order.
fn read_inputs(ctx: &StageContext) -> Result<String, StageError> {
    let mut all: Vec<_> = ctx.inputs_of_kind("test/");
    all.sort_by(|a, b| a.instance.cmp(&b.instance));
    let mut s = String::new();
    for a in all {
        let v = std::fs::read_to_string(a.dir.join("value.txt"))?;
        s.push_str(&format!("[{}:{}]", a.instance, v.trim()));
    }
    Ok(s)
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct WriteParams {
    text: String,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default)]
    #[allow(dead_code)]
    item: Option<Value>,
}

/// Writes `text`, the run seed and its inputs to `value.txt`.
struct Write;
impl StageKind for Write {
    fn name(&self) -> &'static str {
        "test/write"
    }
    fn version(&self) -> u32 {
        1
    }
    fn describe(&self) -> &'static str {
        "test kind: writes its text, seed and inputs"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        typed_params::<WriteParams>(params).map(|_| ())
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: WriteParams = ctx.params()?;
        std::thread::sleep(std::time::Duration::from_millis(p.sleep_ms));
        let item = ctx
            .combo()
            .get("item")
            .map(|v| format!(" item={v}"))
            .unwrap_or_default();
        let text = format!(
            "{} seed={}{item} {}\n",
            p.text,
            ctx.run_seed(),
            read_inputs(ctx)?
        );
        std::fs::write(ctx.out_dir().join("value.txt"), text)?;
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoundsParams {
    rounds: u32,
    #[serde(default)]
    sleep_ms: u64,
    #[serde(default = "default_width")]
    width: usize,
}

fn default_width() -> usize {
    64
}

#[derive(Serialize, Deserialize)]
struct RoundsState {
    next_round: u32,
    rng_seed: [u8; 32],
    rng_word_pos: u128,
    /// f64 bit patterns: serde_json's float parsing is not guaranteed to round-trip exactly,
    /// and a checkpoint must restore the state bit for bit.
    acc_bits: Vec<u64>,
    log: Vec<String>,
}

/// A long stage: each round draws from a seeded RNG into an accumulator and checkpoints the RNG
/// position and the accumulator, like an FL stage does with weights.
struct Rounds;
impl StageKind for Rounds {
    fn name(&self) -> &'static str {
        "test/rounds"
    }
    fn version(&self) -> u32 {
        1
    }
    fn describe(&self) -> &'static str {
        "test kind: checkpointed rounds of seeded random work"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        let p = typed_params::<RoundsParams>(params)?;
        if p.rounds == 0 {
            return Err(ParamError::new(
                Some("rounds"),
                "`rounds` must be at least 1",
            ));
        }
        Ok(())
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: RoundsParams = ctx.params()?;
        let mut state = match ctx.resume() {
            Some(bytes) => serde_json::from_slice::<RoundsState>(&bytes)?,
            None => {
                let rng = ChaCha8Rng::seed_from_u64(ctx.derive_seed(&["rounds".into()]));
                RoundsState {
                    next_round: 0,
                    rng_seed: rng.get_seed(),
                    rng_word_pos: rng.get_word_pos(),
                    acc_bits: vec![0f64.to_bits(); p.width],
                    log: Vec::new(),
                }
            }
        };
        let bar = ctx.progress(u64::from(p.rounds), "rounds").clone();
        bar.set(u64::from(state.next_round));
        while state.next_round < p.rounds {
            let mut rng = ChaCha8Rng::from_seed(state.rng_seed);
            rng.set_word_pos(state.rng_word_pos);
            for a in state.acc_bits.iter_mut() {
                *a = (f64::from_bits(*a) * 0.5 + rng.random::<f64>())
                    .sin()
                    .to_bits();
            }
            std::thread::sleep(std::time::Duration::from_millis(p.sleep_ms));
            let acc0 = f64::from_bits(state.acc_bits[0]);
            state.log.push(format!("{},{acc0:.17e}", state.next_round));
            state.rng_word_pos = rng.get_word_pos();
            state.next_round += 1;
            ctx.checkpoint(&serde_json::to_vec(&state)?)?;
            bar.inc(1);
        }
        let inputs = read_inputs(ctx)?;
        let bits: Vec<String> = state.acc_bits.iter().map(|a| format!("{a:016x}")).collect();
        std::fs::write(
            ctx.out_dir().join("value.txt"),
            format!("{} {inputs}\n", bits.join("")),
        )?;
        std::fs::write(
            ctx.out_dir().join("rounds.csv"),
            format!("round,acc0\n{}\n", state.log.join("\n")),
        )?;
        Ok(())
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FailParams {
    #[serde(default)]
    panic: bool,
}

/// Always fails (or panics), after writing a partial output that must not be kept.
struct Fail;
impl StageKind for Fail {
    fn name(&self) -> &'static str {
        "test/fail"
    }
    fn version(&self) -> u32 {
        1
    }
    fn describe(&self) -> &'static str {
        "test kind: fails"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        typed_params::<FailParams>(params).map(|_| ())
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: FailParams = ctx.params()?;
        std::fs::write(ctx.out_dir().join("partial.txt"), "half")?;
        ctx.log("about to fail");
        if p.panic {
            panic!("test/fail was asked to panic");
        }
        Err(StageError::msg("test/fail failed as asked"))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FanoutParams {
    text: String,
    #[serde(default)]
    #[allow(dead_code)]
    item: Option<Value>,
}

/// `matrix: {item: all}` takes one value per line of its input's `value.txt` words.
struct Fanout;
impl StageKind for Fanout {
    fn name(&self) -> &'static str {
        "test/fanout"
    }
    fn version(&self) -> u32 {
        1
    }
    fn describe(&self) -> &'static str {
        "test kind: expands `item: all` from its input"
    }
    fn validate(&self, params: &Value) -> Result<(), ParamError> {
        typed_params::<FanoutParams>(params).map(|_| ())
    }
    fn expandable_keys(&self) -> &'static [&'static str] {
        &["item"]
    }
    fn expand(&self, key: &str, plan: &PlanInputs<'_>) -> Result<Vec<Value>, StageError> {
        if key != "item" {
            return Err(StageError::msg(format!("cannot expand {key}")));
        }
        let mut values = Vec::new();
        for a in plan.inputs.values().flatten() {
            let text = std::fs::read_to_string(a.dir.join("value.txt"))?;
            values.extend(
                text.split_whitespace()
                    .take(3)
                    .map(|w| Value::String(w.to_string())),
            );
        }
        Ok(values)
    }
    fn run(&self, ctx: &mut StageContext) -> Result<(), StageError> {
        let p: FanoutParams = ctx.params()?;
        let item = ctx.combo().get("item").cloned().unwrap_or(Value::Null);
        std::fs::write(
            ctx.out_dir().join("value.txt"),
            format!("{} {item}\n", p.text),
        )?;
        Ok(())
    }
}
