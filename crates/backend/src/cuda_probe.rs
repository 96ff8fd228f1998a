//! What a `cuda:N` device loads at run time, checked before burn creates it.
//!
//! A `--features cuda` binary links nothing of CUDA: cudarc `dlopen`s the driver (`libcuda.so`)
//! and NVRTC (`libnvrtc.so*`) on first use, and cubecl-cuda hands NVRTC the headers under
//! `$CUDA_PATH/include` (and `include/cccl`) for every kernel it compiles. When one is missing
//! cudarc or cubecl panics on a runtime thread, far from the command line. This probe looks for
//! the same files first and names what is missing and how to get it.
//!
//! It searches the directories the dynamic loader would (`LD_LIBRARY_PATH`, `/etc/ld.so.conf`,
//! the system library directories) without loading anything, so it needs no `unsafe`. The file
//! names are cudarc 0.19's candidates (`libX.so`, `libX.so.<major>`). A loader set up in a way
//! this does not see (a stale `ld.so.cache`, `LD_PRELOAD`) can make it wrong:
//! `TEMPER_CUDA_SKIP_PROBE=1` skips it.

use std::fmt;
use std::path::{Path, PathBuf};

/// Set to `1` to skip the probe (see the module doc).
pub const SKIP_ENV: &str = "TEMPER_CUDA_SKIP_PROBE";

/// Where the probe looks: the library search path and the CUDA tree cubecl-cuda will use.
#[derive(Debug, Clone, Default)]
pub struct CudaSearch {
    /// Directories searched for `libcuda` and `libnvrtc`, in the loader's order.
    pub library_dirs: Vec<PathBuf>,
    /// The CUDA tree whose `include/` NVRTC gets: `CUDA_PATH`, else cubecl-cuda's defaults
    /// (`/usr/local/cuda`, `/opt/cuda`, `/usr` when `/usr/bin/nvcc` exists); `None` when none.
    pub cuda_path: Option<PathBuf>,
}

impl CudaSearch {
    /// This machine's loader path, with `cuda_path` as cubecl-cuda resolves it
    /// (`cubecl_cuda::install::cuda_path()`).
    pub fn from_system(cuda_path: Option<PathBuf>) -> Self {
        let mut library_dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
            .map(|v| {
                std::env::split_paths(&v)
                    .filter(|p| !p.as_os_str().is_empty())
                    .collect()
            })
            .unwrap_or_default();
        ld_so_conf_dirs(Path::new("/etc/ld.so.conf"), &mut library_dirs, 0);
        // The loader's trusted directories, searched after everything configured.
        for dir in [
            "/lib/x86_64-linux-gnu",
            "/usr/lib/x86_64-linux-gnu",
            "/lib64",
            "/usr/lib64",
            "/lib",
            "/usr/lib",
            // WSL2 puts the Windows driver's libcuda here (listed in its ld.so.conf.d too).
            "/usr/lib/wsl/lib",
        ] {
            library_dirs.push(PathBuf::from(dir));
        }
        let mut seen = std::collections::HashSet::new();
        library_dirs.retain(|d| seen.insert(d.clone()));
        Self {
            library_dirs,
            cuda_path,
        }
    }
}

/// One thing a CUDA device needs that is not there, with the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CudaMissing {
    /// `libcuda.so*` (the driver) is in none of the directories.
    Driver { searched: usize },
    /// `libnvrtc.so*` is in none of the directories.
    Nvrtc { searched: usize },
    /// NVRTC was found but not the `libnvrtc-builtins.so*` it loads to compile.
    NvrtcBuiltins { nvrtc: PathBuf },
    /// No CUDA tree: `CUDA_PATH` unset and none of cubecl-cuda's default locations exists.
    NoCudaPath,
    /// The CUDA tree lacks headers every generated kernel includes.
    Headers {
        cuda_path: PathBuf,
        missing: Vec<String>,
    },
    /// The CUDA tree lacks CCCL (`cuda/barrier`), which the TMA kernels include.
    Cccl { cuda_path: PathBuf },
}

impl fmt::Display for CudaMissing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Driver { searched } => write!(
                f,
                "the NVIDIA driver (libcuda.so.1 / libcuda.so) is in none of the {searched} \
                 library directories searched (LD_LIBRARY_PATH, /etc/ld.so.conf, /usr/lib...): \
                 install the NVIDIA driver, or in a container run with the GPU passed through"
            ),
            Self::Nvrtc { searched } => write!(
                f,
                "NVRTC (libnvrtc.so / libnvrtc.so.<major>) is in none of the {searched} library \
                 directories searched: set LD_LIBRARY_PATH to the directory holding it (PyTorch's \
                 CUDA wheels ship it in site-packages/nvidia/cu13/lib, a CUDA toolkit in \
                 /usr/local/cuda/lib64); it must not be newer than the driver's CUDA version"
            ),
            Self::NvrtcBuiltins { nvrtc } => write!(
                f,
                "NVRTC was found ({}) but not the libnvrtc-builtins.so* it loads: put it in the \
                 same directory or on LD_LIBRARY_PATH (it ships beside libnvrtc)",
                nvrtc.display()
            ),
            Self::NoCudaPath => write!(
                f,
                "no CUDA headers: CUDA_PATH is not set and none of /usr/local/cuda, /opt/cuda, \
                 /usr/bin/nvcc exists: set CUDA_PATH to a tree with include/ (the \
                 nvidia-cuda-runtime and nvidia-cuda-crt wheels' nvidia/cu13/include) and \
                 include/cccl (the nvidia-cuda-cccl wheel's)"
            ),
            Self::Headers { cuda_path, missing } => write!(
                f,
                "CUDA_PATH {} lacks {} under include/: point CUDA_PATH at a tree whose include/ \
                 holds the CUDA runtime headers (cuda_fp16.h, cuda_bf16.h; the \
                 nvidia-cuda-runtime wheel) and crt/ (the nvidia-cuda-crt wheel)",
                cuda_path.display(),
                missing.join(", ")
            ),
            Self::Cccl { cuda_path } => write!(
                f,
                "CUDA_PATH {} has no CCCL headers (include/cccl/cuda/barrier or \
                 include/cuda/barrier), which the tensor-memory-accelerator kernels include: \
                 copy the nvidia-cuda-cccl wheel's include tree to include/cccl",
                cuda_path.display()
            ),
        }
    }
}

/// Headers the generated CUDA C++ includes, relative to `include/`, that a partial tree is
/// likeliest to lack (runtime wheel: the first two; crt wheel: the third).
const HEADERS: [&str; 3] = ["cuda_fp16.h", "cuda_bf16.h", "crt/host_defines.h"];

/// Everything in `search` a CUDA device would miss, empty when nothing is.
pub fn probe(search: &CudaSearch) -> Vec<CudaMissing> {
    let mut missing = Vec::new();
    let dirs = &search.library_dirs;
    if find_library(dirs, "libcuda").is_none() {
        missing.push(CudaMissing::Driver {
            searched: dirs.len(),
        });
    }
    match find_library(dirs, "libnvrtc") {
        None => missing.push(CudaMissing::Nvrtc {
            searched: dirs.len(),
        }),
        Some(nvrtc) => {
            // NVRTC looks for its builtins beside itself first, then on the loader path.
            let beside = nvrtc.parent().map(Path::to_path_buf);
            let builtins_found = beside.iter().chain(dirs).any(|d| has_builtins(d));
            if !builtins_found {
                missing.push(CudaMissing::NvrtcBuiltins { nvrtc });
            }
        }
    }
    match &search.cuda_path {
        None => missing.push(CudaMissing::NoCudaPath),
        Some(root) => {
            let include = root.join("include");
            let absent: Vec<String> = HEADERS
                .iter()
                .filter(|h| !include.join(h).is_file())
                .map(|h| (*h).to_string())
                .collect();
            if !absent.is_empty() {
                missing.push(CudaMissing::Headers {
                    cuda_path: root.clone(),
                    missing: absent,
                });
            }
            let cccl = ["cccl/cuda/barrier", "cuda/barrier"];
            if !cccl.iter().any(|p| include.join(p).is_file()) {
                missing.push(CudaMissing::Cccl {
                    cuda_path: root.clone(),
                });
            }
        }
    }
    missing
}

/// The first `<stem>.so` or `<stem>.so.<major>` (the names cudarc tries) in `dirs`.
fn find_library(dirs: &[PathBuf], stem: &str) -> Option<PathBuf> {
    dirs.iter().find_map(|dir| {
        let entries = std::fs::read_dir(dir).ok()?;
        entries.flatten().map(|e| e.path()).find(|path| {
            let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                return false;
            };
            let Some(rest) = name.strip_prefix(stem).and_then(|r| r.strip_prefix(".so")) else {
                return false;
            };
            let versioned = rest
                .strip_prefix('.')
                .is_some_and(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()));
            (rest.is_empty() || versioned) && path.exists()
        })
    })
}

fn has_builtins(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|entries| {
        entries.flatten().any(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
        })
    })
}

/// The directories of `conf` and the files it `include`s (a `*` in the last component), in
/// order, as `ldconfig` reads them. Missing files add nothing.
fn ld_so_conf_dirs(conf: &Path, out: &mut Vec<PathBuf>, depth: usize) {
    // ld.so.conf.d files may include each other; real ones nest one level.
    if depth > 4 {
        return;
    }
    let Ok(text) = std::fs::read_to_string(conf) else {
        return;
    };
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        if let Some(pattern) = line.strip_prefix("include") {
            for file in glob_last_component(pattern.trim(), conf.parent()) {
                ld_so_conf_dirs(&file, out, depth + 1);
            }
        } else if line.starts_with('/') {
            out.push(PathBuf::from(line));
        }
    }
}

/// The files matching `pattern` (relative to `base` unless absolute), sorted; `*` only in the
/// file name, which is all ld.so.conf files use.
fn glob_last_component(pattern: &str, base: Option<&Path>) -> Vec<PathBuf> {
    let pattern = match base {
        Some(base) if !pattern.starts_with('/') => base.join(pattern),
        _ => PathBuf::from(pattern),
    };
    let (Some(dir), Some(name)) = (
        pattern.parent(),
        pattern.file_name().and_then(|n| n.to_str()),
    ) else {
        return Vec::new();
    };
    let Some((prefix, suffix)) = name.split_once('*') else {
        return vec![pattern.clone()];
    };
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| {
                    e.file_name().to_str().is_some_and(|n| {
                        n.len() >= prefix.len() + suffix.len()
                            && n.starts_with(prefix)
                            && n.ends_with(suffix)
                    })
                })
                .map(|e| e.path())
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn touch(path: &Path) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"").unwrap();
    }

    #[test]
    fn an_empty_machine_misses_everything_and_each_message_names_the_fix() {
        let empty = tempfile::tempdir().unwrap();
        let search = CudaSearch {
            library_dirs: vec![empty.path().to_path_buf()],
            cuda_path: None,
        };
        let missing = probe(&search);
        assert_eq!(
            missing,
            vec![
                CudaMissing::Driver { searched: 1 },
                CudaMissing::Nvrtc { searched: 1 },
                CudaMissing::NoCudaPath
            ]
        );
        let text: Vec<String> = missing.iter().map(ToString::to_string).collect();
        assert!(text[0].contains("install the NVIDIA driver"), "{}", text[0]);
        assert!(text[1].contains("set LD_LIBRARY_PATH"), "{}", text[1]);
        assert!(text[2].contains("set CUDA_PATH"), "{}", text[2]);
    }

    #[test]
    fn a_complete_tree_passes() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("lib");
        touch(&lib.join("libcuda.so.1"));
        touch(&lib.join("libnvrtc.so.13"));
        touch(&lib.join("libnvrtc-builtins.so.13.0"));
        let cuda = root.path().join("cuda");
        for h in HEADERS {
            touch(&cuda.join("include").join(h));
        }
        touch(&cuda.join("include/cccl/cuda/barrier"));
        let search = CudaSearch {
            library_dirs: vec![root.path().join("nonexistent"), lib],
            cuda_path: Some(cuda),
        };
        let missing = probe(&search);
        assert!(missing.is_empty(), "{missing:?}");
    }

    #[test]
    fn partial_trees_name_the_missing_parts() {
        let root = tempfile::tempdir().unwrap();
        let lib = root.path().join("lib");
        touch(&lib.join("libcuda.so"));
        // A fully versioned name is not one cudarc asks for; the builtins are absent.
        touch(&lib.join("libnvrtc.so.13.0.88"));
        let cuda = root.path().join("cuda");
        touch(&cuda.join("include/cuda_fp16.h"));
        let search = CudaSearch {
            library_dirs: vec![lib.clone()],
            cuda_path: Some(cuda.clone()),
        };
        let missing = probe(&search);
        assert_eq!(
            missing,
            vec![
                CudaMissing::Nvrtc { searched: 1 },
                CudaMissing::Headers {
                    cuda_path: cuda.clone(),
                    missing: vec!["cuda_bf16.h".into(), "crt/host_defines.h".into()]
                },
                CudaMissing::Cccl {
                    cuda_path: cuda.clone()
                },
            ]
        );
        assert!(
            missing[1]
                .to_string()
                .contains("cuda_bf16.h, crt/host_defines.h")
        );
        assert!(missing[2].to_string().contains("nvidia-cuda-cccl"));

        touch(&lib.join("libnvrtc.so.13"));
        let missing = probe(&search);
        assert_eq!(
            missing[0],
            CudaMissing::NvrtcBuiltins {
                nvrtc: lib.join("libnvrtc.so.13")
            }
        );
        assert!(missing[0].to_string().contains("libnvrtc-builtins"));
    }

    #[test]
    fn the_device_error_lists_each_miss_on_its_own_line() {
        let err = crate::BackendError::CudaUnavailable {
            spec: "cuda:0".into(),
            missing: vec![CudaMissing::NoCudaPath, CudaMissing::Driver { searched: 3 }],
        };
        let text = err.to_string();
        assert!(
            text.starts_with("device `cuda:0` cannot start:\n  - no CUDA headers"),
            "{text}"
        );
        assert!(text.contains("\n  - the NVIDIA driver"), "{text}");
        assert!(
            text.ends_with("TEMPER_CUDA_SKIP_PROBE=1 skips it)"),
            "{text}"
        );
    }

    #[test]
    fn ld_so_conf_includes_are_followed_in_order() {
        let root = tempfile::tempdir().unwrap();
        let conf = root.path().join("ld.so.conf");
        std::fs::write(&conf, "# comment\n/first\ninclude conf.d/*.conf\n/last\n").unwrap();
        std::fs::create_dir(root.path().join("conf.d")).unwrap();
        std::fs::write(root.path().join("conf.d/b.conf"), "/b\n").unwrap();
        std::fs::write(root.path().join("conf.d/a.conf"), "/a # why\n").unwrap();
        std::fs::write(root.path().join("conf.d/a.conf.bak"), "/never\n").unwrap();
        let mut dirs = Vec::new();
        ld_so_conf_dirs(&conf, &mut dirs, 0);
        let dirs: Vec<&str> = dirs.iter().map(|d| d.to_str().unwrap()).collect();
        assert_eq!(dirs, ["/first", "/a", "/b", "/last"]);
    }
}
