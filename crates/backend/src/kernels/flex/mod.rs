//! Fused CPU kernels for burn's Flex backend, forward and backward.
//!
//! burn-flex runs element-wise ops on one thread and as separate passes; these kernels read
//! each input once, write each output once, split the work over rayon and vectorise through
//! [`simd`]. Under autodiff the custom nodes of [`super::autodiff`] call the backward entries
//! here, so a training step's RMSNorm, SwiGLU and attention run fused and in parallel in both
//! directions; so does the LM head's tiled log-softmax ([`lm_head`]), whose tile products
//! also read bf16/f16 weights in place and round to autocast's half type. Inputs of another
//! dtype than f32 take the tensor-op reference (the LM head: f64, through its tile loop,
//! [`super::lm_head`]).

mod adamw;
mod attention;
mod block_dot;
mod gemm;
mod half_gemm;
mod lm_head;
mod matmul;
mod norm;
mod quant_matmul;
mod simd;
mod swiglu;

use std::mem::MaybeUninit;

use burn::backend::Flex;
use burn::backend::flex::FlexTensor;
use burn::tensor::{DType, Shape, Tensor, TensorData};
use rayon::prelude::*;

use super::FusedOps;
use super::lm_head::VocabTiling;
use super::ops::LmHeadOutput;
use super::reference;
use crate::HalfType;

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

/// A Flex f32 tensor as one owned, contiguous buffer that can be written in place: moved as it
/// is when it already is one, copied otherwise (shared storage, an offset or strides).
fn owned_contiguous(mut t: FlexTensor) -> FlexTensor {
    let n = t.layout().shape().num_elements();
    let in_place = t.is_unique()
        && t.layout().contiguous_offsets() == Some((0, n))
        && t.storage::<f32>().len() == n;
    if in_place {
        return t;
    }
    let (shape, data) = contiguous_f32(&t);
    t = FlexTensor::from_data(TensorData::new(data, shape));
    t
}

/// [`crate::kernels::adamw_update`] on Flex: `param`, `m`, `v` updated in place.
pub(super) fn adamw_update<const D: usize>(
    step: &crate::kernels::AdamWStep,
    param: Tensor<D>,
    grad: Tensor<D>,
    moments: Option<(Tensor<D>, Tensor<D>)>,
) -> (Tensor<D>, Tensor<D>, Tensor<D>) {
    let mut param = owned_contiguous(primitive(param));
    let grad = primitive(grad);
    let first = moments.is_none();
    let (mut m, mut v) = match moments {
        Some((m, v)) => (
            owned_contiguous(primitive(m)),
            owned_contiguous(primitive(v)),
        ),
        None => {
            let shape = param.layout().shape().clone();
            (
                output_like(shape.clone(), |_| {}),
                output_like(shape, |_| {}),
            )
        }
    };
    with_slice(&grad, |g| {
        adamw::adamw(
            step,
            first,
            g,
            param.storage_mut::<f32>(),
            m.storage_mut::<f32>(),
            v.storage_mut::<f32>(),
        );
    });
    (tensor(param), tensor(m), tensor(v))
}

/// Minimum rows per rayon task: below this the split costs more than it saves.
const MIN_ROWS_PER_TASK: usize = 8;

fn all_f32(ts: &[&FlexTensor]) -> bool {
    ts.iter().all(|t| t.dtype() == DType::F32)
}

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

/// Runs `f` on the tensor's elements in row-major order, copying only when it is strided.
fn with_slice<R>(t: &FlexTensor, f: impl FnOnce(&[f32]) -> R) -> R {
    if let Some(s) = t.as_slice::<f32>() {
        f(s)
    } else {
        let (_, data) = contiguous_f32(t);
        f(&data)
    }
}

/// A new f32 tensor of `shape` filled by `fill`. The buffer is handed to burn as it is:
/// `FlexTensor::empty` would copy a fresh allocation once more (to re-align it), on this
/// thread, before anything is computed.
fn output_like(shape: Shape, fill: impl FnOnce(&mut [f32])) -> FlexTensor {
    let mut data = vec![0.0f32; shape.num_elements()];
    fill(&mut data);
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// A new f32 tensor of `shape` whose every element `fill` writes: the buffer is never
/// zero-filled (a serial `memset` on the calling thread — for SwiGLU's `[tokens, 1536]`
/// outputs, 6 MB a layer that the kernel overwrites anyway).
///
/// `fill` must write every element; the kernels passed here assert their lengths and
/// write each output element exactly once.
fn fresh_output(shape: Shape, fill: impl FnOnce(&mut [MaybeUninit<f32>])) -> FlexTensor {
    let n = shape.num_elements();
    let mut data = Vec::with_capacity(n);
    fill(&mut data.spare_capacity_mut()[..n]);
    #[allow(unsafe_code)]
    // SAFETY: `fill` initialised all `n` elements (the contract above).
    unsafe {
        data.set_len(n)
    };
    FlexTensor::from_data(TensorData::new(data, shape))
}

/// [`fresh_output`] for two outputs.
fn two_fresh_outputs(
    [a, b]: [Shape; 2],
    fill: impl FnOnce(&mut [MaybeUninit<f32>], &mut [MaybeUninit<f32>]),
) -> (FlexTensor, FlexTensor) {
    let (na, nb) = (a.num_elements(), b.num_elements());
    let (mut da, mut db) = (Vec::with_capacity(na), Vec::with_capacity(nb));
    fill(
        &mut da.spare_capacity_mut()[..na],
        &mut db.spare_capacity_mut()[..nb],
    );
    #[allow(unsafe_code)]
    // SAFETY: `fill` initialised all elements of both (the contract of `fresh_output`).
    unsafe {
        da.set_len(na);
        db.set_len(nb);
    }
    (
        FlexTensor::from_data(TensorData::new(da, a)),
        FlexTensor::from_data(TensorData::new(db, b)),
    )
}

fn two_outputs(
    [a, b]: [Shape; 2],
    fill: impl FnOnce(&mut [f32], &mut [f32]),
) -> (FlexTensor, FlexTensor) {
    let mut da = vec![0.0f32; a.num_elements()];
    let mut db = vec![0.0f32; b.num_elements()];
    fill(&mut da, &mut db);
    (
        FlexTensor::from_data(TensorData::new(da, a)),
        FlexTensor::from_data(TensorData::new(db, b)),
    )
}

/// A 2-D f32 tensor as a strided view of its storage, without copying; `None` for other
/// ranks or dtypes and for negative strides.
fn view_2d(t: &FlexTensor) -> Option<(gemm::View<'_>, [usize; 2])> {
    let layout = t.layout();
    let (dims, strides) = (layout.shape().as_slice(), layout.strides());
    if t.dtype() != DType::F32 || dims.len() != 2 || strides.iter().any(|s| *s < 0) {
        return None;
    }
    let data = &t.storage::<f32>()[layout.start_offset()..];
    Some((
        gemm::View::new(data, strides[0] as usize, strides[1] as usize),
        [dims[0], dims[1]],
    ))
}

/// The shapes of an attention call, checked: a kernel given fewer keys than queries or KV
/// heads that do not divide the heads would read out of bounds. `half`: the products' half
/// type (autocast).
fn attention_dims(
    q: &FlexTensor,
    k: &FlexTensor,
    v: &FlexTensor,
    half: Option<HalfType>,
) -> attention::Dims {
    let (qs, ks) = (q.layout().shape(), k.layout().shape());
    let (qd, kd) = (qs.as_slice(), ks.as_slice());
    let ok = qd.len() == 4
        && kd.len() == 4
        && kd[0] == qd[0]
        && kd[3] == qd[3]
        && v.layout().shape() == ks
        && kd[2] > 0
        && qd[2] % kd[2] == 0
        && kd[1] >= qd[1];
    assert!(
        ok,
        "causal_attention: q {qd:?}, k {kd:?}, v {:?} (expected k = v = [batch, keys ≥ \
         queries, kv_heads dividing heads, head_dim])",
        v.layout().shape().as_slice()
    );
    attention::Dims {
        b: qd[0],
        s: qd[1],
        h: qd[2],
        d: qd[3],
        t: kd[1],
        kvh: kd[2],
        half,
    }
}

impl FusedOps for Flex {
    fn rms_norm(x: FlexTensor, weight: FlexTensor, eps: f64) -> FlexTensor {
        if !all_f32(&[&x, &weight]) {
            return primitive::<2>(reference::rms_norm(tensor(x), tensor(weight), eps));
        }
        let (_, w) = contiguous_f32(&weight);
        with_slice(&x, |xs| {
            fresh_output(x.layout().shape().clone(), |out| {
                norm::rms_norm(xs, &w, eps as f32, out)
            })
        })
    }

    fn rms_norm_backward(
        x: FlexTensor,
        weight: FlexTensor,
        grad: FlexTensor,
        eps: f64,
    ) -> (FlexTensor, FlexTensor) {
        if !all_f32(&[&x, &weight, &grad]) {
            let (dx, dw) =
                reference::rms_norm_backward(tensor(x), tensor(weight), tensor(grad), eps);
            return (primitive(dx), primitive(dw));
        }
        let (w_shape, w) = contiguous_f32(&weight);
        with_slice(&x, |xs| {
            with_slice(&grad, |gs| {
                let mut dw = vec![0.0f32; w.len()];
                let dx = fresh_output(x.layout().shape().clone(), |dx| {
                    norm::rms_norm_backward(xs, &w, gs, eps as f32, dx, &mut dw)
                });
                (dx, FlexTensor::from_data(TensorData::new(dw, w_shape)))
            })
        })
    }

    fn rotary(x: FlexTensor, cos: FlexTensor, sin: FlexTensor) -> FlexTensor {
        if !all_f32(&[&x, &cos, &sin]) {
            return primitive(reference::rotary(tensor(x), tensor(cos), tensor(sin)));
        }
        let shape = x.layout().shape().clone();
        let dims = shape.as_slice();
        let [h, hd] = [dims[2], dims[3]];
        let half = hd / 2;
        let (_, cos) = contiguous_f32(&cos);
        let (_, sin) = contiguous_f32(&sin);
        // Every output element is written below only for an even head size.
        assert!(
            hd % 2 == 0 && cos.len() == sin.len() && cos.len() * 2 == shape.num_elements() / h,
            "rotary: x {dims:?} against {} cos and {} sin values",
            cos.len(),
            sin.len()
        );
        with_slice(&x, |xs| {
            fresh_output(shape.clone(), |out| {
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
                                oh[i].write(x1 * c[i] - x2 * sn[i]);
                                oh[i + half].write(x2 * c[i] + x1 * sn[i]);
                            }
                        }
                    });
            })
        })
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
        if !all_f32(&[&gate, &up]) || gate.layout().shape() != up.layout().shape() {
            return primitive::<1>(reference::swiglu(tensor(gate), tensor(up)));
        }
        with_slice(&gate, |g| {
            with_slice(&up, |u| {
                fresh_output(gate.layout().shape().clone(), |out| {
                    swiglu::swiglu(g, u, out)
                })
            })
        })
    }

    fn swiglu_backward(
        gate: FlexTensor,
        up: FlexTensor,
        grad: FlexTensor,
    ) -> (FlexTensor, FlexTensor) {
        let shape = gate.layout().shape().clone();
        if !all_f32(&[&gate, &up, &grad])
            || up.layout().shape() != &shape
            || grad.layout().shape() != &shape
        {
            let (dg, du) = reference::swiglu_backward::<1>(tensor(gate), tensor(up), tensor(grad));
            return (primitive(dg), primitive(du));
        }
        with_slice(&gate, |g| {
            with_slice(&up, |u| {
                with_slice(&grad, |gr| {
                    two_fresh_outputs([shape.clone(), shape.clone()], |dg, du| {
                        swiglu::swiglu_backward(g, u, gr, dg, du)
                    })
                })
            })
        })
    }

    fn causal_attention(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        half: Option<HalfType>,
    ) -> FlexTensor {
        let dims = attention_dims(&q, &k, &v, half);
        if !all_f32(&[&q, &k, &v]) {
            return primitive(reference::causal_attention(tensor(q), tensor(k), tensor(v)));
        }
        with_slice(&q, |qs| {
            with_slice(&k, |ks| {
                with_slice(&v, |vs| {
                    output_like(q.layout().shape().clone(), |out| {
                        attention::forward(qs, ks, vs, dims, out, None)
                    })
                })
            })
        })
    }

    fn causal_attention_lse(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        half: Option<HalfType>,
    ) -> (FlexTensor, FlexTensor) {
        let dims = attention_dims(&q, &k, &v, half);
        if !all_f32(&[&q, &k, &v]) {
            let (out, lse) = reference::causal_attention_lse(tensor(q), tensor(k), tensor(v));
            return (primitive(out), primitive(lse));
        }
        let lse_shape = Shape::new([dims.b, dims.h, dims.s]);
        with_slice(&q, |qs| {
            with_slice(&k, |ks| {
                with_slice(&v, |vs| {
                    two_outputs([q.layout().shape().clone(), lse_shape], |out, lse| {
                        attention::forward(qs, ks, vs, dims, out, Some(lse))
                    })
                })
            })
        })
    }

    fn causal_attention_backward(
        q: FlexTensor,
        k: FlexTensor,
        v: FlexTensor,
        out: FlexTensor,
        lse: FlexTensor,
        grad: FlexTensor,
        half: Option<HalfType>,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let dims = attention_dims(&q, &k, &v, half);
        if !all_f32(&[&q, &k, &v, &out, &lse, &grad]) {
            let (dq, dk, dv) = reference::causal_attention_backward(
                tensor(q),
                tensor(k),
                tensor(v),
                tensor(out),
                tensor(lse),
                tensor(grad),
            );
            return (primitive(dq), primitive(dk), primitive(dv));
        }
        let (q_shape, k_shape) = (q.layout().shape().clone(), k.layout().shape().clone());
        let mut dq = vec![0.0f32; q_shape.num_elements()];
        let mut dk = vec![0.0f32; k_shape.num_elements()];
        let mut dv = vec![0.0f32; k_shape.num_elements()];
        with_slice(&q, |qs| {
            with_slice(&k, |ks| {
                with_slice(&v, |vs| {
                    with_slice(&out, |os| {
                        with_slice(&lse, |ls| {
                            with_slice(&grad, |gs| {
                                attention::backward(
                                    qs,
                                    ks,
                                    vs,
                                    os,
                                    ls,
                                    gs,
                                    dims,
                                    [&mut dq, &mut dk, &mut dv],
                                )
                            })
                        })
                    })
                })
            })
        });
        (
            FlexTensor::from_data(TensorData::new(dq, q_shape)),
            FlexTensor::from_data(TensorData::new(dk, k_shape.clone())),
            FlexTensor::from_data(TensorData::new(dv, k_shape)),
        )
    }

    fn lm_head_logps(
        hidden: FlexTensor,
        weight: FlexTensor,
        targets: FlexTensor,
        tiling: VocabTiling,
        with_stats: bool,
        keep_logits: bool,
    ) -> LmHeadOutput<Self> {
        lm_head::logps(hidden, weight, targets, tiling, with_stats, keep_logits)
    }

    fn lm_head_logps_backward(
        hidden: FlexTensor,
        weight: FlexTensor,
        targets: FlexTensor,
        lse: FlexTensor,
        grad: FlexTensor,
        logits: FlexTensor,
        tiling: VocabTiling,
        need_hidden: bool,
        need_weight: bool,
    ) -> (Option<FlexTensor>, Option<FlexTensor>) {
        lm_head::logps_backward(
            hidden,
            weight,
            targets,
            lse,
            grad,
            logits,
            tiling,
            need_hidden,
            need_weight,
        )
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
        None,
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
    fn flex_f32_takes_the_fused_path_with_and_without_autodiff() {
        let d = device();
        assert_eq!(kernel_path(&d, burn::tensor::DType::F32), KernelPath::Fused);
        assert_eq!(
            kernel_path(&d.clone().autodiff(), burn::tensor::DType::F32),
            KernelPath::Fused
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
