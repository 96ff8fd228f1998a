//! The fused AdamW update against burn's tensor-op composition: the same bits, step after
//! step, and inputs that other tensors still share are left untouched.

mod common;

use burn::tensor::{Device, Tensor, TensorData};
use proptest::prelude::*;
use temper_backend::kernels::{AdamWStep, adamw_update, reference_adamw_update};

/// [`common::values`] with exact zeros and signed zeros mixed in (the sign of zero is where a
/// sloppy "first step" shortcut would differ from burn).
fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut v = common::values(n, seed, scale);
    for (i, x) in v.iter_mut().enumerate() {
        match i % 97 {
            0 => *x = 0.0,
            1 => *x = -0.0,
            _ => {}
        }
    }
    v
}

fn bits<const D: usize>(t: &Tensor<D>) -> Vec<u32> {
    t.to_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
        .into_iter()
        .map(f32::to_bits)
        .collect()
}

fn tensor(data: Vec<f32>, shape: [usize; 2], device: &Device) -> Tensor<2> {
    Tensor::from_data(TensorData::new(data, shape), device)
}

/// Runs `steps` updates both ways from the same start and compares every output bit for bit.
fn check(shape: [usize; 2], steps: usize, lr: f64, weight_decay: f32, seed: u64) {
    let device = Device::flex();
    let n = shape[0] * shape[1];
    let start = tensor(values(n, seed, 1.0), shape, &device);
    let (mut fused_p, mut fused_m) = (start.clone(), None);
    let (mut ref_p, mut ref_m) = (start, None);
    for time in 1..=steps {
        let scale = if time % 3 == 0 { 1e-3 } else { 2.0 };
        let grad = tensor(
            values(n, seed ^ (time as u64 * 7919), scale),
            shape,
            &device,
        );
        let step = AdamWStep {
            lr: lr / time as f64,
            beta_1: 0.9,
            beta_2: 0.999,
            epsilon: 1e-8,
            weight_decay,
            time,
        };
        let (p, m, v) = reference_adamw_update(&step, ref_p, grad.clone(), ref_m);
        ref_p = p;
        ref_m = Some((m, v));
        let (p, m, v) = adamw_update(&step, fused_p, grad, fused_m);
        fused_p = p;
        fused_m = Some((m, v));
        let (rm, rv) = ref_m.as_ref().expect("moments");
        let (fm, fv) = fused_m.as_ref().expect("moments");
        assert_eq!(bits(&fused_p), bits(&ref_p), "param after step {time}");
        assert_eq!(bits(fm), bits(rm), "first moment after step {time}");
        assert_eq!(bits(fv), bits(rv), "second moment after step {time}");
    }
}

#[test]
fn fused_adamw_is_bit_identical_to_burns_composition() {
    check([3, 5], 4, 1e-2, 0.0, 1);
    check([1, 1], 3, 1e-3, 0.1, 2);
    // More elements than one parallel chunk, with weight decay.
    check([257, 513], 3, 5e-4, 0.01, 3);
}

#[test]
fn shared_inputs_are_not_written_in_place() {
    let device = Device::flex();
    let shape = [33, 7];
    let param = tensor(values(231, 5, 1.0), shape, &device);
    let grad = tensor(values(231, 6, 1.0), shape, &device);
    let (m0, v0) = (
        tensor(values(231, 7, 0.1), shape, &device),
        tensor(
            values(231, 8, 0.1).iter().map(|x| x.abs()).collect(),
            shape,
            &device,
        ),
    );
    let before = [bits(&param), bits(&m0), bits(&v0)];
    let step = AdamWStep {
        lr: 0.1,
        beta_1: 0.9,
        beta_2: 0.99,
        epsilon: 1e-8,
        weight_decay: 0.5,
        time: 2,
    };
    // `param`, `m0`, `v0` keep a handle: the update must copy, not write through it.
    let (p, m, v) = adamw_update(
        &step,
        param.clone(),
        grad.clone(),
        Some((m0.clone(), v0.clone())),
    );
    assert_eq!([bits(&param), bits(&m0), bits(&v0)], before);
    let (rp, rm, rv) = reference_adamw_update(&step, param, grad, Some((m0, v0)));
    assert_eq!(bits(&p), bits(&rp));
    assert_eq!(bits(&m), bits(&rm));
    assert_eq!(bits(&v), bits(&rv));
}

#[test]
fn a_transposed_parameter_is_updated_in_its_logical_order() {
    let device = Device::flex();
    // A strided view: the fused path must copy it to row-major order, not update the storage
    // order as if it were the tensor's.
    let param = tensor(values(40, 9, 1.0), [5, 8], &device).transpose();
    let grad = tensor(values(40, 10, 1.0), [8, 5], &device);
    let step = AdamWStep {
        lr: 0.01,
        beta_1: 0.9,
        beta_2: 0.999,
        epsilon: 1e-8,
        weight_decay: 0.0,
        time: 1,
    };
    let (p, m, v) = adamw_update(&step, param.clone(), grad.clone(), None);
    let (rp, rm, rv) = reference_adamw_update(&step, param, grad, None);
    assert_eq!(bits(&p), bits(&rp));
    assert_eq!(bits(&m), bits(&rm));
    assert_eq!(bits(&v), bits(&rv));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]
    #[test]
    fn fused_adamw_matches_on_random_shapes(
        rows in 1usize..70,
        cols in 1usize..70,
        steps in 1usize..4,
        lr in 1e-5f64..1.0,
        weight_decay in prop::sample::select(vec![0.0f32, 0.01, 0.3]),
        seed in 0u64..1000,
    ) {
        check([rows, cols], steps, lr, weight_decay, seed);
    }
}
