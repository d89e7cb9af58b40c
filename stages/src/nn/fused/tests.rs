//! Each fused kernel against the composite candle graph it replaces (same formulas, same
//! dropout masks): forward values and every input gradient, on shapes with padding and
//! dropout. Tolerance 2e-5 absolute on O(1) values: f32 summation-order rounding only.

use candle_core::{DType, Device, Tensor, Var};

use crate::nn::dropout::{apply_mask, DropMask, DropoutRng};
use crate::nn::ops::{layer_norm_composite, softmax_last_dim};

const TOL: f32 = 2e-5;

fn randn(shape: &[usize], seed: u64) -> Tensor {
    let n = shape.iter().product::<usize>();
    crate::nn::normal_tensor(seed, (n, 1), 1.0, &Device::Cpu, DType::F32)
        .unwrap()
        .reshape(shape)
        .unwrap()
}

fn var(shape: &[usize], seed: u64) -> Var {
    Var::from_tensor(&randn(shape, seed)).unwrap()
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    (a.to_dtype(DType::F32).unwrap() - b.to_dtype(DType::F32).unwrap())
        .unwrap()
        .abs()
        .unwrap()
        .flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Compares `fused` and `composite` outputs and the gradients of `probe·output` for `vars`.
fn check(what: &str, fused: &Tensor, composite: &Tensor, vars: &[&Var], seed: u64) {
    let d = max_abs_diff(fused, composite);
    assert!(d < TOL, "{what}: forward differs by {d:e}");
    let probe = randn(fused.dims(), seed);
    let gf = (fused * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    let gc = (composite * &probe)
        .unwrap()
        .sum_all()
        .unwrap()
        .backward()
        .unwrap();
    for (i, v) in vars.iter().enumerate() {
        let d = max_abs_diff(
            gf.get(v.as_tensor()).unwrap(),
            gc.get(v.as_tensor()).unwrap(),
        );
        assert!(d < TOL, "{what}: gradient {i} differs by {d:e}");
    }
}

/// The composite attention of `nn::ops::attention` (candle primitives).
fn attention_composite(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    ext: &Tensor,
    heads: usize,
    drop: Option<DropMask>,
) -> Tensor {
    let (b, s, h) = q.dims3().unwrap();
    let dh = h / heads;
    let split = |t: &Tensor| {
        t.reshape((b, s, heads, dh))
            .unwrap()
            .transpose(1, 2)
            .unwrap()
            .contiguous()
            .unwrap()
    };
    let (q, k, v) = (split(q), split(k), split(v));
    let scores = (q.matmul(&k.t().unwrap()).unwrap() * (1.0 / (dh as f64).sqrt()))
        .unwrap()
        .broadcast_add(&ext.reshape((b, 1, 1, s)).unwrap())
        .unwrap();
    let mut p = softmax_last_dim(&scores).unwrap();
    if let Some(m) = drop {
        p = apply_mask(&p, m).unwrap();
    }
    p.matmul(&v)
        .unwrap()
        .transpose(1, 2)
        .unwrap()
        .contiguous()
        .unwrap()
        .reshape((b, s, h))
        .unwrap()
}

#[test]
fn attention_with_padding_and_dropout_matches_composite() {
    let (b, s, h, heads) = (2, 7, 12, 3);
    let (q, k, v) = (var(&[b, s, h], 1), var(&[b, s, h], 2), var(&[b, s, h], 3));
    // Second sequence padded after 4 tokens: (1 − mask)·f32::MIN.
    let mask: Vec<f32> = (0..b * s)
        .map(|i| if i >= s + 4 { f32::MIN } else { 0.0 })
        .collect();
    let ext = Tensor::from_vec(mask, (b, s), &Device::Cpu).unwrap();
    for drop in [None, Some(DropoutRng::new(5).next_mask(0.25))] {
        let fused = crate::nn::attention(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            &ext,
            heads,
            drop,
        )
        .unwrap();
        let composite = attention_composite(
            q.as_tensor(),
            k.as_tensor(),
            v.as_tensor(),
            &ext,
            heads,
            drop,
        );
        check("attention", &fused, &composite, &[&q, &k, &v], 11);
    }
}

#[test]
fn residual_layer_norm_and_layer_norm_match_composite() {
    let (rows, h) = (70, 16); // more rows than one chunk
    let (a, r) = (var(&[rows, h], 1), var(&[rows, h], 2));
    let w = Var::from_tensor(&randn(&[h], 3).affine(0.1, 1.0).unwrap()).unwrap();
    let bias = var(&[h], 4);
    let m = DropoutRng::new(8).next_mask(0.1);
    let fused = crate::nn::residual_layer_norm(
        a.as_tensor(),
        r.as_tensor(),
        w.as_tensor(),
        bias.as_tensor(),
        1e-12,
        Some(m),
    )
    .unwrap();
    let z = (apply_mask(a.as_tensor(), m).unwrap() + r.as_tensor()).unwrap();
    let composite = layer_norm_composite(&z, w.as_tensor(), bias.as_tensor(), 1e-12).unwrap();
    check(
        "residual layer norm",
        &fused,
        &composite,
        &[&a, &r, &w, &bias],
        12,
    );

    let fused =
        crate::nn::layer_norm(a.as_tensor(), w.as_tensor(), bias.as_tensor(), 1e-5).unwrap();
    let composite =
        layer_norm_composite(a.as_tensor(), w.as_tensor(), bias.as_tensor(), 1e-5).unwrap();
    check("layer norm", &fused, &composite, &[&a, &w, &bias], 13);
}

#[test]
fn gelu_matches_candle_gelu_erf() {
    let x = Var::from_tensor(&(randn(&[5, 33], 1) * 3.0).unwrap()).unwrap();
    let fused = crate::nn::gelu_erf(x.as_tensor()).unwrap();
    let composite = x.as_tensor().gelu_erf().unwrap();
    check("gelu", &fused, &composite, &[&x], 14);
}

#[test]
fn kernels_are_bit_identical_across_runs() {
    let (q, k, v) = (
        randn(&[2, 40, 16], 1),
        randn(&[2, 40, 16], 2),
        randn(&[2, 40, 16], 3),
    );
    let ext = Tensor::zeros((2, 40), DType::F32, &Device::Cpu).unwrap();
    let m = DropoutRng::new(1).next_mask(0.1);
    let run = || -> Vec<u32> {
        crate::nn::attention(&q, &k, &v, &ext, 4, Some(m))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
            .iter()
            .map(|x| x.to_bits())
            .collect()
    };
    assert_eq!(run(), run());
}

#[test]
fn adapted_linear_with_adapter_dropout_matches_composite() {
    use crate::nn::fused::linear::{adapted_linear, frozen_linear};
    use crate::nn::linear_forward;
    let (rows, inp, out, r) = (37, 24, 20, 4);
    let (w, bias) = (randn(&[out, inp], 1), randn(&[out], 2));
    let (x, a, g, b) = (
        var(&[1, rows, inp], 3),
        var(&[r, inp], 4),
        var(&[r], 7),
        var(&[out, r], 5),
    );
    let mask = DropoutRng::new(9).next_mask(0.3);
    let fused = adapted_linear(
        x.as_tensor(),
        &w,
        Some(&bias),
        a.as_tensor(),
        g.as_tensor(),
        b.as_tensor(),
        0.5,
        Some(mask),
    )
    .unwrap();
    // BayesTune form: s·B(λ ⊙ A(x ⊙ m)) + W x + b.
    let xd = apply_mask(x.as_tensor(), mask).unwrap();
    let down = linear_forward(&xd, a.as_tensor(), None)
        .unwrap()
        .broadcast_mul(g.as_tensor())
        .unwrap();
    let composite = (linear_forward(x.as_tensor(), &w, Some(&bias)).unwrap()
        + (linear_forward(&down, b.as_tensor(), None).unwrap() * 0.5).unwrap())
    .unwrap();
    check("adapted linear", &fused, &composite, &[&x, &a, &g, &b], 15);
    let plain = frozen_linear(x.as_tensor(), &w, None).unwrap();
    let want = linear_forward(x.as_tensor(), &w, None).unwrap();
    check("frozen linear", &plain, &want, &[&x], 16);
}
