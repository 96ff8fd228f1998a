#!/usr/bin/env bash
# Regenerate mergekit's outputs for every case in this folder (needs `pip install mergekit==0.1.5`
# in $VENV). Inputs are the models of ../fixtures/mergekit (the config paths are relative to it);
# run from anywhere.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
MODELS_DIR="${MODELS_DIR:-$HERE/../fixtures/mergekit}"
MK="${VENV:?set VENV to a virtualenv with mergekit 0.1.5}/bin/mergekit-yaml"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
for case_dir in "$HERE"/*/; do
  case_name="$(basename "$case_dir")"
  [[ -f "$case_dir/config.yml" ]] || continue
  tmp="$(mktemp -d)"
  (cd "$MODELS_DIR" && "$MK" "$case_dir/config.yml" "$tmp/out" --no-copy-tokenizer --no-write-model-card --quiet)
  mkdir -p "$case_dir/output"
  cp "$tmp/out/model.safetensors" "$tmp/out/config.json" "$case_dir/output/"
  rm -rf "$tmp"
  echo "$case_name: done"
done
