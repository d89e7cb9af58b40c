//! Exact second-order derivatives (Hessian-vector products) with candle 0.11's autograd, for
//! FedL2P's implicit-function hypergradient (PAPER_NOTES §6).
//!
//! candle's `Tensor::backward` detaches every gradient it returns unless the *thread-local*
//! `CANDLE_GRAD_DO_NOT_DETACH` is true, and that thread-local is read from the environment
//! variable of the same name once, the first time a thread runs backprop. (Detaching happens
//! at every intermediate node, so a leaf's gradient still carries the graph of its last op:
//! differentiating it again does not fail, it is silently wrong.) Setting the variable
//! for the whole process would make every stage keep the graph of every gradient. Instead a
//! small pool of dedicated worker threads is started while the variable is set; each runs a
//! backprop at once (fixing its thread-local to true) and the variable is then restored. Only
//! those threads ever keep gradient graphs: [`gradients_with_graph`] sends the loss (a `Send`
//! tensor) to a worker and receives gradients that are themselves differentiable functions of
//! the parameters. An ordinary backward of `Σ_j ⟨g_j, v_j⟩` on any thread then gives the exact
//! Hessian-vector product `H·v` ([`hessian_vector_product`]).
//!
//! Every backward rule of candle is written with differentiable tensor ops (the mask-based ones
//! — ReLU, max, abs, where — treat their masks as constants, as PyTorch does), so
//! differentiating a gradient graph is exact; each worker checks a second derivative at start.
//!
//! Call [`init`] while the process has a single thread (the `pipeline` binary does, first thing
//! in `main`). When [`gradients_with_graph`] has to start the pool lazily instead (library use,
//! tests), another thread that runs its *first* backprop during that short window also keeps
//! its gradient graphs for life: its values are unchanged, it only uses more memory.

use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::{Device, Tensor, Var};

const FLAG: &str = "CANDLE_GRAD_DO_NOT_DETACH";

/// Errors of second-order differentiation.
#[derive(Debug, thiserror::Error)]
pub enum SecondOrderError {
    #[error("second-order gradients unavailable: {0}")]
    Unavailable(String),
    #[error("{0}")]
    Shape(String),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

pub type Result<T> = std::result::Result<T, SecondOrderError>;

type Reply = Sender<candle_core::Result<Vec<Option<Tensor>>>>;
type Job = (Tensor, Vec<Tensor>, Reply);

struct Pool {
    jobs: Mutex<Sender<Job>>,
}

static POOL: OnceLock<std::result::Result<Pool, String>> = OnceLock::new();

/// Starts the graph-keeping worker threads (idempotent). See the module doc for when to call.
pub fn init() -> Result<()> {
    match POOL.get_or_init(start_pool) {
        Ok(_) => Ok(()),
        Err(e) => Err(SecondOrderError::Unavailable(e.clone())),
    }
}

fn start_pool() -> std::result::Result<Pool, String> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 4);
    let previous = std::env::var_os(FLAG);
    std::env::set_var(FLAG, "1");
    let (jobs, rx) = channel::<Job>();
    let rx = Arc::new(Mutex::new(rx));
    let (ready_tx, ready_rx) = channel::<std::result::Result<(), String>>();
    let mut spawned = 0;
    for i in 0..workers {
        let rx = Arc::clone(&rx);
        let ready = ready_tx.clone();
        let started = std::thread::Builder::new()
            .name(format!("second-order-{i}"))
            .spawn(move || worker(rx, ready));
        if started.is_ok() {
            spawned += 1;
        }
    }
    drop(ready_tx);
    // Every worker has fixed its thread-local once it reports; only then restore the variable.
    let checks: Vec<_> = (0..spawned).filter_map(|_| ready_rx.recv().ok()).collect();
    match previous {
        Some(v) => std::env::set_var(FLAG, v),
        None => std::env::remove_var(FLAG),
    }
    if spawned == 0 {
        return Err("no worker thread could be started".into());
    }
    if let Some(Err(e)) = checks.into_iter().find(|c| c.is_err()) {
        return Err(e);
    }
    Ok(Pool {
        jobs: Mutex::new(jobs),
    })
}

fn worker(rx: Arc<Mutex<Receiver<Job>>>, ready: Sender<std::result::Result<(), String>>) {
    let _ = ready.send(self_check());
    drop(ready);
    loop {
        let job = match rx.lock() {
            Ok(guard) => guard.recv(),
            Err(_) => return,
        };
        let Ok((loss, params, reply)) = job else {
            return;
        };
        let out = loss.backward().map(|grads| {
            params
                .iter()
                .map(|p| grads.get(p).cloned())
                .collect::<Vec<_>>()
        });
        let _ = reply.send(out);
    }
}

/// d²((x²)²)/dx² at x = 2 must be 48. A detaching thread gets 16: candle detaches the
/// gradient flowing into every intermediate node, so a leaf's gradient keeps only the graph of
/// its last op (here 2x·detach(2x²)), a silently wrong second derivative.
fn self_check() -> std::result::Result<(), String> {
    match second_derivative_of_x4_at_2() {
        Ok(Some(v)) if (v - 48.0).abs() < 1e-9 => Ok(()),
        Ok(Some(v)) => Err(format!(
            "the worker thread's gradients are detached ({FLAG} was not seen): \
             d²(x⁴)/dx² = {v}, expected 48"
        )),
        Ok(None) => Err("self-check: no second derivative".into()),
        Err(e) => Err(format!("self-check failed: {e}")),
    }
}

fn second_derivative_of_x4_at_2() -> candle_core::Result<Option<f64>> {
    let x = Var::new(2f64, &Device::Cpu)?;
    let y = x.as_tensor().sqr()?.sqr()?;
    let g = y.backward()?;
    let Some(dx) = g.get(x.as_tensor()) else {
        return Ok(None);
    };
    dx.backward()?
        .get(x.as_tensor())
        .map(|t| t.to_scalar::<f64>())
        .transpose()
}

/// ∂loss/∂p for every p of `params`, as tensors that keep their graph (so they can be
/// differentiated again). A parameter the loss does not depend on gets zeros.
pub fn gradients_with_graph(loss: &Tensor, params: &[Var]) -> Result<Vec<Tensor>> {
    init()?;
    let pool = match POOL.get() {
        Some(Ok(p)) => p,
        _ => return Err(SecondOrderError::Unavailable("worker pool missing".into())),
    };
    let (tx, rx) = channel();
    let tensors: Vec<Tensor> = params.iter().map(|p| p.as_tensor().clone()).collect();
    pool.jobs
        .lock()
        .map_err(|_| SecondOrderError::Unavailable("worker pool poisoned".into()))?
        .send((loss.clone(), tensors, tx))
        .map_err(|_| SecondOrderError::Unavailable("worker threads have stopped".into()))?;
    let grads = rx
        .recv()
        .map_err(|_| SecondOrderError::Unavailable("a worker thread stopped".into()))??;
    grads
        .into_iter()
        .zip(params)
        .map(|(g, p)| match g {
            Some(g) => Ok(g),
            None => Ok(p.as_tensor().zeros_like()?),
        })
        .collect()
}

/// `H·v` where H is the Hessian of the loss whose [`gradients_with_graph`] are `grads`, with
/// respect to `params` (block j of the result belongs to `params[j]`): the gradient of
/// `Σ_j ⟨grads_j, v_j⟩` with `v` held constant. Exact up to float rounding; the result is
/// detached. `grads` can be reused for any number of vectors.
pub fn hessian_vector_product(
    grads: &[Tensor],
    params: &[Var],
    v: &[Tensor],
) -> Result<Vec<Tensor>> {
    if grads.len() != params.len() || v.len() != params.len() {
        return Err(SecondOrderError::Shape(format!(
            "{} gradients and {} vectors for {} parameters",
            grads.len(),
            v.len(),
            params.len()
        )));
    }
    let mut dot: Option<Tensor> = None;
    for (j, (g, vj)) in grads.iter().zip(v).enumerate() {
        if g.dims() != vj.dims() {
            return Err(SecondOrderError::Shape(format!(
                "vector block {j} has shape {:?}, its gradient {:?}",
                vj.dims(),
                g.dims()
            )));
        }
        let term = (g * vj.detach())?.sum_all()?;
        dot = Some(match dot {
            Some(d) => (d + term)?,
            None => term,
        });
    }
    let Some(dot) = dot else {
        return Ok(Vec::new());
    };
    let hv = dot.backward()?;
    params
        .iter()
        .map(|p| match hv.get(p.as_tensor()) {
            Some(t) => Ok(t.detach()),
            None => Ok(p.as_tensor().zeros_like()?),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::DType;

    /// f(x, y) = Σ x³·y + Σ exp(x)·y²: H = [[6xy + eˣy², 3x² + 2eˣy], [3x² + 2eˣy, 2eˣ]]
    /// (element-wise, so each block is diagonal).
    #[test]
    fn hvp_matches_the_analytic_hessian() {
        let xs = [0.3f64, -1.2, 0.7];
        let ys = [1.5f64, 0.4, -0.8];
        let x = Var::from_slice(&xs, 3, &Device::Cpu).unwrap();
        let y = Var::from_slice(&ys, 3, &Device::Cpu).unwrap();
        let (xt, yt) = (x.as_tensor(), y.as_tensor());
        let f = ((xt.powf(3.0).unwrap() * yt).unwrap().sum_all().unwrap()
            + (xt.exp().unwrap() * yt.sqr().unwrap())
                .unwrap()
                .sum_all()
                .unwrap())
        .unwrap();
        let params = [x.clone(), y.clone()];
        let g = gradients_with_graph(&f, &params).unwrap();
        let vx = [0.5f64, 2.0, -1.0];
        let vy = [1.0f64, -0.5, 0.25];
        let v = [
            Tensor::new(&vx, &Device::Cpu).unwrap(),
            Tensor::new(&vy, &Device::Cpu).unwrap(),
        ];
        let hv = hessian_vector_product(&g, &params, &v).unwrap();
        let got_x: Vec<f64> = hv[0].to_vec1().unwrap();
        let got_y: Vec<f64> = hv[1].to_vec1().unwrap();
        for i in 0..3 {
            let (a, b) = (xs[i], ys[i]);
            let hxx = 6.0 * a * b + a.exp() * b * b;
            let hxy = 3.0 * a * a + 2.0 * a.exp() * b;
            let hyy = 2.0 * a.exp();
            let want_x = hxx * vx[i] + hxy * vy[i];
            let want_y = hxy * vx[i] + hyy * vy[i];
            // f64 throughout: agreement to rounding.
            assert!(
                (got_x[i] - want_x).abs() < 1e-12,
                "{i}: {} vs {want_x}",
                got_x[i]
            );
            assert!(
                (got_y[i] - want_y).abs() < 1e-12,
                "{i}: {} vs {want_y}",
                got_y[i]
            );
        }
        // The first-order gradients are right too (and still usable on this thread).
        let gx: Vec<f64> = g[0].to_vec1().unwrap();
        let want = 3.0 * xs[0] * xs[0] * ys[0] + xs[0].exp() * ys[0] * ys[0];
        assert!((gx[0] - want).abs() < 1e-12);
    }

    #[test]
    fn ordinary_threads_get_wrong_second_derivatives_the_workers_right_ones() {
        init().unwrap();
        // This (test) thread detaches: differentiating its gradient again is silently wrong.
        assert_eq!(second_derivative_of_x4_at_2().unwrap(), Some(16.0));
        let x = Var::new(&[2f64], &Device::Cpu).unwrap();
        let unused = Var::zeros(1, DType::F64, &Device::Cpu).unwrap();
        let f = x
            .as_tensor()
            .sqr()
            .unwrap()
            .sqr()
            .unwrap()
            .sum_all()
            .unwrap();
        let g = gradients_with_graph(&f, &[x.clone(), unused.clone()]).unwrap();
        assert_eq!(g[0].to_vec1::<f64>().unwrap(), vec![32.0]);
        assert_eq!(g[1].to_vec1::<f64>().unwrap(), vec![0.0]);
        let hv = hessian_vector_product(
            &g,
            &[x.clone(), unused],
            &[
                Tensor::new(&[0.5f64], &Device::Cpu).unwrap(),
                Tensor::new(&[3f64], &Device::Cpu).unwrap(),
            ],
        )
        .unwrap();
        // 12x² · 0.5 = 24.
        assert_eq!(hv[0].to_vec1::<f64>().unwrap(), vec![24.0]);
        assert_eq!(hv[1].to_vec1::<f64>().unwrap(), vec![0.0]);
        assert!(hessian_vector_product(&g[..1], &[x], &[]).is_err());
    }
}
