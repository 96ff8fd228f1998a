//! Allocator policy for long CPU runs.
//!
//! A training step on Flex allocates and frees the same few hundred large buffers (activations,
//! gradients, gemm outputs of 1–200 MiB) every step. glibc serves every block above its mmap
//! threshold with a fresh `mmap` and gives it back with `munmap` on free, so each step the kernel
//! hands out — and zeroes — the same gigabytes of pages again: on SmolLM2-135M a full step spent
//! ~15 % of its CPU time in page-fault handling (`clear_page_erms`), measured with `perf`.
//! [`retain_freed_memory`] tells glibc to serve large blocks from the heap and never trim it, so
//! freed buffers are reused by the next step (≈ 2× fewer page faults, ~10–15 % faster full
//! fine-tuning steps, ~200 MiB more resident memory; see `docs/benchmarks.md`).
//!
//! It is opt-in process policy, not something a library should impose on its caller: binaries
//! (`temper train`, the speed examples) call it first thing in `main`. Setting the environment
//! variable `TEMPER_RETAIN_FREED_MEMORY=0` turns it off for A/B measurements.

/// How [`retain_freed_memory`] left the allocator.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocPolicy {
    /// glibc was told to keep freed memory (large blocks from the heap, heap never trimmed).
    Retain,
    /// Left at the allocator's defaults: `TEMPER_RETAIN_FREED_MEMORY=0`, or not glibc.
    Default,
}

/// Makes the process allocator keep freed memory for reuse instead of returning it to the OS.
///
/// Call it at the start of `main`, before the first large allocation. Only glibc (Linux `gnu`
/// targets) is tuned; elsewhere this is a no-op returning [`AllocPolicy::Default`]. Idempotent.
pub fn retain_freed_memory() -> AllocPolicy {
    if std::env::var("TEMPER_RETAIN_FREED_MEMORY").is_ok_and(|v| v.trim() == "0") {
        return AllocPolicy::Default;
    }
    glibc::retain()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use super::AllocPolicy;

    // From glibc's <malloc.h>.
    const M_TRIM_THRESHOLD: libc::c_int = -1;
    const M_TOP_PAD: libc::c_int = -2;
    const M_MMAP_MAX: libc::c_int = -4;

    pub(super) fn retain() -> AllocPolicy {
        // 0 mmapped blocks: every large block comes from the (reusable) heap.
        // Trim threshold at the largest int: the top of the heap is never given back.
        // 256 MiB top pad: the heap grows in large steps, so fewer `brk` calls while it warms up.
        let settings = [
            (M_MMAP_MAX, 0),
            (M_TRIM_THRESHOLD, libc::c_int::MAX),
            (M_TOP_PAD, 256 << 20),
        ];
        let mut ok = true;
        for (param, value) in settings {
            // SAFETY: `mallopt` only updates glibc's malloc parameters (under its own lock); it
            // takes plain integers and touches no memory of ours. It returns 0 on failure.
            #[allow(unsafe_code)]
            let applied = unsafe { libc::mallopt(param, value) };
            ok &= applied != 0;
        }
        if ok {
            AllocPolicy::Retain
        } else {
            AllocPolicy::Default
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod glibc {
    pub(super) fn retain() -> super::AllocPolicy {
        super::AllocPolicy::Default
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    fn glibc_accepts_the_policy_and_large_blocks_stay_usable() {
        // Other tests in this binary may run concurrently; the policy is process-wide and safe to
        // set at any time (it only changes how future blocks are served).
        if std::env::var("TEMPER_RETAIN_FREED_MEMORY").is_ok_and(|v| v.trim() == "0") {
            assert_eq!(retain_freed_memory(), AllocPolicy::Default);
            return;
        }
        assert_eq!(retain_freed_memory(), AllocPolicy::Retain);
        // A block far above the default mmap threshold now comes from the heap; it must still
        // be a correct allocation, and freeing and reallocating it must work.
        for round in 0..3u8 {
            let mut big = vec![round; 64 << 20];
            big[(64 << 20) - 1] = round.wrapping_add(1);
            assert_eq!(big[12345], round);
            assert_eq!(big[(64 << 20) - 1], round.wrapping_add(1));
        }
    }
}
