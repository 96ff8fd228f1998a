#!/usr/bin/env bash
# Runs on a lent GPU machine (no Rust there): the wgpu builds of Temper's SmolLM2 parity test
# and speed examples, then PyTorch on the same GPU (benches/gpu/torch_cuda.py), in one call.
# Expects (carried into the repo root, see docs/gpu.md): .gl/*.deb (Vulkan loader),
# .gpu/bins.tar.xz (smollm2_golden test, smollm2_speed, train_step_speed built with
# --features wgpu,gpu-fast), .gpu/golden.json and the GGUF at $GGUF.
# PARTS (default "parity infer train torch") picks what runs; TEMPER_KERNELS=reference runs
# Temper with the tensor-op reference instead of its CubeCL kernels (file names get a suffix).
#
# BACKEND=cuda runs the `--features cuda` builds instead (UNTESTED on a GPU so far): expects
# .gpu/bins-cuda.tar.xz (the same three binaries, plus smollm2_bf16, built with
# CUDARC_CUDA_VERSION=13000 and --features cuda,gpu-fast) and .gpu/cuda-headers/*.whl (the
# nvidia-cuda-runtime, -crt and -cccl 13.0 wheels); takes NVRTC from the machine's PyTorch
# wheels; adds the bf16 parity test and bf16-mixed training steps. File names get "_cuda".
set -u
PARTS=${PARTS:-parity infer train torch}
BACKEND=${BACKEND:-wgpu}
SUFFIX=${TEMPER_KERNELS:+_$TEMPER_KERNELS}
has() { case " $PARTS " in *" $1 "*) return 0;; esac; return 1; }
GGUF=${GGUF:-/tmp/smollm2.gguf}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/bins
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv | tee "$OUT/gpu.txt"
if [ "$BACKEND" = cuda ]; then
  DEVICE=cuda:0
  SUFFIX=_cuda$SUFFIX
  # The CUDA headers NVRTC compiles against, from the wheels (PyTorch does not install them).
  mkdir -p /tmp/cuda
  for w in .gpu/cuda-headers/*.whl; do python3 -m zipfile -e "$w" /tmp/cuda; done
  export CUDA_PATH=/tmp/cuda/nvidia/cu13
  # NVRTC (libnvrtc.so.13 and its builtins) from PyTorch's CUDA wheels; cudarc finds it by name.
  NVRTC_DIR=$(python3 -c 'import nvidia, os; print(next(d for d in (os.path.join(p, "cu13", "lib") for p in nvidia.__path__) if os.path.isdir(d)))')
  export LD_LIBRARY_PATH=$NVRTC_DIR:${LD_LIBRARY_PATH:-}
  ls "$NVRTC_DIR" | grep nvrtc
  tar -xJf .gpu/bins-cuda.tar.xz -C /tmp/bins
  PRECISIONS=${PRECISIONS:-f32 bf16-mixed}
else
  DEVICE=wgpu
  for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
  icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f "$icd" ] && export VK_DRIVER_FILES=$icd
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  tar -xJf .gpu/bins.tar.xz -C /tmp/bins
  PRECISIONS=${PRECISIONS:-f32}
fi
ls -la /tmp/bins
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-balanced}
step() { echo "=== $*"; }

if has parity; then
step parity
TEMPER_TEST_DEVICE=$DEVICE TEMPER_SMOLLM2_GGUF=$GGUF TEMPER_SMOLLM2_GOLDEN=.gpu/golden.json \
  timeout 300 /tmp/bins/smollm2_golden --test-threads 1 2>&1 | tail -15 | tee "$OUT/parity$SUFFIX.txt"
if [ "$BACKEND" = cuda ] && [ -x /tmp/bins/smollm2_bf16 ]; then
  step parity bf16
  TEMPER_TEST_DEVICE=$DEVICE TEMPER_SMOLLM2_GGUF=$GGUF TEMPER_SMOLLM2_GOLDEN=.gpu/golden.json \
    TEMPER_SMOLLM2_GOLDEN_BF16=.gpu/golden_bf16.json \
    timeout 300 /tmp/bins/smollm2_bf16 --test-threads 1 2>&1 | tail -15 | tee "$OUT/parity_bf16$SUFFIX.txt"
fi
fi

if has infer; then
step temper inference
TEMPER_DEVICE=$DEVICE timeout 200 /tmp/bins/smollm2_speed "$GGUF" > "$OUT/temper_infer$SUFFIX.json" 2> "$OUT/temper_infer$SUFFIX.log"
tail -3 "$OUT/temper_infer$SUFFIX.log"; cat "$OUT/temper_infer$SUFFIX.json"
fi

if has train; then
for shape in "4 256" "16 512"; do
  set -- $shape
  for mode in lora full; do
   for prec in $PRECISIONS; do
    # f32 keeps the old file names; other precisions add theirs.
    P=${prec#f32}; P=${P:+_$P}
    step "temper train $mode $1x$2 $prec"
    TEMPER_DEVICE=$DEVICE TEMPER_PRECISION=$prec TEMPER_BATCH=$1 TEMPER_SEQ=$2 \
      timeout 200 /tmp/bins/train_step_speed $mode 3 10 \
      > "$OUT/temper_${mode}_$1x$2$P$SUFFIX.json" 2> "$OUT/temper_${mode}_$1x$2$P$SUFFIX.log"
    tail -2 "$OUT/temper_${mode}_$1x$2$P$SUFFIX.log"; cat "$OUT/temper_${mode}_$1x$2$P$SUFFIX.json"
   done
  done
done
fi

if has torch; then
step torch
PYTHONUNBUFFERED=1 timeout 300 python3 benches/gpu/torch_cuda.py --json-out "$OUT/torch.json" 2>&1 | tail -20
fi
