//! Criterion benchmarks of `temper-objectives`: per-token log-probs on SmolLM2-135M shapes
//! (batch 4 × 512, hidden 576, vocab 49152, tied LM head), dense (`[4, 512, 49152]` logits +
//! `token_logps`) against chunked (`chunked_token_logps`), forward + backward on Flex with
//! autodiff, and the forward alone without autodiff (a reference-model pass).
//!
//! Peak memory is per process, so it is measured by `examples/logprob_memory.rs` instead.
//! `LOGPROB_BATCH` / `LOGPROB_SEQ` shrink the shapes for a quick run.

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use temper_llm::burn::tensor::{Device, Distribution, Int, Tensor};
use temper_llm::objectives::{ChunkConfig, TokenLogps, chunked_token_logps, token_logps};

const HIDDEN: usize = 576;
const VOCAB: usize = 49152;

fn env_usize(key: &str, default: usize) -> usize {
    std::env::var(key)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

struct Inputs {
    hidden: Tensor<3>,
    embed: Tensor<2>,
    labels: Tensor<2, Int>,
}

fn inputs(device: &Device, b: usize, t: usize) -> Inputs {
    Inputs {
        hidden: Tensor::<3>::random([b, t, HIDDEN], Distribution::Normal(0.0, 1.0), device),
        embed: Tensor::<2>::random([VOCAB, HIDDEN], Distribution::Normal(0.0, 0.02), device),
        labels: Tensor::<2, Int>::random([b, t], Distribution::Uniform(0.0, VOCAB as f64), device),
    }
}

fn logps(x: &Inputs, hidden: Tensor<3>, embed: Tensor<2>, chunked: bool) -> TokenLogps {
    let [b, t, h] = hidden.dims();
    let out = if chunked {
        chunked_token_logps(
            hidden,
            embed.transpose(),
            x.labels.clone(),
            &ChunkConfig::default(),
        )
    } else {
        let logits = hidden
            .reshape([b * t, h])
            .matmul(embed.transpose())
            .reshape([b, t, VOCAB]);
        token_logps(logits, x.labels.clone())
    };
    out.unwrap_or_else(|e| panic!("log-probs: {e}"))
}

fn bench_logprobs(c: &mut Criterion) {
    let (b, t) = (env_usize("LOGPROB_BATCH", 4), env_usize("LOGPROB_SEQ", 512));

    let device = Device::flex().autodiff();
    let x = inputs(&device, b, t);
    let mut g = c.benchmark_group(format!("logprobs_fwd_bwd_{b}x{t}_v{VOCAB}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(40));
    for (name, chunked) in [("dense", false), ("chunked", true)] {
        g.bench_function(name, |bench| {
            bench.iter(|| {
                let hidden = x.hidden.clone().require_grad();
                let embed = x.embed.clone().require_grad();
                let out = logps(&x, hidden.clone(), embed.clone(), chunked);
                let grads = out.sum().sum().backward();
                black_box(hidden.grad(&grads).map(|g| g.into_data()));
                black_box(embed.grad(&grads).map(|g| g.into_data()));
            })
        });
    }
    g.finish();

    let device = Device::flex();
    let x = inputs(&device, b, t);
    let mut g = c.benchmark_group(format!("logprobs_fwd_{b}x{t}_v{VOCAB}"));
    g.sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(20));
    for (name, chunked) in [("dense", false), ("chunked", true)] {
        g.bench_function(name, |bench| {
            bench.iter(|| {
                let out = logps(&x, x.hidden.clone(), x.embed.clone(), chunked);
                black_box(out.sum().into_data())
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_logprobs);
criterion_main!(benches);
