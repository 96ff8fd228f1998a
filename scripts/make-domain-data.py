#!/usr/bin/env python3
"""Build Temper's bio-materials training and benchmark files from the hand-written sources.

Sources (written for Temper, see data/bio-materials/README.md):
  data/bio-materials/corpus/*.md    expository text, one file per pair of topics
  data/bio-materials/facts/*.jsonl  fact records: statement, 3 questions, 2 answers,
                                    2 scientifically wrong answers, optional benchmark item

Outputs (deterministic; re-run after editing a source):
  cpt.jsonl         {"text": ...}                       one corpus section per row
  sft.jsonl         {"messages": [user, assistant]}     3 per fact (each question once)
  preference.jsonl  {"prompt": [user], "chosen": [assistant], "rejected": [assistant]}
                                                        2 per fact (each wrong answer once)
  benchmark.jsonl   {"id", "category", "type", "question", ("choices",) "answer"}

Benchmark items that share a run of 8 words with any training text are dropped (and listed),
so the benchmark never repeats what SFT/preference rows say word for word.
Usage: python3 scripts/make-domain-data.py [DATA_DIR]
"""
import json, os, random, re, sys

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
data = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, "data", "bio-materials")
SHINGLE = 8
MAX_SECTION = 3500


def words(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def shingles(text, n=SHINGLE):
    w = words(text)
    return {" ".join(w[i:i + n]) for i in range(len(w) - n + 1)}


def sections(md):
    """Split a Markdown file into `## ` sections, each prefixed with its `# ` title; long
    sections are split at paragraph boundaries."""
    title, out, cur = "", [], []

    def flush():
        body = "\n".join(cur).strip()
        if not body:
            return
        head = f"{title}\n\n" if title else ""
        paras, chunk = body.split("\n\n"), ""
        for p in paras:
            if chunk and len(chunk) + len(p) > MAX_SECTION:
                out.append(head + chunk.strip())
                chunk = ""
            chunk += p + "\n\n"
        if chunk.strip():
            out.append(head + chunk.strip())

    for line in md.splitlines():
        if line.startswith("# "):
            flush(); cur = []
            title = line[2:].strip()
        elif line.startswith("## "):
            flush(); cur = [line[3:].strip()]
        else:
            cur.append(line)
    flush()
    return out


def main():
    corpus_dir, facts_dir = os.path.join(data, "corpus"), os.path.join(data, "facts")
    cpt = []
    for name in sorted(os.listdir(corpus_dir)):
        if name.endswith(".md"):
            with open(os.path.join(corpus_dir, name), encoding="utf-8") as f:
                cpt += [{"text": s} for s in sections(f.read())]

    facts, ids = [], set()
    for name in sorted(os.listdir(facts_dir)):
        if not name.endswith(".jsonl"):
            continue
        path = os.path.join(facts_dir, name)
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    r = json.loads(line)
                except json.JSONDecodeError as e:
                    sys.exit(f"{path}:{n}: {e}")
                for key, count in (("questions", 3), ("answers", 2), ("rejected", 2)):
                    if len(r.get(key, [])) != count:
                        sys.exit(f"{path}:{n}: `{key}` must hold {count} texts")
                if r["id"] in ids:
                    sys.exit(f"{path}:{n}: duplicate id {r['id']}")
                ids.add(r["id"])
                facts.append(r)

    rng = random.Random(2409_03444)
    sft, pref = [], []
    for r in facts:
        for i, q in enumerate(r["questions"]):
            sft.append({"messages": [{"role": "user", "content": q},
                                     {"role": "assistant", "content": r["answers"][i % 2]}]})
        for j, wrong in enumerate(r["rejected"]):
            # The question not used for this pair's twin, so prompts vary across pairs.
            q = r["questions"][(j + 1) % 3]
            pref.append({"prompt": [{"role": "user", "content": q}],
                         "chosen": [{"role": "assistant", "content": r["answers"][j]}],
                         "rejected": [{"role": "assistant", "content": wrong}]})
    rng.shuffle(cpt)
    rng.shuffle(sft)
    rng.shuffle(pref)

    train_shingles = set()
    for r in facts:
        for t in r["questions"] + r["answers"] + r["rejected"]:
            train_shingles |= shingles(t)
    bench, dropped = [], []
    for r in facts:
        b = r.get("bench")
        if not b:
            continue
        text = b["question"] + " " + " ".join(b.get("choices", []))
        if shingles(b["question"]) & train_shingles:
            dropped.append(r["id"])
            continue
        item = {"id": "bm-" + r["id"], "category": r["category"], "type": b["type"],
                "question": b["question"]}
        if b["type"] == "mc":
            if len(b["choices"]) < 2 or not 0 <= b["answer"] < len(b["choices"]):
                sys.exit(f"{r['id']}: bad multiple-choice item")
            item["choices"] = b["choices"]
        elif b["type"] != "tf" or not isinstance(b["answer"], bool):
            sys.exit(f"{r['id']}: bad benchmark item")
        item["answer"] = b["answer"]
        bench.append(item)

    def write(name, rows):
        path = os.path.join(data, name)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
        os.replace(path + ".tmp", path)
        print(f"{name}: {len(rows)} rows, {os.path.getsize(path)} bytes")

    write("cpt.jsonl", cpt)
    write("sft.jsonl", sft)
    write("preference.jsonl", pref)
    write("benchmark.jsonl", bench)
    cats = {}
    for b in bench:
        key = (b["category"], b["type"])
        cats[key] = cats.get(key, 0) + 1
    print("benchmark by category/type:", dict(sorted(cats.items())))
    corpus_bytes = sum(os.path.getsize(os.path.join(corpus_dir, n))
                       for n in os.listdir(corpus_dir) if n.endswith(".md"))
    print(f"corpus: {corpus_bytes} bytes; facts: {len(facts)}")
    if dropped:
        print(f"dropped {len(dropped)} benchmark items sharing {SHINGLE} words with training text:",
              ", ".join(dropped))


if __name__ == "__main__":
    main()
