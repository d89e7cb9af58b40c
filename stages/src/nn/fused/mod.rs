//! Fused CPU kernels for the training hot path, as candle custom ops with their own backward.
//!
//! candle's autograd builds one graph node per primitive and, in the backward pass, computes the
//! gradient of *both* matmul operands and accumulates every gradient as `zeros + grad`. For a
//! frozen base model that is a third of the GEMM work spent on weight gradients nobody reads and
//! several full-size temporaries per primitive. These ops compute what the composite graph
//! computes (same formulas, f32 arithmetic) with one node each:
//! - [`linear`]: `x·Wᵀ + b (+ s·down·Bᵀ)` with a frozen `W` — backward gives `dx` (and the
//!   low-rank operands' gradients) only;
//! - [`attention`]: scaled dot-product attention with additive padding mask, softmax and
//!   attention-probability dropout, per (batch, head) on strided views of (B, S, H), the
//!   probabilities recomputed in the backward pass instead of stored;
//! - [`norm`]: `LayerNorm(dropout(a) + residual)` over the last dimension;
//! - [`gelu`]: exact erf GELU.
//!
//! They run on the CPU for f32 and bf16 tensors (bf16 is widened to f32 inside, results are
//! rounded back, as PyTorch's CPU bf16 kernels accumulate in f32); other devices and dtypes use
//! the composite candle graph, which stays the reference the tests compare the kernels against.
//! The kernels' own reductions run in fixed chunks whose partial results are summed in chunk
//! order, so they do not depend on scheduling; matrix products go through `gemm` exactly as
//! candle's matmul does (deterministic for a given machine and thread count).

pub mod attention;
pub mod gelu;
mod gemm;
pub mod linear;
pub mod norm;

use std::borrow::Cow;
use std::cell::Cell;
use std::sync::OnceLock;

use candle_core::{CpuStorage, DType, Device, Layout, Result, Tensor};

thread_local! {
    static COMPOSITE: Cell<bool> = const { Cell::new(false) };
}

/// Runs `f` with the fused kernels off on this thread: every op builds the composite candle
/// graph. Needed where a loss is differentiated twice (FedL2P's Hessian-vector products,
/// [`crate::second_order`]): the kernels' backward passes are computed outside candle's graph,
/// so a gradient through them is not itself differentiable.
pub fn composite_scope<R>(f: impl FnOnce() -> R) -> R {
    struct Restore(bool);
    impl Drop for Restore {
        fn drop(&mut self) {
            COMPOSITE.with(|c| c.set(self.0));
        }
    }
    let _restore = Restore(COMPOSITE.with(|c| c.replace(true)));
    f()
}

/// `FEDP2EFT_FUSED=0` switches the fused kernels off for the whole process (read once), to
/// compare against or benchmark the composite graphs.
fn enabled() -> bool {
    static ENABLED: OnceLock<bool> = OnceLock::new();
    *ENABLED.get_or_init(|| std::env::var("FEDP2EFT_FUSED").as_deref() != Ok("0"))
}

/// Whether `t` can go through the fused kernels (CPU, f32 or bf16, outside a
/// [`composite_scope`], not switched off by `FEDP2EFT_FUSED=0`).
pub fn supported(t: &Tensor) -> bool {
    matches!(t.device(), Device::Cpu)
        && matches!(t.dtype(), DType::F32 | DType::BF16)
        && !COMPOSITE.with(Cell::get)
        && enabled()
}

/// Fails when a kernel's backward runs inside a graph-keeping backward pass (the incoming
/// gradient carries a graph): its result would silently lack second-order terms.
fn first_order_only(op: &str, grad: &Tensor) -> Result<()> {
    if grad.track_op() {
        candle_core::bail!(
            "{op}: second-order differentiation through a fused kernel; build this loss inside nn::fused::composite_scope"
        );
    }
    Ok(())
}

/// The elements of a contiguous CPU storage view as f32 (borrowed when f32, else converted).
/// The public wrappers make every operand contiguous before the op runs.
pub(crate) fn host_f32<'a>(storage: &'a CpuStorage, layout: &Layout) -> Result<Cow<'a, [f32]>> {
    let Some((a, b)) = layout.contiguous_offsets() else {
        candle_core::bail!("fused kernel given a non-contiguous operand");
    };
    match storage {
        CpuStorage::F32(v) => Ok(Cow::Borrowed(&v[a..b])),
        CpuStorage::BF16(v) => Ok(Cow::Owned(v[a..b].iter().map(|x| x.to_f32()).collect())),
        other => Err(candle_core::Error::UnsupportedDTypeForOp(
            candle_core::backend::BackendStorage::dtype(other),
            "fused kernel",
        )),
    }
}

/// Runs `f` on the elements of `t` as contiguous f32 (no copy for a contiguous f32 CPU tensor).
fn with_host_f32<R>(t: &Tensor, f: impl FnOnce(&[f32]) -> Result<R>) -> Result<R> {
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    match &*storage {
        candle_core::Storage::Cpu(s) => f(&host_f32(s, layout)?),
        _ => Err(candle_core::Error::Msg(
            "fused kernel called on a non-CPU tensor".into(),
        )),
    }
}

/// f32 results as a storage of the dtype of `like` (bf16: round to nearest even; else f32).
pub(crate) fn storage_like(v: Vec<f32>, like: &CpuStorage) -> CpuStorage {
    match like {
        CpuStorage::BF16(_) => CpuStorage::BF16(v.into_iter().map(half::bf16::from_f32).collect()),
        _ => CpuStorage::F32(v),
    }
}

/// f32 results as a CPU tensor of `dtype` with the given shape.
fn tensor_of(v: Vec<f32>, dims: &[usize], dtype: DType) -> Result<Tensor> {
    let t = Tensor::from_vec(v, dims, &Device::Cpu)?;
    if dtype == DType::F32 {
        Ok(t)
    } else {
        t.to_dtype(dtype)
    }
}

/// Rows per chunk of the fixed-chunk row-parallel kernels: the chunking (and so the order of
/// every reduction over rows) is independent of the number of threads.
const ROW_CHUNK: usize = 32;

#[cfg(test)]
mod tests;
