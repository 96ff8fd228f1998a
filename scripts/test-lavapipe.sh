#!/usr/bin/env bash
# The GPU kernels, the chunked log-prob autodiff node and the SmolLM2 and Qwen parity tests on burn's
# wgpu backend, without a GPU: Mesa's lavapipe is a CPU Vulkan driver
# (docs/gpu.md). A second test build with
# the wgpu feature (burn's WGSL path; `fusion` on, `autotune` off: tuning costs ~40 s per
# process) in its own profile, `lavapipe` (Cargo.toml: dependencies at opt-level 1); 15–27 min
# to build on 2 cores, 6–15 min to run, by CPU. Needs the model from scripts/fetch-smollm2.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

if [ ! -e /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || ! ldconfig -p | grep -q 'libvulkan\.so\.1'; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
      mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "test-lavapipe: install mesa-vulkan-drivers and libvulkan1 (needs root)" >&2
    exit 1
  fi
fi
# Only silences Mesa's "XDG_RUNTIME_DIR is invalid" noise.
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-$(mktemp -d)}

# lavapipe decodes SmolLM2 at ≈ 5 s a token on 2 cores: the parity test compares the first 8
# greedy tokens of each prompt here (all 32 on Flex), which keeps this run near 10 minutes.
export TEMPER_SMOLLM2_GREEDY_STEPS=${TEMPER_SMOLLM2_GREEDY_STEPS:-8}
# DeviceSpec pins the Vulkan API, so a missing driver fails instead of falling back to OpenGL.
TEMPER_TEST_DEVICE=wgpu cargo nextest run --cargo-profile lavapipe --no-fail-fast \
  -p temper-backend -p temper-llm-arch -p temper-objectives \
  --features temper-backend/wgpu,temper-backend/fusion \
  -E 'binary(kernels) | binary(smollm2_golden) | binary(qwen_families) | test(on_the_test_device)' "$@"
