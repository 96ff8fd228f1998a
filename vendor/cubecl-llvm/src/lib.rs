//! Temper's stand-in for `cubecl-llvm` 0.11.3 (see README.md): the names cubecl-cuda's CUDA C++
//! (NVRTC) path refers to, with no LLVM behind them.
//!
//! cubecl-cuda compiles both of its kernel compilers and picks one at run time
//! (`CudaBackend::default()`: C++ when its `cpp` feature is on). Everything the LLVM choice would
//! call fails here with [`LLVM_MISSING`], so a build that forgot `cpp` stops at device start
//! instead of running something else.

pub mod nvptx;
pub mod shared;

pub use shared::{NvptxModule, PlironArtifact, PlironCompiler, PlironOptions};

/// Why every LLVM entry point fails, and the fix.
pub const LLVM_MISSING: &str = "cubecl-cuda selected its LLVM/NVPTX kernel compiler, but this build \
replaces cubecl-llvm with Temper's offline stand-in (vendor/cubecl-llvm), which has no LLVM. \
Turn on cubecl-cuda's `cpp` feature (Temper's `cuda` feature does) so kernels are compiled by \
NVRTC at run time.";

/// The LLVM targets. cubecl-cuda only ever names `Nvptx`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LlvmTarget {
    #[default]
    Cpu,
    Nvptx,
}
