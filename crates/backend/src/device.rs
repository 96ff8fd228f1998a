use std::fmt;
use std::str::FromStr;

use burn::tensor::Device;

use crate::{BackendError, TrainPrecision};

/// Which burn backend a [`DeviceSpec`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackendKind {
    /// Burn's Flex CPU backend (feature `flex`).
    Cpu,
    /// wgpu; `None` is the best adapter wgpu finds (feature `wgpu`).
    Wgpu(Option<usize>),
    /// CUDA device N (feature `cuda`).
    Cuda(usize),
}

/// A device as a user writes it on the command line: `cpu`, `wgpu`, `wgpu:N` or `cuda:N`,
/// plus whether gradients are tracked.
///
/// Parsing checks the form; [`DeviceSpec::device`] checks that the backend is compiled in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeviceSpec {
    pub kind: BackendKind,
    pub autodiff: bool,
}

impl DeviceSpec {
    /// The CPU (Flex) device without autodiff.
    pub const CPU: DeviceSpec = DeviceSpec {
        kind: BackendKind::Cpu,
        autodiff: false,
    };

    /// The same spec with autodiff on or off.
    #[must_use]
    pub fn with_autodiff(self, autodiff: bool) -> Self {
        Self { autodiff, ..self }
    }

    /// Build the burn device.
    ///
    /// # Errors
    /// [`BackendError::NotCompiled`] when the backend's cargo feature is off;
    /// [`BackendError::CudaUnavailable`] for a `cuda:N` device on a machine without the CUDA
    /// driver, NVRTC or headers.
    pub fn device(&self) -> Result<Device, BackendError> {
        let device = self.base_device()?;
        Ok(if self.autodiff {
            device.autodiff()
        } else {
            device
        })
    }

    /// Checks that this device computes in `precision`'s half type
    /// ([`TrainPrecision::check`]), naming the device as written (`wgpu`, `cuda:0`).
    ///
    /// # Errors
    /// [`BackendError::NotCompiled`]/[`BackendError::InvalidDevice`] as [`DeviceSpec::device`];
    /// [`BackendError::UnsupportedPrecision`] (e.g. `bf16-mixed` on wgpu).
    pub fn check_precision(&self, precision: TrainPrecision) -> Result<(), BackendError> {
        let name = format!("`{}`", self.with_autodiff(false));
        precision.check_named(&self.base_device()?, &name)
    }

    fn base_device(&self) -> Result<Device, BackendError> {
        match self.kind {
            BackendKind::Cpu => {
                #[cfg(feature = "flex")]
                {
                    Ok(Device::flex())
                }
                #[cfg(not(feature = "flex"))]
                {
                    Err(self.not_compiled("flex"))
                }
            }
            BackendKind::Wgpu(index) => {
                #[cfg(feature = "wgpu")]
                {
                    wgpu_vulkan_device(index).map_err(|reason| BackendError::InvalidDevice {
                        spec: self.to_string(),
                        reason,
                    })
                }
                #[cfg(not(feature = "wgpu"))]
                {
                    let _ = index;
                    Err(self.not_compiled("wgpu"))
                }
            }
            BackendKind::Cuda(index) => {
                #[cfg(feature = "cuda")]
                {
                    self.check_cuda_runtime()?;
                    Ok(Device::cuda(index))
                }
                #[cfg(not(feature = "cuda"))]
                {
                    let _ = index;
                    Err(self.not_compiled("cuda"))
                }
            }
        }
    }

    /// The driver, NVRTC and headers a CUDA device loads, looked for where cudarc and
    /// cubecl-cuda will (`cuda_probe`), so a miss is an error naming the fix rather than a panic
    /// on a runtime thread.
    #[cfg(feature = "cuda")]
    fn check_cuda_runtime(&self) -> Result<(), BackendError> {
        use crate::cuda_probe::{CudaSearch, SKIP_ENV, probe};
        if std::env::var_os(SKIP_ENV).is_some_and(|v| v == "1") {
            return Ok(());
        }
        let search = CudaSearch::from_system(cubecl_cuda::install::cuda_path());
        let missing = probe(&search);
        if missing.is_empty() {
            Ok(())
        } else {
            Err(BackendError::CudaUnavailable {
                spec: self.with_autodiff(false).to_string(),
                missing,
            })
        }
    }

    #[allow(dead_code)] // unused when every backend feature is on
    fn not_compiled(&self, feature: &'static str) -> BackendError {
        BackendError::NotCompiled {
            spec: self.to_string(),
            feature,
        }
    }
}

/// The wgpu device on the Vulkan API, initialised once per adapter index.
///
/// The API is pinned because without a Vulkan driver wgpu would silently fall back to OpenGL
/// (no f16, no i64): slower, and failing later and obscurely. burn refuses to initialise one
/// runtime twice, so the device is kept.
#[cfg(feature = "wgpu")]
fn wgpu_vulkan_device(index: Option<usize>) -> Result<Device, String> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    use burn::tensor::DeviceKind;
    use burn::tensor::wgpu::WgpuBackend;

    static DEVICES: OnceLock<Mutex<HashMap<Option<usize>, Device>>> = OnceLock::new();
    let mut devices = DEVICES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(device) = devices.get(&index) {
        return Ok(device.clone());
    }
    let kind = match index {
        None => DeviceKind::DefaultDevice,
        Some(i) => DeviceKind::DiscreteGpu(i),
    };
    let device = Device::wgpu_options()
        .device_kind(kind)
        .graphics_api(WgpuBackend::Vulkan)
        .init()
        .map_err(|e| format!("no Vulkan adapter for wgpu ({e}); install a Vulkan driver (Mesa's lavapipe on a CPU-only machine)"))?;
    devices.insert(index, device.clone());
    Ok(device)
}

impl Default for DeviceSpec {
    fn default() -> Self {
        Self::CPU
    }
}

impl FromStr for DeviceSpec {
    type Err = BackendError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = |reason: &str| BackendError::InvalidDevice {
            spec: s.to_string(),
            reason: reason.to_string(),
        };
        let lower = s.trim().to_ascii_lowercase();
        let (name, index) = match lower.split_once(':') {
            Some((name, index)) => {
                let index: usize = index
                    .parse()
                    .map_err(|_| invalid(&format!("`{index}` is not a device index")))?;
                (name.to_string(), Some(index))
            }
            None => (lower.clone(), None),
        };
        let kind = match (name.as_str(), index) {
            ("cpu" | "flex", None) => BackendKind::Cpu,
            ("cpu" | "flex", Some(_)) => return Err(invalid("the CPU device takes no index")),
            ("wgpu" | "gpu", index) => BackendKind::Wgpu(index),
            ("cuda", Some(i)) => BackendKind::Cuda(i),
            ("cuda", None) => BackendKind::Cuda(0),
            ("", _) => return Err(invalid("empty device name")),
            (other, _) => return Err(invalid(&format!("unknown backend `{other}`"))),
        };
        Ok(DeviceSpec {
            kind,
            autodiff: false,
        })
    }
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.kind {
            BackendKind::Cpu => write!(f, "cpu")?,
            BackendKind::Wgpu(None) => write!(f, "wgpu")?,
            BackendKind::Wgpu(Some(i)) => write!(f, "wgpu:{i}")?,
            BackendKind::Cuda(i) => write!(f, "cuda:{i}")?,
        }
        if self.autodiff {
            write!(f, " (autodiff)")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!("cpu".parse::<DeviceSpec>().unwrap().kind, BackendKind::Cpu);
        assert_eq!(
            "wgpu".parse::<DeviceSpec>().unwrap().kind,
            BackendKind::Wgpu(None)
        );
        assert_eq!(
            "wgpu:1".parse::<DeviceSpec>().unwrap().kind,
            BackendKind::Wgpu(Some(1))
        );
        assert_eq!(
            "cuda:0".parse::<DeviceSpec>().unwrap().kind,
            BackendKind::Cuda(0)
        );
        assert_eq!(
            "CUDA:3".parse::<DeviceSpec>().unwrap().kind,
            BackendKind::Cuda(3)
        );
    }

    #[test]
    fn rejects_garbage_with_a_clear_message() {
        let err = "tpu:0".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("unknown backend `tpu`"), "{err}");
        let err = "cuda:x".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("`x` is not a device index"), "{err}");
        let err = "cpu:1".parse::<DeviceSpec>().unwrap_err().to_string();
        assert!(err.contains("takes no index"), "{err}");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn a_backend_not_compiled_in_is_an_error_not_a_panic() {
        let err = "cuda:0"
            .parse::<DeviceSpec>()
            .unwrap()
            .device()
            .unwrap_err()
            .to_string();
        assert!(err.contains("`cuda` cargo feature"), "{err}");
    }

    #[cfg(feature = "flex")]
    #[test]
    fn cpu_builds_a_flex_device_with_and_without_autodiff() {
        let spec: DeviceSpec = "cpu".parse().unwrap();
        assert!(!spec.device().unwrap().is_autodiff());
        assert!(spec.with_autodiff(true).device().unwrap().is_autodiff());
    }

    proptest! {
        #[test]
        fn display_round_trips(index in 0usize..64, which in 0u8..3) {
            let spec = match which {
                0 => DeviceSpec::CPU,
                1 => DeviceSpec { kind: BackendKind::Wgpu(Some(index)), autodiff: false },
                _ => DeviceSpec { kind: BackendKind::Cuda(index), autodiff: false },
            };
            prop_assert_eq!(spec.to_string().parse::<DeviceSpec>().unwrap(), spec);
        }
    }
}
