//! The one backend layer every Temper crate shares.
//!
//! * Cargo features choose which burn backends are compiled in: `flex` (pure-Rust CPU, the
//!   default), `wgpu` (Vulkan/Metal/DX12) and `cuda` (kernels compiled by NVRTC at run time;
//!   builds offline through the workspace's cubecl-llvm stand-in, `vendor/cubecl-llvm`).
//! * [`DeviceSpec`] parses `cpu`, `wgpu`, `wgpu:N`, `cuda:N` into a burn [`Device`], with or
//!   without autodiff; before a CUDA device it checks that the driver, NVRTC and the CUDA
//!   headers are there ([`CudaMissing`]).
//! * [`FloatPrecision`] is the compute dtype policy (`f32`, `bf16`, `f16`) and checks that a
//!   device supports it; [`TrainPrecision`] is the training policy (`f32`, `bf16`,
//!   `bf16-mixed`, `f16-mixed`, PyTorch AMP's meanings) and [`autocast`] the scope that rounds
//!   the products' operands to its half type.
//! * [`kernels`] is where the hot fused ops of the Llama family (RMSNorm, half-split rotary
//!   embedding, SwiGLU, causal GQA attention) are chosen per backend through one burn backend
//!   extension ([`kernels::FusedOps`]): `#[cube]` kernels with custom backward nodes on the
//!   CubeCL backends (feature `gpu-kernels`, on with `wgpu`/`cuda`), fused CPU kernels on Flex,
//!   the portable tensor-op reference elsewhere. Model code only calls the wrappers in
//!   [`kernels`], so kernels can be added here without touching it.
//! * [`alloc::retain_freed_memory`] is the allocator policy binaries set for long CPU runs
//!   (freed activation buffers reused instead of re-faulted from the OS every step).

pub use burn;
pub use burn::tensor::Device;

pub mod alloc;
// The probe runs only with `cuda`; compiled (and tested) in every build.
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
mod cuda_probe;
mod device;
mod dtype;
mod error;
pub mod kernels;
mod precision;
pub mod quant;

pub use cuda_probe::CudaMissing;
pub use device::{BackendKind, DeviceSpec};
pub use dtype::FloatPrecision;
pub use error::BackendError;
pub use precision::{AutocastGuard, HalfType, TrainPrecision, autocast, autocast_type};
pub use quant::QuantizedWeight;
pub use temper_formats::quant::QuantType;
