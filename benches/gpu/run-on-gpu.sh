#!/usr/bin/env bash
# Runs on a lent GPU machine (no Rust there): the wgpu builds of Temper's SmolLM2 parity test
# and speed examples, then PyTorch on the same GPU (benches/gpu/torch_cuda.py), in one call.
# Expects (carried into the repo root, see docs/gpu.md): .gl/*.deb (Vulkan loader),
# .gpu/bins.tar.xz (smollm2_golden test, smollm2_speed, train_step_speed built with
# --features wgpu,gpu-fast), .gpu/golden.json and the GGUF at $GGUF.
# PARTS (default "parity infer train torch") picks what runs; TEMPER_KERNELS=reference runs
# Temper with the tensor-op reference instead of its CubeCL kernels (file names get a suffix).
set -u
PARTS=${PARTS:-parity infer train torch}
SUFFIX=${TEMPER_KERNELS:+_$TEMPER_KERNELS}
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
GGUF=${GGUF:-/tmp/smollm2.gguf}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/bins
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
tar -xJf .gpu/bins.tar.xz -C /tmp/bins
ls -la /tmp/bins
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-balanced}
step() { echo "=== $*"; }

if has parity; then
step parity
TEMPER_TEST_DEVICE=wgpu TEMPER_SMOLLM2_GGUF=$GGUF TEMPER_SMOLLM2_GOLDEN=.gpu/golden.json \
  timeout 300 /tmp/bins/smollm2_golden --test-threads 1 2>&1 | tail -15 | tee "$OUT/parity$SUFFIX.txt"
fi

if has infer; then
step temper inference
TEMPER_DEVICE=wgpu timeout 200 /tmp/bins/smollm2_speed "$GGUF" > "$OUT/temper_infer$SUFFIX.json" 2> "$OUT/temper_infer$SUFFIX.log"
tail -3 "$OUT/temper_infer$SUFFIX.log"; cat "$OUT/temper_infer$SUFFIX.json"
fi

if has train; then
for shape in "4 256" "16 512"; do
  set -- $shape
  for mode in lora full; do
    step "temper train $mode $1x$2"
    TEMPER_DEVICE=wgpu TEMPER_BATCH=$1 TEMPER_SEQ=$2 timeout 200 /tmp/bins/train_step_speed $mode 3 10 \
      > "$OUT/temper_${mode}_$1x$2$SUFFIX.json" 2> "$OUT/temper_${mode}_$1x$2$SUFFIX.log"
    tail -2 "$OUT/temper_${mode}_$1x$2$SUFFIX.log"; cat "$OUT/temper_${mode}_$1x$2$SUFFIX.json"
  done
done
fi

if has torch; then
step torch
PYTHONUNBUFFERED=1 timeout 300 python3 benches/gpu/torch_cuda.py --json-out "$OUT/torch.json" 2>&1 | tail -20
fi
