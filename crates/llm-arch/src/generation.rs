//! Text generation with a KV cache: greedy, temperature, top-k, top-p, repetition penalty, a
//! seed, EOS ids and stop strings, a streaming callback, and batches of prompts of different
//! lengths (left-padded, with an attention mask and per-row positions).

use burn::tensor::{Int, Tensor, TensorData};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::{Error, ForwardOptions, KvCache, LlamaForCausalLM, Result, Tokenizer};

/// Decoding settings, named like HF `GenerationConfig`.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationConfig {
    pub max_new_tokens: usize,
    /// 0 means greedy (argmax); otherwise logits are divided by it and sampled.
    pub temperature: f32,
    pub top_k: Option<usize>,
    pub top_p: Option<f32>,
    /// HF's CTRL-style penalty: > 1 discourages tokens already in the prompt or output.
    pub repetition_penalty: f32,
    pub seed: u64,
    /// Generation of a row stops after any of these ids (the id is kept in the output).
    pub eos_token_ids: Vec<u32>,
    /// Generation of a row stops when its text contains one of these (needs a tokenizer);
    /// the returned text is cut before it.
    pub stop_strings: Vec<String>,
    /// Left padding id for batches (never attended to).
    pub pad_token_id: u32,
}

impl Default for GenerationConfig {
    fn default() -> Self {
        Self {
            max_new_tokens: 128,
            temperature: 0.0,
            top_k: None,
            top_p: None,
            repetition_penalty: 1.0,
            seed: 0,
            eos_token_ids: vec![],
            stop_strings: vec![],
            pad_token_id: 0,
        }
    }
}

impl GenerationConfig {
    /// Check the sampling numbers against HF's ranges, so `temperature: -1` or `top_p: 5` is
    /// an error rather than a silent greedy run or a no-op filter. [`generate`] calls it.
    ///
    /// # Errors
    /// [`Error::InvalidSetting`] naming the field and its allowed range.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, value: String, range: &str| {
            Err(Error::InvalidSetting {
                field: field.to_string(),
                reason: format!("{value} is out of range (must be {range})"),
            })
        };
        if !(self.temperature.is_finite() && self.temperature >= 0.0) {
            return bad(
                "temperature",
                self.temperature.to_string(),
                "a finite number ≥ 0; 0 is greedy",
            );
        }
        if let Some(p) = self.top_p
            && !(p > 0.0 && p <= 1.0)
        {
            return bad("top_p", p.to_string(), "in (0, 1]");
        }
        if self.top_k == Some(0) {
            return bad("top_k", "0".into(), "≥ 1; leave it unset for no top-k");
        }
        if !(self.repetition_penalty.is_finite() && self.repetition_penalty > 0.0) {
            return bad(
                "repetition_penalty",
                self.repetition_penalty.to_string(),
                "a finite number > 0; 1 is no penalty",
            );
        }
        Ok(())
    }
}

/// Why a row stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    Eos,
    StopString,
    Length,
}

/// The result for one prompt.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerationOutput {
    /// The new token ids (not the prompt).
    pub tokens: Vec<u32>,
    /// The decoded new text (with a tokenizer), cut before a stop string.
    pub text: Option<String>,
    pub finish_reason: FinishReason,
}

/// Apply the repetition penalty, temperature, top-k and top-p to `logits` and pick a token.
///
/// `history` is the prompt plus the tokens generated so far.
pub fn sample_token(
    logits: &mut [f32],
    history: &[u32],
    config: &GenerationConfig,
    rng: &mut StdRng,
) -> u32 {
    if config.repetition_penalty != 1.0 {
        let mut seen = std::collections::HashSet::new();
        for &t in history {
            if seen.insert(t)
                && let Some(l) = logits.get_mut(t as usize)
            {
                *l = if *l < 0.0 {
                    *l * config.repetition_penalty
                } else {
                    *l / config.repetition_penalty
                };
            }
        }
    }
    if config.temperature <= 0.0 {
        return argmax(logits);
    }
    for l in logits.iter_mut() {
        *l /= config.temperature;
    }
    let mut order: Vec<usize> = (0..logits.len()).collect();
    order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
    let mut keep = order.len();
    if let Some(k) = config.top_k.filter(|&k| k > 0) {
        keep = keep.min(k);
    }
    let max = logits[order[0]];
    let probs: Vec<f64> = order[..keep]
        .iter()
        .map(|&i| ((logits[i] - max) as f64).exp())
        .collect();
    let total: f64 = probs.iter().sum();
    let mut probs: Vec<f64> = probs.into_iter().map(|p| p / total).collect();
    if let Some(top_p) = config.top_p.filter(|&p| p < 1.0) {
        // Smallest prefix of the sorted tokens whose mass reaches top_p (at least one token).
        let mut cumulative = 0.0;
        let mut n = 0;
        for p in &probs {
            cumulative += p;
            n += 1;
            if cumulative >= top_p as f64 {
                break;
            }
        }
        probs.truncate(n.max(1));
        let total: f64 = probs.iter().sum();
        probs.iter_mut().for_each(|p| *p /= total);
    }
    let r: f64 = rng.random();
    let mut acc = 0.0;
    for (j, p) in probs.iter().enumerate() {
        acc += p;
        if r < acc {
            return order[j] as u32;
        }
    }
    order[probs.len() - 1] as u32
}

/// Index of the largest logit (the first one on ties, like `torch.argmax`).
pub fn argmax(logits: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &l) in logits.iter().enumerate() {
        if l > logits[best] {
            best = i;
        }
    }
    best as u32
}

/// Generate continuations of `prompts` (token ids), all rows in one batch.
///
/// `on_token(row, id)` is called for every new token as soon as it is chosen (streaming).
///
/// # Errors
/// Empty prompts, stop strings without a tokenizer, model errors.
pub fn generate(
    model: &LlamaForCausalLM,
    tokenizer: Option<&Tokenizer>,
    prompts: &[Vec<u32>],
    config: &GenerationConfig,
    mut on_token: impl FnMut(usize, u32),
) -> Result<Vec<GenerationOutput>> {
    config.validate()?;
    if prompts.is_empty() || prompts.iter().any(Vec::is_empty) {
        return Err(Error::InvalidInput(
            "every prompt needs at least one token".into(),
        ));
    }
    let vocab = model.config().vocab_size;
    if let Some(&t) = prompts
        .iter()
        .flatten()
        .chain([&config.pad_token_id])
        .find(|&&t| t as usize >= vocab)
    {
        return Err(Error::InvalidInput(format!(
            "token id {t} is outside the model's vocabulary of {vocab}"
        )));
    }
    if !config.stop_strings.is_empty() && tokenizer.is_none() {
        return Err(Error::InvalidInput("stop strings need a tokenizer".into()));
    }
    let device = model.device();
    let b = prompts.len();
    let max_len = prompts.iter().map(Vec::len).max().unwrap_or(0);
    let mut mask: Vec<Vec<u8>> = Vec::with_capacity(b);
    let mut ids = Vec::with_capacity(b * max_len);
    for p in prompts {
        let pad = max_len - p.len();
        ids.extend(std::iter::repeat_n(config.pad_token_id as i64, pad));
        ids.extend(p.iter().map(|&t| t as i64));
        mask.push(
            std::iter::repeat_n(0u8, pad)
                .chain(std::iter::repeat_n(1u8, p.len()))
                .collect(),
        );
    }
    let mut cache = KvCache::new(model.config().num_hidden_layers);
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut history: Vec<Vec<u32>> = prompts.to_vec();
    let mut outputs: Vec<GenerationOutput> = (0..b)
        .map(|_| GenerationOutput {
            tokens: vec![],
            text: None,
            finish_reason: FinishReason::Length,
        })
        .collect();
    let mut done = vec![false; b];
    let mut input = Tensor::<2, Int>::from_data(TensorData::new(ids, [b, max_len]), &device);
    for _step in 0..config.max_new_tokens {
        let options = ForwardOptions {
            attention_mask: Some(mask.clone()),
            position_ids: None,
            ..Default::default()
        };
        let hidden = model.forward_hidden(input, &options, Some(&mut cache))?;
        let [_, s, h] = hidden.dims();
        let logits = model.lm_head(hidden.narrow(1, s - 1, 1).reshape([b, 1, h]));
        let vocab = logits.dims()[2];
        let logits: Vec<f32> = logits
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| Error::InvalidInput(format!("reading logits: {e:?}")))?;
        let mut next = Vec::with_capacity(b);
        for row in 0..b {
            if done[row] {
                next.push(config.pad_token_id as i64);
                mask[row].push(0);
                continue;
            }
            let mut row_logits = logits[row * vocab..(row + 1) * vocab].to_vec();
            let token = sample_token(&mut row_logits, &history[row], config, &mut rng);
            history[row].push(token);
            outputs[row].tokens.push(token);
            on_token(row, token);
            if config.eos_token_ids.contains(&token) {
                done[row] = true;
                outputs[row].finish_reason = FinishReason::Eos;
            } else if let Some(tok) = tokenizer.filter(|_| !config.stop_strings.is_empty()) {
                let text = tok.decode(&outputs[row].tokens, false)?;
                if let Some(cut) = config
                    .stop_strings
                    .iter()
                    .filter_map(|s| text.find(s.as_str()))
                    .min()
                {
                    done[row] = true;
                    outputs[row].finish_reason = FinishReason::StopString;
                    outputs[row].text = Some(text[..cut].to_string());
                }
            }
            next.push(token as i64);
            mask[row].push(1);
        }
        if done.iter().all(|&d| d) {
            break;
        }
        input = Tensor::<2, Int>::from_data(TensorData::new(next, [b, 1]), &device);
    }
    if let Some(tok) = tokenizer {
        for out in &mut outputs {
            if out.text.is_none() {
                out.text = Some(tok.decode(&out.tokens, true)?);
            }
        }
    }
    Ok(outputs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn greedy_is_argmax_and_penalty_follows_hf() {
        let mut rng = StdRng::seed_from_u64(0);
        let cfg = GenerationConfig::default();
        assert_eq!(
            sample_token(&mut [0.1, 2.0, 2.0, -1.0], &[], &cfg, &mut rng),
            1
        );
        let cfg = GenerationConfig {
            repetition_penalty: 2.0,
            ..Default::default()
        };
        let mut logits = [3.0, 2.0, -1.0];
        // token 0: 3/2 = 1.5 < 2 → token 1 wins; token 2 (negative) is multiplied.
        assert_eq!(sample_token(&mut logits, &[0, 2], &cfg, &mut rng), 1);
        assert_eq!(logits, [1.5, 2.0, -2.0]);
    }

    #[test]
    fn top_k_one_and_tiny_top_p_are_greedy_and_seeds_repeat() {
        let logits = [0.5f32, 1.5, 1.4, -3.0, 0.0];
        for cfg in [
            GenerationConfig {
                temperature: 1.0,
                top_k: Some(1),
                ..Default::default()
            },
            GenerationConfig {
                temperature: 1.0,
                top_p: Some(1e-6),
                ..Default::default()
            },
        ] {
            for seed in 0..20 {
                let mut rng = StdRng::seed_from_u64(seed);
                assert_eq!(sample_token(&mut logits.clone(), &[], &cfg, &mut rng), 1);
            }
        }
        let cfg = GenerationConfig {
            temperature: 1.0,
            ..Default::default()
        };
        let draw = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            (0..50)
                .map(|_| sample_token(&mut logits.clone(), &[], &cfg, &mut rng))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(7), draw(7));
        assert!(
            draw(7).iter().any(|&t| t != 1),
            "sampling at T=1 is not greedy"
        );
        // top_k = 2 only ever yields the two best tokens.
        let cfg = GenerationConfig {
            temperature: 5.0,
            top_k: Some(2),
            ..Default::default()
        };
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..200 {
            assert!(matches!(
                sample_token(&mut logits.clone(), &[], &cfg, &mut rng),
                1 | 2
            ));
        }
    }
}
