#!/usr/bin/env bash
# Kernel-by-kernel A/B of the training step on a lent GPU: the same train_step_speed binary
# with all CubeCL kernels, with each kernel sent back to the tensor-op reference
# (TEMPER_KERNELS=reference:NAME), and with all of them on the reference. Expects .gl/*.deb
# (Vulkan loader) and .gpu/bins2.tar.xz (train_step_speed built with --features wgpu,gpu-fast).
# Writes $OUT/kernel_ab.jsonl, one line per run.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/b
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
tar -xJf .gpu/bins2.tar.xz -C /tmp/b
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-balanced}
run() { # mode batch seq kernels
  TEMPER_KERNELS=$4 TEMPER_DEVICE=wgpu TEMPER_BATCH=$2 TEMPER_SEQ=$3 timeout 150 \
    /tmp/b/train_step_speed "$1" 3 10 2>/dev/null \
    | python3 -c "import json,sys; d=json.load(sys.stdin); d['kernels']='${4:-cubecl}'; print(json.dumps(d))" \
    | tee -a "$OUT/kernel_ab.jsonl" | python3 -c "import json,sys; d=json.loads(sys.stdin.read()); print(d['mode'], d['batch'], d['seq'], d['kernels'], d['tokens_per_s'], d['median_step_s'])"
}
# RUNS: "mode batch seq kernels" per line (kernels "" = all CubeCL kernels).
RUNS=${RUNS:-"full 16 512 -
full 16 512 reference:attention
full 16 512 reference:swiglu
full 16 512 reference:rms_norm
full 16 512 reference:rotary
full 16 512 reference
lora 16 512 -
lora 16 512 reference:attention
lora 4 256 -
full 4 256 -"}
while read -r mode b s k; do
  [ "$k" = - ] && k=""
  run "$mode" "$b" "$s" "$k"
done <<< "$RUNS"
