//! The LLVM compiler's types, as cubecl-cuda's `compiler.rs` names them; each entry point fails
//! with [`LLVM_MISSING`](crate::LLVM_MISSING).

use cubecl_core::CompilationError;
use cubecl_core::environment::backtrace::BackTrace;
use cubecl_core::ir::attributes::BufferIOAttr;
use cubecl_core::ir::nvidia::SmArch;
use cubecl_core::prelude::KernelDefinition;

use crate::LlvmTarget;
use crate::nvptx::ptx_version::PtxVersion;

pub mod lowered_features {
    //! Narrowing a device's advertised features to what LLVM lowers: called by cubecl-cuda at
    //! device start only when the LLVM compiler is selected.

    use cubecl_core::ir::DeviceProperties;

    /// The GPU a device's features would be narrowed for.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub enum GpuTarget {
        Nvptx,
    }

    /// # Panics
    /// Always, with [`LLVM_MISSING`](crate::LLVM_MISSING): reaching this means cubecl-cuda chose
    /// its LLVM compiler. It runs while the device is created, so the message comes before any
    /// kernel does.
    pub fn restrict_features(_props: &mut DeviceProperties, _target: GpuTarget) {
        panic!("{}", crate::LLVM_MISSING);
    }
}

/// The LLVM kernel compiler. It has nothing to compile with: [`PlironCompiler::compile`] fails.
#[derive(Clone, Debug, Default)]
pub struct PlironCompiler {
    pub target: LlvmTarget,
}

/// The options cubecl-cuda fills in for the LLVM compiler (the fields it sets).
#[derive(Clone, Debug, Default)]
pub struct PlironOptions {
    /// The AMDGPU architecture in the real crate; no AMD target here.
    pub arch: Option<core::convert::Infallible>,
    pub sm_arch: Option<SmArch>,
    pub ptx_version: Option<PtxVersion>,
    pub grid_constants: bool,
}

/// A compiled PTX module. Cannot be constructed (the private field is uninhabited): nothing here
/// produces PTX.
#[derive(Clone, Debug)]
pub struct NvptxModule {
    pub ptx: Vec<core::ffi::c_char>,
    pub entrypoint: String,
    pub ir: String,
    pub shared_memory_size: usize,
    pub io: Vec<BufferIOAttr>,
    _never: core::convert::Infallible,
}

/// What the LLVM compiler returns.
#[derive(Clone, Debug)]
pub enum PlironArtifact {
    NvptxCode(NvptxModule),
}

impl PlironCompiler {
    /// # Errors
    /// Always a [`CompilationError::Generic`] carrying [`LLVM_MISSING`](crate::LLVM_MISSING).
    pub fn compile(
        &mut self,
        _kernel: KernelDefinition,
        _options: &PlironOptions,
    ) -> Result<PlironArtifact, CompilationError> {
        Err(CompilationError::Generic {
            reason: crate::LLVM_MISSING.to_string(),
            backtrace: BackTrace::capture(),
        })
    }

    /// The language tag of the LLVM compiler's output, as the real crate names it for NVPTX.
    pub fn lang_tag(&self) -> &'static str {
        "llvm"
    }
}
