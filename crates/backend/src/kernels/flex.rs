//! Fused CPU kernels for burn's Flex backend.
//!
//! RMSNorm and RoPE are memory-bound: as tensor-op chains they read and write the activations
//! four to six times; here each row is read once and written once, rows in parallel.

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape, Tensor};
use rayon::prelude::*;

use super::FusedOps;
use super::reference;

/// A Flex primitive as a tensor, for the tensor-op reference paths.
fn tensor<const D: usize>(x: FlexTensor) -> Tensor<D> {
    Tensor::from_primitive::<Flex>(x)
}

/// Back to the primitive. Every tensor here was computed on Flex from Flex inputs.
fn primitive<const D: usize>(x: Tensor<D>) -> FlexTensor {
    match x.try_into_primitive::<Flex>() {
        Ok(p) => p,
        Err(e) => unreachable!("a Flex computation left Flex: {e:?}"),
    }
}

/// Minimum rows per rayon task: below this the split costs more than it saves.
const MIN_ROWS_PER_TASK: usize = 8;

fn contiguous_f32(t: &FlexTensor) -> (Shape, Vec<f32>) {
    let shape = t.layout().shape().clone();
    let t = t.to_contiguous();
    let data = match t.as_slice::<f32>() {
        Some(s) => s.to_vec(),
        None => t
            .clone()
            .into_data()
            .convert::<f32>()
            .try_to_vec::<f32>()
            .unwrap_or_default(),
    };
    (shape, data)
}

fn with_slice<R>(t: &FlexTensor, f: impl FnOnce(&[f32]) -> R) -> R {
    if let Some(s) = t.as_slice::<f32>() {
        f(s)
    } else {
        let (_, data) = contiguous_f32(t);
        f(&data)
    }
}

fn output_like(shape: Shape, fill: impl FnOnce(&mut [f32])) -> FlexTensor {
    let mut out = FlexTensor::empty(shape, DType::F32);
    fill(out.storage_mut::<f32>());
    out
}

impl FusedOps for Flex {
    fn rms_norm_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        eps: f64,
    ) -> (FlexTensor, FlexTensor) {
        let (dx, dw) = reference::rms_norm_backward(tensor(x), tensor(weight), tensor(grad), eps);
        (primitive(dx), primitive(dw))
    }

    fn rotary_qk(
        q: FlexTensor,
        k: FlexTensor,
        cos: FlexTensor,
        sin: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        (
            Self::rotary(q, cos.clone(), sin.clone()),
            Self::rotary(k, cos, sin),
        )
    }

    fn swiglu(gate: FlexTensor, up: FlexTensor) -> FlexTensor {
        primitive::<1>(reference::swiglu(tensor(gate), tensor(up)))
    }

    fn swiglu_backward(
        gate: FlexTensor,
        up: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let (dg, du) = reference::swiglu_backward::<1>(tensor(gate), tensor(up), tensor(grad));
        (primitive(dg), primitive(du))
    }

    fn causal_attention_lse(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let (out, lse) = reference::causal_attention_lse(tensor(q), tensor(k), tensor(v));
        (primitive(out), primitive(lse))
    }

    fn causal_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        out: FlexTensor,
        lse: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let (dq, dk, dv) = reference::causal_attention_backward(
            tensor(q),
            tensor(k),
            tensor(v),
            tensor(out),
            tensor(lse),
            tensor(grad),
        );
        (primitive(dq), primitive(dk), primitive(dv))
    }

    fn causal_attention(q: FlexTensor, k: FlexTensor, v: FlexTensor) -> FlexTensor {
        let qs = q.layout().shape().clone();
        let ks = k.layout().shape().clone();
        let (qd, kd) = (qs.as_slice(), ks.as_slice());
        let dims = [qd[0], qd[1], qd[2], qd[3]];
        let (t, kvh) = (kd[1], kd[2]);
        assert!(
            kd[0] == qd[0]
                && kd[3] == qd[3]
                && v.layout().shape() == &ks
                && kvh > 0
                && qd[2] % kvh == 0
                && t >= qd[1],
            "causal_attention: q {qd:?}, k {kd:?}, v {:?} (expected k = v = [batch, keys ≥ \
             queries, kv_heads dividing heads, head_dim])",
            v.layout().shape().as_slice()
        );
        with_slice(&q, |q| {
            with_slice(&k, |k| {
                with_slice(&v, |v| {
                    output_like(qs.clone(), |out| {
                        causal_attention_f32(q, k, v, dims, [t, kvh], out)
                    })
                })
            })
        })
    }

    fn rms_norm(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        let shape = x.layout().shape().clone();
        let d = shape.as_slice().last().copied().unwrap_or(1).max(1);
        let (_, w) = contiguous_f32(&weight);
        let eps = eps as f32;
        with_slice(&x, |xs| {
            output_like(shape, |out| {
                out.par_chunks_mut(d)
                    .zip(xs.par_chunks(d))
                    .with_min_len(MIN_ROWS_PER_TASK)
                    .for_each(|(o, row)| {
                        // Same order as HF: mean of squares in f32, then x * rsqrt(var + eps), then * w.
                        let sum: f32 = row.iter().map(|v| v * v).sum();
                        let inv = 1.0 / (sum / d as f32 + eps).sqrt();
                        for ((o, v), w) in o.iter_mut().zip(row).zip(&w) {
                            *o = w * (v * inv);
                        }
                    });
            })
        })
    }

    fn rotary(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        let shape = x.layout().shape().clone();
        let dims = shape.as_slice();
        let [h, hd] = [dims[2], dims[3]];
        let half = hd / 2;
        let (_, cos) = contiguous_f32(&cos);
        let (_, sin) = contiguous_f32(&sin);
        with_slice(&x, |xs| {
            output_like(shape, |out| {
                // One chunk = all heads of one (batch, position).
                out.par_chunks_mut(h * hd)
                    .zip(xs.par_chunks(h * hd))
                    .enumerate()
                    .with_min_len(MIN_ROWS_PER_TASK)
                    .for_each(|(pos, (o, x))| {
                        let c = &cos[pos * half..(pos + 1) * half];
                        let sn = &sin[pos * half..(pos + 1) * half];
                        for head in 0..h {
                            let xh = &x[head * hd..(head + 1) * hd];
                            let oh = &mut o[head * hd..(head + 1) * hd];
                            for i in 0..half {
                                let (x1, x2) = (xh[i], xh[i + half]);
                                oh[i] = x1 * c[i] - x2 * sn[i];
                                oh[i + half] = x2 * c[i] + x1 * sn[i];
                            }
                        }
                    });
            })
        })
    }
}

/// See [`FusedOps::causal_attention`]. Query `i` sits at key position `t - s + i` and sees keys
/// `0..=t - s + i` (bottom-right aligned, as in cached decoding).
///
/// A task takes a block of query rows of one head: its scores are one gemm against the visible
/// keys only (future key blocks are never computed, which halves a causal prefill compared with
/// masking a full score matrix), then a row softmax, then one gemm with the values. Keys and
/// values are read in place through strides: grouped-query heads share them without copies.
fn causal_attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    [b, s, h, d]: [usize; 4],
    [t, kvh]: [usize; 2],
    out: &mut [f32],
) {
    const BLOCK: usize = 64;
    let rep = h / kvh;
    let offset = t - s;
    let blocks = s.div_ceil(BLOCK);
    let scale = 1.0 / (d as f32).sqrt();
    let results: Vec<(usize, usize, usize, Vec<f32>)> = (0..b * h * blocks)
        .into_par_iter()
        .map(|task| {
            let (bh, blk) = (task / blocks, task % blocks);
            let (bi, head) = (bh / h, bh % h);
            let g = head / rep;
            let (i0, i1) = (blk * BLOCK, ((blk + 1) * BLOCK).min(s));
            let rows = i1 - i0;
            let visible = offset + i1;
            let mut scores = vec![0.0f32; rows * visible];
            let q0 = ((bi * s + i0) * h + head) * d;
            let kv0 = (bi * t * kvh + g) * d;
            let kv_row = (kvh * d) as isize;
            #[allow(unsafe_code)]
            // SAFETY: every pointer/stride pair addresses only inside its slice: `q` rows
            // `i0..i1` of this head ([rows, d], row stride h·d), `k`/`v` positions `0..visible`
            // of kv head `g` ([visible, d], row stride kvh·d, visible ≤ t), and `scores`
            // ([rows, visible], contiguous) which this task owns.
            unsafe {
                gemm::gemm(
                    rows,
                    visible,
                    d,
                    scores.as_mut_ptr(),
                    1,
                    visible as isize,
                    false,
                    q[q0..].as_ptr(),
                    1,
                    (h * d) as isize,
                    k[kv0..].as_ptr(),
                    kv_row,
                    1,
                    0.0,
                    scale,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            for r in 0..rows {
                let row = &mut scores[r * visible..(r + 1) * visible];
                let (seen, future) = row.split_at_mut(offset + i0 + r + 1);
                future.iter_mut().for_each(|x| *x = 0.0);
                let max = seen.iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0.0f32;
                for x in seen.iter_mut() {
                    *x = (*x - max).exp();
                    sum += *x;
                }
                let inv = 1.0 / sum;
                seen.iter_mut().for_each(|x| *x *= inv);
            }
            let mut o = vec![0.0f32; rows * d];
            #[allow(unsafe_code)]
            // SAFETY: `scores` is [rows, visible] contiguous, `v` positions `0..visible` of kv
            // head `g` as above, `o` is this task's [rows, d] contiguous buffer.
            unsafe {
                gemm::gemm(
                    rows,
                    d,
                    visible,
                    o.as_mut_ptr(),
                    1,
                    d as isize,
                    false,
                    scores.as_ptr(),
                    1,
                    visible as isize,
                    v[kv0..].as_ptr(),
                    1,
                    kv_row,
                    0.0,
                    1.0,
                    false,
                    false,
                    false,
                    gemm::Parallelism::None,
                );
            }
            (bi, head, i0, o)
        })
        .collect();
    for (bi, head, i0, o) in results {
        for (r, row) in o.chunks_exact(d).enumerate() {
            let dst = ((bi * s + i0 + r) * h + head) * d;
            out[dst..dst + d].copy_from_slice(row);
        }
    }
}

#[cfg(test)]
fn rms_norm<const D: usize>(x: Tensor<D>, weight: Tensor<1>, eps: f64) -> Tensor<D> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::rms_norm(
        x.into_dispatch(),
        weight.into_dispatch(),
        eps,
    ))
}

#[cfg(test)]
fn causal_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::causal_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
    ))
}

#[cfg(test)]
fn rotary(x: Tensor<4>, cos: Tensor<3>, sin: Tensor<3>) -> Tensor<4> {
    Tensor::from_dispatch(<burn::backend::Dispatch as FusedOps>::rotary(
        x.into_dispatch(),
        cos.into_dispatch(),
        sin.into_dispatch(),
    ))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::super::{KernelPath, kernel_path, reference};
    use burn::tensor::{Device, Distribution, Tensor, Tolerance};
    use proptest::prelude::*;

    fn device() -> Device {
        Device::flex()
    }

    #[test]
    fn flex_f32_takes_the_fused_path_and_autodiff_the_reference() {
        let d = device();
        assert_eq!(kernel_path(&d, burn::tensor::DType::F32), KernelPath::Fused);
        assert_eq!(
            kernel_path(&d.clone().autodiff(), burn::tensor::DType::F32),
            KernelPath::Reference
        );
        assert_eq!(
            kernel_path(&d, burn::tensor::DType::BF16),
            KernelPath::Reference
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn fused_rms_norm_matches_reference(rows in 1usize..9, d in 1usize..80, eps in 1e-6f64..1e-2) {
            let dev = device();
            let x = Tensor::<3>::random([1, rows, d], Distribution::Normal(0.0, 3.0), &dev);
            let w = Tensor::<1>::random([d], Distribution::Normal(1.0, 0.5), &dev);
            let fused = super::rms_norm(x.clone(), w.clone(), eps);
            let reference = reference::rms_norm(x, w, eps);
            fused.into_data().assert_approx_eq::<f32>(&reference.into_data(), Tolerance::absolute(1e-5));
        }

        #[test]
        fn fused_rotary_matches_reference(b in 1usize..3, s in 1usize..6, h in 1usize..4, half in 1usize..9) {
            let dev = device();
            let hd = half * 2;
            let x = Tensor::<4>::random([b, s, h, hd], Distribution::Normal(0.0, 1.0), &dev);
            let angle = Tensor::<3>::random([b, s, half], Distribution::Uniform(-6.0, 6.0), &dev);
            let (cos, sin) = (angle.clone().cos(), angle.sin());
            // A non-contiguous input exercises the copy path.
            let xt = x.clone().swap_dims(1, 2).swap_dims(1, 2);
            let fused = super::rotary(xt, cos.clone(), sin.clone());
            let reference = reference::rotary(x, cos, sin);
            fused.into_data().assert_approx_eq::<f32>(&reference.into_data(), Tolerance::absolute(1e-5));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        #[test]
        fn fused_causal_attention_matches_reference(
            b in 1usize..3, s in 1usize..21, past in 0usize..20, kvh in 1usize..3, rep in 1usize..4, d in 1usize..9,
        ) {
            let dev = device();
            let (h, t, d) = (kvh * rep, s + past, d * 2);
            let q = Tensor::<4>::random([b, s, h, d], Distribution::Normal(0.0, 1.0), &dev);
            let k = Tensor::<4>::random([b, t, kvh, d], Distribution::Normal(0.0, 1.0), &dev);
            let v = Tensor::<4>::random([b, t, kvh, d], Distribution::Normal(0.0, 1.0), &dev);
            let fused = super::causal_attention(q.clone(), k.clone(), v.clone());
            let reference = reference::causal_attention(q, k, v);
            fused.into_data().assert_approx_eq::<f32>(&reference.into_data(), Tolerance::absolute(1e-5));
        }
    }

    #[test]
    fn fused_causal_attention_matches_reference_across_query_blocks() {
        let dev = device();
        let (b, s, past, kvh, h, d) = (2, 150, 7, 3, 9, 64);
        let q = Tensor::<4>::random([b, s, h, d], Distribution::Normal(0.0, 1.0), &dev);
        let k = Tensor::<4>::random([b, s + past, kvh, d], Distribution::Normal(0.0, 1.0), &dev);
        let v = Tensor::<4>::random([b, s + past, kvh, d], Distribution::Normal(0.0, 1.0), &dev);
        let fused = super::causal_attention(q.clone(), k.clone(), v.clone());
        let reference = reference::causal_attention(q, k, v);
        fused
            .into_data()
            .assert_approx_eq::<f32>(&reference.into_data(), Tolerance::absolute(1e-4));
    }

    #[test]
    fn rotary_by_zero_angle_is_identity_and_preserves_pair_norms() {
        let dev = device();
        let x = Tensor::<4>::random([1, 3, 2, 8], Distribution::Normal(0.0, 1.0), &dev);
        let zeros = Tensor::<3>::zeros([1, 3, 4], &dev);
        let out = super::rotary(x.clone(), zeros.clone().cos(), zeros.sin());
        out.into_data()
            .assert_approx_eq::<f32>(&x.clone().into_data(), Tolerance::absolute(1e-7));
        // A rotation keeps ‖(x_i, x_{i+half})‖.
        let angle = Tensor::<3>::random([1, 3, 4], Distribution::Uniform(-3.0, 3.0), &dev);
        let out = super::rotary(x.clone(), angle.clone().cos(), angle.sin());
        let norms = |t: Tensor<4>| {
            let a = t.clone().narrow(3, 0, 4);
            let b = t.narrow(3, 4, 4);
            (a.powi_scalar(2) + b.powi_scalar(2)).into_data()
        };
        norms(out).assert_approx_eq::<f32>(&norms(x), Tolerance::absolute(1e-5));
    }
}
