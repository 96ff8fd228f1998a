//! Which model sizes fit which memory: the estimate `temper train` prints before it starts
//! (`temper_train::MemoryEstimate`), for the examples' shapes, as a markdown table (README).
//!
//! Training rows: one sequence of 512 tokens a step with gradient checkpointing (the 8B QLoRA
//! goal's workload), LoRA r 16 on all seven projections, AdamW; `bf16-mixed` keeps f32 master
//! weights and f32 adapters. Inference rows: the weights alone (the KV cache and activations
//! of a short generation add tens of MiB at these sizes).
//!
//! ```sh
//! cargo run --release --example memory_table
//! ```

#[path = "common/shapes.rs"]
mod shapes;

use temper_llm::backend::{QuantType, TrainPrecision};
use temper_llm::train::{MemoryEstimate, MemoryPlan, ProjectionBytes, memory::gib};

fn main() -> anyhow::Result<()> {
    let shapes = ["smollm2-135m", "smollm-1.7b", "llama-3.1-8b"];
    let configs = shapes
        .iter()
        .map(|s| shapes::shape_config(s, None))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let rank16 = |_: &str| Some(16usize);
    let lora: &dyn Fn(&str) -> Option<usize> = &rank16;
    let rows: [(&str, TrainPrecision, ProjectionBytes, bool); 5] = [
        (
            "full fine-tuning, f32",
            TrainPrecision::F32,
            ProjectionBytes::Dense,
            false,
        ),
        (
            "full fine-tuning, bf16-mixed",
            TrainPrecision::Bf16Mixed,
            ProjectionBytes::Dense,
            false,
        ),
        (
            "LoRA r16, bf16-mixed (base in bf16)",
            TrainPrecision::Bf16Mixed,
            ProjectionBytes::Dense,
            true,
        ),
        (
            "QLoRA r16, NF4 base, bf16-mixed",
            TrainPrecision::Bf16Mixed,
            ProjectionBytes::Quantized(QuantType::Nf4),
            true,
        ),
        (
            "QLoRA r16, Q8_0 base, bf16-mixed",
            TrainPrecision::Bf16Mixed,
            ProjectionBytes::Quantized(QuantType::Q8_0),
            true,
        ),
    ];
    println!(
        "| training, 1 × 512 tokens, gradient checkpointing | {} |",
        shapes.join(" | ")
    );
    println!("|---|{}", "---|".repeat(shapes.len()));
    for (label, precision, projections, adapters) in rows {
        let cells: Vec<String> = configs
            .iter()
            .map(|config| {
                let e = MemoryEstimate::new(&MemoryPlan {
                    config,
                    precision,
                    projections,
                    lora_rank: adapters.then_some(lora),
                    sequences: 1,
                    seq_len: 512,
                    gradient_checkpointing: true,
                    reference_model: false,
                    save_merged: false,
                    load_decodes_whole_file: false,
                });
                gib(e.total())
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    println!();
    println!("| inference weights | {} |", shapes.join(" | "));
    println!("|---|{}", "---|".repeat(shapes.len()));
    let inference: [(&str, TrainPrecision, ProjectionBytes); 4] = [
        ("f32", TrainPrecision::F32, ProjectionBytes::Dense),
        ("bf16", TrainPrecision::Bf16, ProjectionBytes::Dense),
        (
            "NF4 projections, bf16 embedding/head",
            TrainPrecision::Bf16,
            ProjectionBytes::Quantized(QuantType::Nf4),
        ),
        (
            "Q4_1 GGUF blocks, f32 embedding",
            TrainPrecision::F32,
            ProjectionBytes::Quantized(QuantType::Q4_1),
        ),
    ];
    for (label, precision, projections) in inference {
        let cells: Vec<String> = configs
            .iter()
            .map(|config| {
                // A frozen "LoRA" plan of rank 0 prices the stored weights alone.
                let none = |_: &str| None;
                let e = MemoryEstimate::new(&MemoryPlan {
                    config,
                    precision,
                    projections,
                    lora_rank: Some(&none),
                    sequences: 0,
                    seq_len: 0,
                    gradient_checkpointing: true,
                    reference_model: false,
                    save_merged: false,
                    load_decodes_whole_file: false,
                });
                gib(e.weights)
            })
            .collect();
        println!("| {label} | {} |", cells.join(" | "));
    }
    Ok(())
}
