//! The examples each subcommand's `--help` ends with: the commands a new user types first.

pub const CONVERT: &str = "Examples:
  temper convert SmolLM2-135M-Instruct.Q4_1.gguf smollm2-hf
  temper convert model.gguf model-bf16 --dtype bf16 --overwrite
  temper convert smollm2-hf smollm2.q8_0.gguf --to gguf --dtype q8_0   # for llama.cpp / ollama
  temper convert runs/sft/adapter sft.f16.gguf --to gguf --dtype f16 --base smollm2-hf";

pub const GENERATE: &str = "Examples:
  temper generate --model smollm2-hf --prompt 'Bone is' --max-new-tokens 40
  temper generate --model HuggingFaceTB/SmolLM2-135M-Instruct --chat --prompt 'What is nacre?'
  temper generate --model model.gguf --dtype gguf --temperature 0.7 --top-p 0.9 --seed 1 --prompt 'Silk'";

pub const TOKENIZE: &str = "Examples:
  temper tokenize --model smollm2-hf --text 'Hello world'
  temper tokenize --model model.gguf --text '<|im_start|>user' --no-special-tokens";

pub const INSPECT: &str = "Examples:
  temper inspect smollm2-hf
  temper inspect model.gguf | head";

pub const MERGE: &str = "Examples:
  temper merge slerp.yml merged/            # a mergekit YAML: slerp, ties, dare_ties, linear, ...
  temper merge ties.yml merged/ --report report.json --out-shard-size 2B --overwrite";

pub const EVAL: &str = "Examples:
  temper eval --model smollm2-hf --bench data/bio-materials/benchmark.jsonl --out runs/base
  temper eval --model smollm2-hf --task data/bio-materials/tasks/bio_mmlu.yaml --output-path out/ --log-samples
  temper eval --model smollm2-hf --task bio_arc.yaml,bio_mmlu_gen.yaml --limit 50 --apply-chat-template";

pub const COMPARE: &str = "Examples:
  temper compare runs/base runs/merged
  temper compare runs/base runs/merged --metric acc-norm --out comparison/";

pub const PIPELINE: &str = "Examples:
  temper pipeline                               # the paper's study on SmolLM2-135M (preset default)
  temper pipeline --preset smoke --out /tmp/smoke
  temper pipeline --preset paper                # full fine-tuning, epochs, schedules A–G, both protocols
  temper pipeline --config study.toml --print-config
  temper pipeline --preset smoke --out /tmp/smoke --export-gguf q8_0   # variants also as GGUF
  temper pipeline --out runs/smollm2-bio-materials --rerender         # report again, nothing re-run";

pub const TRAIN: &str = "Examples:
  temper train sft --model smollm2-hf --data sft.jsonl --out runs/sft --lora-r 16 --lr 2e-4 --epochs 1
  temper train orpo --model runs/sft --data pairs.jsonl --out runs/orpo --precision bf16-mixed
  temper train --config stage.toml --resume
  temper train sft --model smollm2-hf --data sft.jsonl --out runs/sft --packing --max-length 1024
  temper train sft --model smollm2-hf --data sft.jsonl --out runs/sft --lora-r 16 --export-gguf q8_0";

pub const EXTRACT_LORA: &str = "Examples:
  temper extract-lora --model runs/sft --base smollm2-hf --rank 16 adapter/";
