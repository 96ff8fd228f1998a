#!/usr/bin/env python3
"""Write the bio-materials benchmark as lm-evaluation-harness task data (stdlib only).

    python3 data/bio-materials/tasks/make_tasks.py

From ../benchmark.jsonl (Temper's own format) it writes, beside this script:
  arc.jsonl    multiple-choice questions as ARC rows: question, choices {text, label}, answerKey
  mmlu_dev.jsonl, mmlu_test.jsonl
               the same questions as MMLU rows (question, subject, choices, answer index);
               the first five are the dev split the 5-shot prompt draws from
  boolq.jsonl  the true/false statements as BoolQ-like rows: question, label (bool)
The YAMLs in this folder (bio_arc.yaml, bio_mmlu.yaml, bio_boolq.yaml) read them with
`dataset_path: json` and run in `lm_eval --include_path data/bio-materials/tasks` and in
`temper eval --task`.
"""
import json
from pathlib import Path

here = Path(__file__).resolve().parent
rows = [json.loads(l) for l in (here.parent / "benchmark.jsonl").read_text().splitlines() if l.strip()]
mc = [r for r in rows if r["type"] == "mc"]
tf = [r for r in rows if r["type"] == "tf"]


def write(name, items):
    with open(here / name, "w") as f:
        for it in items:
            f.write(json.dumps(it, ensure_ascii=False) + "\n")


letters = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
write("arc.jsonl", [
    {"id": r["id"], "question": r["question"],
     "choices": {"text": r["choices"], "label": list(letters[:len(r["choices"])])},
     "answerKey": letters[r["answer"]]}
    for r in mc])
mmlu = [{"id": r["id"], "question": r["question"], "subject": r.get("category", "general"),
         "choices": r["choices"], "answer": r["answer"]} for r in mc]
write("mmlu_dev.jsonl", mmlu[:5])
write("mmlu_test.jsonl", mmlu[5:])
write("boolq.jsonl", [{"id": r["id"], "question": r["question"], "label": r["answer"]} for r in tf])
