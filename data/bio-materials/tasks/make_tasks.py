#!/usr/bin/env python3
"""Write the bio-materials benchmark as lm-evaluation-harness task data (stdlib only).

    python3 data/bio-materials/tasks/make_tasks.py

From ../benchmark.jsonl (Temper's own format) it writes, beside this script:
  arc.jsonl    multiple-choice questions as ARC rows: question, choices {text, label}, answerKey
  mmlu_dev.jsonl, mmlu_test.jsonl
               the same questions as MMLU rows (question, subject, choices, answer index);
               the first five are the dev split the 5-shot prompt draws from
  boolq.jsonl  the true/false statements as BoolQ-like rows: question, label (bool)
  corpus_ppl.jsonl
               20 paragraphs of ../corpus/*.md (id, source, text) for the perplexity task
The YAMLs in this folder (bio_arc.yaml, bio_mmlu.yaml, bio_boolq.yaml,
bio_corpus_ppl.yaml, and the generation tasks bio_{arc,mmlu,boolq}_gen.yaml) read them with
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

# Corpus paragraphs for the perplexity task (bio_corpus_ppl.yaml, loglikelihood_rolling):
# prose paragraphs of ../corpus/*.md (headings, lists and tables left out), taken round-robin
# over the files (the k-th paragraph of each file in turn, every fifth one) until there are
# 20. Every fourth document joins two consecutive paragraphs with a blank line, so a text
# holds a whitespace run of more than one character (lm-eval counts words with
# re.split(r"\s+")).
def paragraphs(path):
    blocks = [b.strip() for b in path.read_text().split("\n\n")]
    return [b for b in blocks if b and not b.startswith(("#", "-", "*", "|", "1."))]


corpus = {p.name: paragraphs(p) for p in sorted((here.parent / "corpus").glob("*.md"))}
docs = []
k = 0
while len(docs) < 20:
    for name, paras in corpus.items():
        i = 5 * k
        if i + 1 >= len(paras) or len(docs) == 20:
            continue
        text = paras[i] if len(docs) % 4 != 3 else paras[i] + "\n\n" + paras[i + 1]
        docs.append({"id": f"{name[:-3]}-{i}", "source": name, "text": text})
    k += 1
write("corpus_ppl.jsonl", docs)
