//! Reference log-prob cache on a tiny random model: values against an independent dense
//! computation, batching invariance, fingerprints, atomic save and checked load.

use burn::tensor::{Device, Int, Tensor, TensorData};
use temper_llm_arch::{ForwardOptions, LlamaForCausalLM, ModelConfig};
use temper_objectives::data::PreferenceTokens;
use temper_objectives::ref_cache::{FORMAT, VERSION};
use temper_objectives::{
    IGNORE_INDEX, ObjectiveError, RefCache, RefCacheOptions, dataset_fingerprint,
    files_fingerprint, model_fingerprint, precompute_reference, token_logps,
};

type TestResult = Result<(), ObjectiveError>;

const VOCAB: usize = 40;

fn model(tied: bool, device: &Device) -> LlamaForCausalLM {
    let mut config = ModelConfig::tiny(VOCAB, 16, 2, 4, 2);
    config.tie_word_embeddings = tied;
    LlamaForCausalLM::init(&config, device)
}

fn pairs() -> Vec<PreferenceTokens> {
    let ids = |seed: u32, n: usize| -> Vec<u32> {
        (0..n as u32)
            .map(|i| (seed * 7 + i * 13 + 3) % VOCAB as u32)
            .collect()
    };
    (0..5u32)
        .map(|k| PreferenceTokens {
            prompt_ids: ids(k, 2 + k as usize),
            chosen_ids: ids(k + 11, 3 + (k as usize % 3)),
            rejected_ids: ids(k + 23, 2 + (k as usize % 4)),
        })
        .collect()
}

/// Σ log p over the completion of one unpadded sequence, dense logits, truncated to
/// `max_length`: the value the cache must hold.
fn dense_sum(
    model: &LlamaForCausalLM,
    prompt: &[u32],
    completion: &[u32],
    max_length: Option<usize>,
    device: &Device,
) -> Result<(f32, u32), ObjectiveError> {
    let mut ids: Vec<i64> = prompt
        .iter()
        .chain(completion)
        .map(|&i| i64::from(i))
        .collect();
    let mut labels: Vec<i64> = prompt
        .iter()
        .map(|_| IGNORE_INDEX)
        .chain(completion.iter().map(|&i| i64::from(i)))
        .collect();
    if let Some(m) = max_length {
        ids.truncate(m);
        labels.truncate(m);
    }
    let n = ids.len();
    let input = Tensor::<2, Int>::from_data(TensorData::new(ids, [1, n]), device);
    let labels = Tensor::<2, Int>::from_data(TensorData::new(labels, [1, n]), device);
    let logits = model.forward(input, &ForwardOptions::default())?;
    let lp = token_logps(logits, labels)?;
    let sum = lp.sum().into_scalar::<f32>();
    let count = lp.count().into_scalar::<f32>();
    Ok((sum, count.round() as u32))
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 * (1.0 + b.abs())
}

#[test]
fn cache_values_match_a_dense_forward_per_sequence() -> TestResult {
    let device = Device::flex();
    for tied in [false, true] {
        let m = model(tied, &device);
        let pairs = pairs();
        for max_length in [None, Some(6)] {
            let mut options = RefCacheOptions::new(0, max_length);
            options.batch_pairs = 2;
            options.chunk.vocab_tile = 7;
            let cache = precompute_reference(&m, &pairs, &options)?;
            assert_eq!(cache.pairs, pairs.len());
            for (i, p) in pairs.iter().enumerate() {
                let (c, nc) = dense_sum(&m, &p.prompt_ids, &p.chosen_ids, max_length, &device)?;
                let (r, nr) = dense_sum(&m, &p.prompt_ids, &p.rejected_ids, max_length, &device)?;
                assert!(
                    close(cache.chosen_logps[i], c),
                    "pair {i}: {} vs {c}",
                    cache.chosen_logps[i]
                );
                assert!(
                    close(cache.rejected_logps[i], r),
                    "pair {i}: {} vs {r}",
                    cache.rejected_logps[i]
                );
                assert_eq!((cache.chosen_tokens[i], cache.rejected_tokens[i]), (nc, nr));
            }
        }
    }
    Ok(())
}

#[test]
fn batching_does_not_change_the_values() -> TestResult {
    let device = Device::flex();
    let m = model(false, &device);
    let pairs = pairs();
    let mut one = RefCacheOptions::new(0, None);
    one.batch_pairs = 1;
    let mut all = RefCacheOptions::new(0, None);
    all.batch_pairs = 8;
    all.pad.pad_to_multiple_of = Some(8);
    let a = precompute_reference(&m, &pairs, &one)?;
    let b = precompute_reference(&m, &pairs, &all)?;
    assert_eq!(a.dataset_fingerprint, b.dataset_fingerprint);
    assert_eq!(a.model_fingerprint, b.model_fingerprint);
    for i in 0..pairs.len() {
        assert!(close(a.chosen_logps[i], b.chosen_logps[i]));
        assert!(close(a.rejected_logps[i], b.rejected_logps[i]));
    }
    assert_eq!(a.chosen_tokens, b.chosen_tokens);
    Ok(())
}

#[test]
fn fingerprints_track_the_data_and_the_weights() -> TestResult {
    let device = Device::flex();
    let pairs = pairs();
    let fp = dataset_fingerprint(&pairs, None);
    assert_eq!(fp.len(), 64);
    assert_eq!(fp, dataset_fingerprint(&pairs.clone(), None));
    assert_ne!(fp, dataset_fingerprint(&pairs, Some(512)));
    let mut changed = pairs.clone();
    changed[3].rejected_ids[0] ^= 1;
    assert_ne!(fp, dataset_fingerprint(&changed, None));
    // Moving a token across the prompt/completion boundary changes the labels: new key.
    let mut moved = pairs.clone();
    let t = moved[0].chosen_ids.remove(0);
    moved[0].prompt_ids.push(t);
    assert_ne!(fp, dataset_fingerprint(&moved, None));

    let a = model(false, &device);
    let b = model(false, &device);
    let fa = model_fingerprint(&a)?;
    assert_eq!(fa, model_fingerprint(&a)?);
    assert_ne!(fa, model_fingerprint(&b)?, "two random inits must differ");
    Ok(())
}

#[test]
fn save_is_atomic_and_load_checks_both_fingerprints() -> TestResult {
    let device = Device::flex();
    let m = model(true, &device);
    let pairs = pairs();
    let cache = precompute_reference(&m, &pairs, &RefCacheOptions::new(0, None))?;
    assert_eq!((cache.format.as_str(), cache.version), (FORMAT, VERSION));
    let dir = tempfile::tempdir().map_err(|e| ObjectiveError::Invalid(e.to_string()))?;
    let path = dir.path().join("ref.json");
    cache.save(&path)?;
    // Overwriting an existing cache goes through the same temp + rename.
    cache.save(&path)?;
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .map_err(|e| ObjectiveError::Invalid(e.to_string()))?
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert_eq!(
        names,
        vec!["ref.json".to_string()],
        "no temporary file left behind"
    );

    let (dfp, mfp) = (dataset_fingerprint(&pairs, None), model_fingerprint(&m)?);
    let back = RefCache::load(&path, &dfp, &mfp)?;
    assert_eq!(back, cache, "f32 values round-trip exactly through JSON");

    let err = RefCache::load(&path, &dataset_fingerprint(&pairs, Some(4)), &mfp)
        .expect_err("other dataset");
    assert!(err.to_string().contains("another dataset"), "{err}");
    let other = model(true, &device);
    let err = RefCache::load(&path, &dfp, &model_fingerprint(&other)?).expect_err("other model");
    assert!(err.to_string().contains("another reference model"), "{err}");
    assert!(
        err.to_string().contains(&mfp),
        "names the cached fingerprint: {err}"
    );

    // The DPO losses take the cached values as `RefLogps`.
    let r = back.ref_logps(1..4, &device)?;
    let chosen: Vec<f32> = r
        .chosen
        .into_data()
        .try_to_vec::<f32>()
        .map_err(|e| ObjectiveError::Invalid(format!("{e:?}")))?;
    assert_eq!(chosen, cache.chosen_logps[1..4].to_vec());
    assert!(back.ref_logps(3..9, &device).is_err());

    // A damaged file is an error, not a panic or a silent partial cache.
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, b"{\"format\": \"temper-ref-logps\", \"version\": 1")
        .map_err(|e| ObjectiveError::Invalid(e.to_string()))?;
    let err = RefCache::load(&bad, &dfp, &mfp).expect_err("truncated");
    assert!(err.to_string().contains("bad.json"), "{err}");
    let mut wrong = cache.clone();
    wrong.chosen_tokens.pop();
    assert!(wrong.save(dir.path().join("wrong.json")).is_err());
    assert!(RefCache::load(dir.path().join("missing.json"), &dfp, &mfp).is_err());
    Ok(())
}

#[test]
fn files_fingerprint_hashes_contents_in_order() -> TestResult {
    let dir = tempfile::tempdir().map_err(|e| ObjectiveError::Invalid(e.to_string()))?;
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    std::fs::write(&a, b"weights").map_err(|e| ObjectiveError::Invalid(e.to_string()))?;
    std::fs::write(&b, b"config").map_err(|e| ObjectiveError::Invalid(e.to_string()))?;
    let ab = files_fingerprint(&[&a, &b])?;
    assert_eq!(ab, files_fingerprint(&[&a, &b])?);
    assert_ne!(ab, files_fingerprint(&[&b, &a])?);
    std::fs::write(&b, b"config2").map_err(|e| ObjectiveError::Invalid(e.to_string()))?;
    assert_ne!(ab, files_fingerprint(&[&a, &b])?);
    assert!(files_fingerprint(&[dir.path().join("nope")]).is_err());
    Ok(())
}

#[test]
fn empty_dataset_and_zero_batch_are_errors() {
    let device = Device::flex();
    let m = model(false, &device);
    assert!(precompute_reference(&m, &[], &RefCacheOptions::new(0, None)).is_err());
    let mut o = RefCacheOptions::new(0, None);
    o.batch_pairs = 0;
    assert!(precompute_reference(&m, &pairs(), &o).is_err());
}
