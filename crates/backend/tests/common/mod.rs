//! Helpers shared by the kernel test binaries (each binary uses some of them).
#![allow(dead_code)]

use burn::tensor::{DType, Device, Tensor, TensorData};
use temper_backend::DeviceSpec;

/// Deterministic values in `[-scale, scale)` (SplitMix64): the same inputs on every machine
/// and backend, without a random-number dependency.
pub fn values(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(1);
    (0..n)
        .map(|_| {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^= z >> 31;
            ((z >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// A tensor of `data` in `shape` on `device`.
pub fn tensor<const D: usize>(data: &[f32], shape: [usize; D], device: &Device) -> Tensor<D> {
    Tensor::from_data(TensorData::new(data.to_vec(), shape), device)
}

/// A tensor's values as f32 on the host, whatever its float dtype.
pub fn host<const D: usize>(t: Tensor<D>) -> Vec<f32> {
    t.cast(DType::F32)
        .into_data()
        .convert::<f32>()
        .try_into_vec::<f32>()
        .expect("f32 data")
}

/// The device the kernel tests run on: `TEMPER_TEST_DEVICE` (`cpu` unless set; CI's lavapipe
/// run sets `wgpu`).
pub fn spec() -> DeviceSpec {
    std::env::var("TEMPER_TEST_DEVICE")
        .unwrap_or_else(|_| "cpu".into())
        .parse()
        .expect("TEMPER_TEST_DEVICE")
}

/// [`spec`]'s device, with or without autodiff.
pub fn test_device(autodiff: bool) -> Device {
    spec()
        .with_autodiff(autodiff)
        .device()
        .expect("test device")
}
