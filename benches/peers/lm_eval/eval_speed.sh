#!/usr/bin/env bash
# Wall time of multiple-choice evaluation: `temper eval` on the shipped 499-question benchmark
# and on a task YAML, against lm-evaluation-harness's `hf` backend on the same task (issue 24's
# goals: the benchmark ≥ 2× faster than the per-request scorer, the task ≥ 3× lm-eval hf).
#
#   benches/peers/lm_eval/eval_speed.sh NEW_TEMPER [OLD_TEMPER]
#
# NEW_TEMPER / OLD_TEMPER: `temper` release binaries (OLD: one built before shared-context
# scoring, to time both back to back under the same load). Environment:
#   MODEL_DIR  the HF folder of SmolLM2-135M-Instruct (f32 safetensors; default
#              .cache/smollm2/SmolLM2-135M-Instruct)
#   LM_EVAL    lm-eval 0.4.13's CLI in a peer venv (default: peers/bin/lm_eval; unset or
#              missing: the peer is skipped)
#   TASKS      task names under data/bio-materials/tasks (default: "bio_arc bio_mmlu")
#   BENCH      0: skip the 499-question benchmark (default 1)
#   LIMIT      documents per task (both tools' --limit; default: all)
#   THREADS    threads for every tool (default 2): torch through OMP_NUM_THREADS, Temper
#              through RAYON_NUM_THREADS
# Prints one line per run: the tool, the workload, the wall and user CPU seconds (GNU time;
# user time is the steadier figure on a loaded machine) and the score
# line, after `lscpu`'s model name, the avx2 / avx512_bf16 flags and the load average.
set -euo pipefail
NEW=${1:?usage: eval_speed.sh NEW_TEMPER [OLD_TEMPER]}
OLD=${2:-}
REPO=$(cd "$(dirname "$0")/../../.." && pwd)
MODEL_DIR=${MODEL_DIR:-$REPO/.cache/smollm2/SmolLM2-135M-Instruct}
LM_EVAL=${LM_EVAL:-$REPO/peers/bin/lm_eval}
TASKS=${TASKS:-bio_arc bio_mmlu}
THREADS=${THREADS:-2}
LIMIT_ARGS=()
[ -n "${LIMIT:-}" ] && LIMIT_ARGS=(--limit "$LIMIT")
export OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS RAYON_NUM_THREADS=$THREADS
TASK_DIR=$REPO/data/bio-materials/tasks
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

echo "cpu: $(lscpu | sed -n 's/^Model name: *//p'); flags:$(grep -o -w 'avx2\|avx512_bf16' /proc/cpuinfo | sort -u | tr '\n' ' ')"
echo "threads: $THREADS; $(uptime)"

timed() { # label command...
    local label=$1; shift
    /usr/bin/time -f "%e %U" -o "$OUT/t" "$@" >"$OUT/log" 2>&1 || { cat "$OUT/log"; exit 1; }
    read -r wall user <"$OUT/t"
    printf '%-32s wall %7.1f s  user %7.1f s   %s\n' "$label" "$wall" "$user" \
        "$(grep -E 'acc|bio_' "$OUT/log" | tail -n 3 | tr -s ' \n' ' ')"
}

bench() { # binary label
    timed "$2 eval --bench (499 q)" "$1" eval --model "$MODEL_DIR" \
        --bench "$REPO/data/bio-materials/benchmark.jsonl" --quiet
}
task() { # binary label task
    (cd "$TASK_DIR" && timed "$2 eval --task $3" "$1" eval --model "$MODEL_DIR" \
        --task "$TASK_DIR/$3.yaml" "${LIMIT_ARGS[@]}" --quiet)
}

if [ "${BENCH:-1}" != 0 ]; then
    [ -n "$OLD" ] && bench "$OLD" old
    bench "$NEW" new
fi
for t in $TASKS; do
    [ -n "$OLD" ] && task "$OLD" old "$t"
    task "$NEW" new "$t"
    if [ -x "$LM_EVAL" ]; then
        (cd "$TASK_DIR" && timed "lm-eval hf $t" "$LM_EVAL" --model hf \
            --model_args "pretrained=$MODEL_DIR,dtype=float32" --tasks "$t" \
            --include_path "$TASK_DIR" --device cpu --batch_size 8 "${LIMIT_ARGS[@]}")
    fi
done
echo "$(uptime)"
