//! Error measures shared by the PyTorch parity tests.

use candle_core::{DType, Tensor};

pub fn host(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

/// Max |rust − torch| / max|torch| over the tensor: the measure for gradients, whose elements
/// are sums over tokens and layers with heavy cancellation (an element far below the tensor's
/// scale carries the f32 rounding of its large summands, in either implementation).
pub fn scale_err(got: &Tensor, want: &Tensor) -> f64 {
    let (g, w) = (host(got), host(want));
    let scale = w.iter().fold(0f64, |m, v| m.max(v.abs())).max(1e-30);
    g.iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max)
        / scale
}

/// Scale-relative check (see `scale_err`) for values after optimiser steps.
pub fn assert_scaled(what: &str, got: &Tensor, want: &Tensor, tol: f64) {
    assert_eq!(got.dims(), want.dims(), "{what}: shape mismatch");
    let e = scale_err(got, want);
    assert!(
        e <= tol,
        "{what}: max error relative to tensor scale {e:.3e} > {tol:.0e}"
    );
}
