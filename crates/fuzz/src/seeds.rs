//! Valid inputs the campaigns start from (structure-aware: the mutations then hit real
//! lengths, counts, offsets and keys rather than random noise the parser rejects at byte 0).

/// A small GGUF v3 image: llama metadata (hyper-parameters, a token list, a chat template)
/// and three tensors in F32, Q8_0 and Q4_K blocks, data aligned to 32 bytes.
pub fn gguf() -> Vec<u8> {
    let mut kvs: Vec<(&str, u32, Vec<u8>)> = vec![
        ("general.architecture", 8, string("llama")),
        ("general.name", 8, string("fuzz")),
        ("llama.embedding_length", 4, 64u32.to_le_bytes().to_vec()),
        ("llama.block_count", 4, 1u32.to_le_bytes().to_vec()),
        (
            "llama.feed_forward_length",
            4,
            128u32.to_le_bytes().to_vec(),
        ),
        ("llama.attention.head_count", 4, 4u32.to_le_bytes().to_vec()),
        (
            "llama.attention.head_count_kv",
            4,
            2u32.to_le_bytes().to_vec(),
        ),
        ("llama.context_length", 4, 256u32.to_le_bytes().to_vec()),
        ("llama.rope.freq_base", 6, 10000f32.to_le_bytes().to_vec()),
        (
            "llama.attention.layer_norm_rms_epsilon",
            6,
            1e-5f32.to_le_bytes().to_vec(),
        ),
        ("tokenizer.ggml.model", 8, string("gpt2")),
        (
            "tokenizer.ggml.bos_token_id",
            4,
            1u32.to_le_bytes().to_vec(),
        ),
        (
            "tokenizer.chat_template",
            8,
            string("{% for m in messages %}<|{{ m.role }}|>{{ m.content }}{% endfor %}"),
        ),
    ];
    // An array of strings: type 8, count 4.
    let mut tokens = 8u32.to_le_bytes().to_vec();
    tokens.extend_from_slice(&4u64.to_le_bytes());
    for t in ["<unk>", "<s>", "a", "b"] {
        tokens.extend(string(t));
    }
    kvs.push(("tokenizer.ggml.tokens", 9, tokens));
    // (name, dims, ggml type, data)
    let tensors: Vec<(&str, Vec<u64>, u32, Vec<u8>)> = vec![
        (
            "output_norm.weight",
            vec![4],
            0,
            [1f32, 2.0, 3.0, 4.0]
                .iter()
                .flat_map(|v| v.to_le_bytes())
                .collect(),
        ),
        ("blk.0.attn_q.weight", vec![32, 1], 8, q8_0_block()),
        ("token_embd.weight", vec![256], 12, vec![0x11; 144]),
    ];
    let mut out = b"GGUF".to_vec();
    out.extend_from_slice(&3u32.to_le_bytes());
    out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
    out.extend_from_slice(&(kvs.len() as u64).to_le_bytes());
    for (key, ty, value) in &kvs {
        out.extend(string(key));
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(value);
    }
    let mut offset = 0u64;
    let mut data = Vec::new();
    for (name, dims, ty, bytes) in &tensors {
        out.extend(string(name));
        out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
        for d in dims {
            out.extend_from_slice(&d.to_le_bytes());
        }
        out.extend_from_slice(&ty.to_le_bytes());
        out.extend_from_slice(&offset.to_le_bytes());
        data.extend_from_slice(bytes);
        while !data.len().is_multiple_of(32) {
            data.push(0);
        }
        offset = data.len() as u64;
    }
    while !out.len().is_multiple_of(32) {
        out.push(0);
    }
    out.extend(data);
    out
}

fn string(s: &str) -> Vec<u8> {
    let mut out = (s.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(s.as_bytes());
    out
}

fn q8_0_block() -> Vec<u8> {
    // f16 scale 1.0, then 32 int8 quants.
    let mut b = 0x3c00u16.to_le_bytes().to_vec();
    b.extend((0..32).map(|i| i as u8));
    b
}

/// A safetensors image with two F32 tensors and a BF16 one.
pub fn safetensors() -> Vec<u8> {
    let header = r#"{"__metadata__":{"format":"pt"},"a":{"dtype":"F32","shape":[2,2],"data_offsets":[0,16]},"b":{"dtype":"BF16","shape":[4],"data_offsets":[16,24]},"c":{"dtype":"F32","shape":[1],"data_offsets":[24,28]}}"#;
    let mut out = (header.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(header.as_bytes());
    out.extend((0..28).map(|i| i as u8));
    out
}

pub const SHARD_INDEX: &str = r#"{"metadata":{"total_size":28},"weight_map":{"a":"model-00001-of-00001.safetensors","b":"model-00001-of-00001.safetensors","c":"model-00001-of-00001.safetensors"}}"#;

pub const CONFIG_JSON: &str = r#"{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":64,"intermediate_size":128,"num_hidden_layers":2,"num_attention_heads":4,"num_key_value_heads":2,"vocab_size":256,"max_position_embeddings":512,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":true,"bos_token_id":1,"eos_token_id":[2,3],"rope_scaling":{"rope_type":"llama3","factor":8.0,"low_freq_factor":1.0,"high_freq_factor":4.0,"original_max_position_embeddings":8192}}"#;

pub const TOKENIZER_CONFIG: &str = r#"{"bos_token":"<s>","eos_token":{"content":"</s>","special":true},"pad_token":null,"add_bos_token":true,"chat_template":[{"name":"default","template":"{% for m in messages %}{% if m.role == 'system' %}{{ m.content }}{% else %}<|{{ m.role }}|>{{ m.content | trim }}{% endif %}{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"},{"name":"tool_use","template":"{{ bos_token }}{{ messages | length }}"}]}"#;

pub const ADAPTER_CONFIG: &str = r#"{"peft_type":"LORA","task_type":"CAUSAL_LM","r":8,"lora_alpha":16,"lora_dropout":0.05,"target_modules":["q_proj","v_proj"],"rank_pattern":{"layers.0.q_proj":4},"alpha_pattern":{"v_proj":32},"bias":"none","base_model_name_or_path":"base","use_rslora":false,"fan_in_fan_out":false,"init_lora_weights":true}"#;

pub const MERGE_YAML: &str = "merge_method: slerp
base_model: a
slices:
  - sources:
      - model: a
        layer_range: [0, 2]
      - model: b
        layer_range: [0, 2]
parameters:
  t:
    - filter: self_attn
      value: [0, 0.5, 0.3, 0.7, 1]
    - filter: mlp
      value: [1, 0.5, 0.7, 0.3, 0]
    - value: 0.5
dtype: bfloat16
tokenizer_source: base
";

pub const TRL_JSONL: &str = r#"{"text":"plain text for CPT"}
{"prompt":"Q?","completion":"A."}
{"messages":[{"role":"system","content":"s"},{"role":"user","content":"u"},{"role":"assistant","content":"a"}]}
{"prompt":"Q?","chosen":"good","rejected":"bad"}
{"prompt":[{"role":"user","content":"u"}],"chosen":[{"role":"assistant","content":"c"}],"rejected":[{"role":"assistant","content":"r"}]}
{"prompt":"Q?","completion":"A.","label":true}
"#;

pub const BENCH_JSONL: &str = r#"{"id":"q1","category":"numerical","type":"mc","question":"2+2?","choices":["3","4","5"],"answer":1}
{"id":"q2","type":"tf","question":"Bone holds collagen.","answer":true}
{"id":"q3","type":"short","question":"Hair protein?","answer":"keratin","aliases":["alpha-keratin"]}
"#;

/// The repository's smoke study, the pipeline file the tests run.
pub const PIPELINE_TOML: &str = include_str!("../../pipeline/presets/smoke.toml");

pub const STAGE_TOML: &str = r#"model = "base"
train_file = "train.jsonl"
device = "cpu"
precision = "f32"
[trainer]
objective = { type = "dpo", beta = 0.1 }
learning_rate = 5e-6
num_train_epochs = 1
batch_size = 2
gradient_accumulation_steps = 4
max_length = 512
warmup_ratio = 0.1
output_dir = "out"
[lora]
r = 8
lora_alpha = 16
target_modules = ["q_proj", "v_proj"]
"#;
