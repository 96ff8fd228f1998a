//! Criterion: the merge kernels on one realistic tensor (2048×5632, an MLP projection of a
//! 1.1B Llama), through the public API.
//!
//! * `kernel/*`: [`MergeMethod::merge`] on bf16 inputs read from a memory-mapped safetensors
//!   file (the path `temper merge` takes), then the result streamed in [`CHUNK`]s and encoded
//!   to bf16 into a reused buffer, in parallel like the executor — no disk writes.
//!   Throughput counts the bytes read (every input, bf16) plus the bytes produced (bf16).
//! * `in_memory/slerp`: [`merge_in_memory`] on f32 host tensors (planning, merge, rounding
//!   into the returned f32 buffers).
//!
//! `cargo bench -p temper-merge --bench kernels`; `RAYON_NUM_THREADS` sets the threads.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::io::Write;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use half::bf16;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use temper_merge::{
    CHUNK, DType, HostTensor, InputTensor, MergeConfig, MergeMethod, MergeOptions, Merged,
    ModelSource, ResolvedParams, TensorJob, merge_in_memory, method_by_name,
};

const ROWS: usize = 2048;
const COLS: usize = 5632;

/// `base` ~ 0.02·N(0,1); model k = base + 0.1·0.02·N(0,1) (cosine ≈ 0.995: the SLERP path).
fn values(seed: u64, base: Option<&[f32]>) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut normal = move || {
        // Irwin–Hall approximation: fast, and the kernels do not care about the tails.
        (0..12).map(|_| rng.random::<f32>()).sum::<f32>() - 6.0
    };
    let n = ROWS * COLS;
    let v: Vec<f32> = match base {
        None => (0..n).map(|_| 0.02 * normal()).collect(),
        Some(b) => b.iter().map(|x| x + 0.002 * normal()).collect(),
    };
    // bf16-representable, like a bf16 checkpoint.
    v.into_iter().map(|x| bf16::from_f32(x).to_f32()).collect()
}

/// Write `tensors` as one bf16 `model.safetensors` in `dir`.
fn write_safetensors(dir: &std::path::Path, tensors: &[(&str, &[f32])]) {
    let mut header = serde_json::Map::new();
    let mut pos = 0usize;
    for (name, v) in tensors {
        header.insert(
            (*name).to_string(),
            serde_json::json!({"dtype": "BF16", "shape": [ROWS, COLS], "data_offsets": [pos, pos + v.len() * 2]}),
        );
        pos += v.len() * 2;
    }
    let mut head = serde_json::to_vec(&serde_json::Value::Object(header)).expect("header json");
    while !head.len().is_multiple_of(8) {
        head.push(b' ');
    }
    let mut f = std::io::BufWriter::new(
        std::fs::File::create(dir.join("model.safetensors")).expect("create safetensors"),
    );
    f.write_all(&(head.len() as u64).to_le_bytes())
        .expect("write header length");
    f.write_all(&head).expect("write header");
    for (_, v) in tensors {
        let mut bytes = vec![0u8; v.len() * 2];
        DType::BF16.encode(v, &mut bytes);
        f.write_all(&bytes).expect("write data");
    }
    f.flush().expect("flush safetensors");
}

/// The method's defaults, with `global` and `per_model` overrides.
fn params(
    method: &dyn MergeMethod,
    inputs: usize,
    global: &[(&'static str, f64)],
    per_model: &[&[(&'static str, f64)]],
) -> ResolvedParams {
    let spec = method.spec();
    let mut p = ResolvedParams::default();
    for s in spec.global {
        if let Some(d) = s.default {
            p.global.insert(s.name, d);
        }
    }
    for (k, v) in global {
        p.global.insert(k, *v);
    }
    for i in 0..inputs {
        let mut m = BTreeMap::new();
        for s in spec.per_model {
            if let Some(d) = s.default {
                m.insert(s.name, d);
            }
        }
        for (k, v) in per_model.get(i).copied().unwrap_or(&[]) {
            m.insert(*k, *v);
        }
        p.per_model.push(m);
    }
    p
}

/// Merge one tensor and stream the result into `out` as bf16 (what the executor does, minus
/// the positioned file writes).
fn run(method: &dyn MergeMethod, job: &TensorJob<'_>, out: &mut [u8]) {
    let merged = method.merge(job).expect("merge succeeds").values;
    let n = job.numel();
    match merged {
        Merged::Dense(v) => {
            v.par_chunks(CHUNK)
                .zip(out.par_chunks_mut(CHUNK * 2))
                .for_each(|(v, o)| DType::BF16.encode(v, o));
        }
        Merged::Elementwise(kernel) => {
            out.par_chunks_mut(CHUNK * 2).enumerate().for_each_init(
                || (vec![vec![0f32; CHUNK]; job.inputs.len()], vec![0f32; CHUNK]),
                |(bufs, res), (c, o)| {
                    let range = c * CHUNK..((c + 1) * CHUNK).min(n);
                    let len = range.len();
                    for (buf, input) in bufs.iter_mut().zip(job.inputs) {
                        input.read(range.clone(), &mut buf[..len]);
                    }
                    let views: Vec<&[f32]> = bufs.iter().map(|b| &b[..len]).collect();
                    kernel.apply(&views, &mut res[..len]);
                    DType::BF16.encode(&res[..len], o);
                },
            );
        }
    }
}

fn bench_kernels(c: &mut Criterion) {
    let base = values(1, None);
    let ft1 = values(2, Some(&base));
    let ft2 = values(3, Some(&base));
    let dir = tempfile::tempdir().expect("temporary directory");
    write_safetensors(dir.path(), &[("base", &base), ("ft1", &ft1), ("ft2", &ft2)]);
    let source = ModelSource::open(dir.path(), "bench").expect("open the bench tensors");
    let input = |name: &str| {
        source
            .tensor(name)
            .expect("bench tensor")
            .with_load_dtype(Some(DType::BF16))
    };
    let two = [input("base"), input("ft1")];
    let three = [input("base"), input("ft1"), input("ft2")];
    let shape = [ROWS, COLS];
    let n = ROWS * COLS;
    let mut out = vec![0u8; n * 2];

    let slerp = method_by_name("slerp").expect("slerp");
    let linear = method_by_name("linear").expect("linear");
    let ties = method_by_name("ties").expect("ties");
    let p_slerp = params(slerp.as_ref(), 2, &[("t", 0.3)], &[]);
    let p_linear = params(
        linear.as_ref(),
        2,
        &[],
        &[&[("weight", 0.7)], &[("weight", 0.3)]],
    );
    let p_ties = params(
        ties.as_ref(),
        3,
        &[],
        &[
            &[],
            &[("weight", 0.7), ("density", 0.5)],
            &[("weight", 0.3), ("density", 0.5)],
        ],
    );
    let cases: [(&str, &dyn MergeMethod, &[InputTensor<'_>], &ResolvedParams); 3] = [
        ("slerp", slerp.as_ref(), &two, &p_slerp),
        ("linear", linear.as_ref(), &two, &p_linear),
        ("ties_3_models_density_0.5", ties.as_ref(), &three, &p_ties),
    ];

    let mut g = c.benchmark_group("kernel_2048x5632_bf16");
    g.sample_size(10);
    for (name, method, inputs, params) in cases {
        let job = TensorJob {
            name: "model.layers.0.mlp.up_proj.weight",
            shape: &shape,
            inputs,
            base: Some(0),
            params,
            dtype: DType::BF16,
            seed: 0,
        };
        g.throughput(Throughput::Bytes((n * 2 * (inputs.len() + 1)) as u64));
        g.bench_function(name, |b| b.iter(|| run(method, &job, black_box(&mut out))));
    }
    g.finish();

    // The in-memory API (f32 host tensors in, f32 host tensors out).
    let yaml = "models:\n  - model: a\n  - model: b\nmerge_method: slerp\nbase_model: a\n\
                parameters:\n  t: 0.3\ndtype: bfloat16\n";
    let config = MergeConfig::from_yaml(yaml, "bench").expect("config");
    let name = "model.layers.0.mlp.up_proj.weight".to_string();
    let mut g = c.benchmark_group("in_memory_2048x5632");
    g.sample_size(10);
    g.throughput(Throughput::Bytes((n * 4 * 3) as u64));
    g.bench_function("slerp_f32_host", |b| {
        b.iter_batched(
            || {
                let model = |v: &Vec<f32>| {
                    let t = HostTensor::new(vec![ROWS, COLS], DType::BF16, v.clone());
                    (None, BTreeMap::from([(name.clone(), t)]))
                };
                BTreeMap::from([
                    ("a".to_string(), model(&base)),
                    ("b".to_string(), model(&ft1)),
                ])
            },
            |models| {
                black_box(
                    merge_in_memory(&config, models, &MergeOptions::default())
                        .expect("in-memory merge"),
                )
            },
            criterion::BatchSize::LargeInput,
        );
    });
    g.finish();
}

criterion_group!(benches, bench_kernels);
criterion_main!(benches);
