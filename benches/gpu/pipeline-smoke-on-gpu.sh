#!/usr/bin/env bash
# On a lent GPU machine: the smoke pipeline (every stage, merge and evaluation of
# `temper pipeline --preset smoke`) on --device wgpu. Expects .gl/*.deb (Vulkan loader),
# .gpu/temper.tar.xz (the `temper` binary built with --features wgpu,gpu-fast) and the GGUF at
# $GGUF (docs/gpu.md says how they get there).
set -u
GGUF=${GGUF:-/tmp/smollm2.gguf}
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT" /tmp/bins
for f in .gl/*.deb; do dpkg -x "$f" /; done; ldconfig
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
[ -f "$icd" ] && export VK_DRIVER_FILES=$icd
tar -xJf .gpu/temper.tar.xz -C /tmp/bins
export CUBECL_AUTOTUNE_LEVEL=${CUBECL_AUTOTUNE_LEVEL:-minimal}
/tmp/bins/temper pipeline --preset smoke --device wgpu --print-config > /tmp/smoke.toml
sed -i "s#^instruct = .*#instruct = \"$GGUF\"#" /tmp/smoke.toml
start=$(date +%s)
/tmp/bins/temper pipeline --config /tmp/smoke.toml --out /tmp/run --quiet 2>&1 | tail -20
echo "wall: $(( $(date +%s) - start )) s"
cp /tmp/run/report.md "$OUT/report_wgpu_smoke.md" 2>/dev/null
