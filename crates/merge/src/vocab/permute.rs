//! Re-laying out the vocabulary tensors of every input to the output vocabulary.

use std::collections::HashMap;

use rayon::prelude::*;

use super::VocabPlan;
use crate::source::InputTensor;
use crate::{DType, MergeError, Result};

/// Where a default row (for models lacking the token) comes from.
enum Fill {
    Zero,
    /// Input index and its row.
    Copy(usize, usize),
    /// Index into the computed mean rows.
    Mean(usize),
}

fn permute_error(msg: String) -> MergeError {
    MergeError::tensor("vocabulary (embed_tokens/lm_head)", msg)
}

/// Rows per parallel block of the padding-row mean (fixed, so sums do not depend on threads).
const MEAN_BLOCK: usize = 1024;

/// Re-lay out one vocabulary tensor of each input (`inputs[k]` is of model `input_models[k]`)
/// to the output vocabulary: `[plan.rows(), ...]`, row `i` holding token `i` (see the module
/// docs for the rows of tokens a model lacks and for padding). Values are read through
/// [`InputTensor::read`], so the load dtype is honoured; the results keep the stored dtype
/// and the load dtype. An input already in output order is returned as is (no copy).
///
/// # Errors
/// Inputs and models of different lengths, an unknown model index, inputs whose rows differ in
/// shape, or an input with fewer rows than its tokenizer's ids need.
pub(crate) fn permute_rows<'a>(
    plan: &VocabPlan,
    inputs: &[InputTensor<'a>],
    input_models: &[usize],
) -> Result<Vec<InputTensor<'a>>> {
    if inputs.len() != input_models.len() {
        return Err(permute_error(format!(
            "{} inputs for {} models",
            inputs.len(),
            input_models.len()
        )));
    }
    let Some(first) = inputs.first() else {
        return Ok(Vec::new());
    };
    let tail: Vec<usize> = first.shape().get(1..).unwrap_or(&[]).to_vec();
    let width: usize = tail.iter().product();
    for (input, &m) in inputs.iter().zip(input_models) {
        let label = plan
            .labels
            .get(m)
            .ok_or_else(|| permute_error(format!("model index {m} is not in the merge")))?;
        let shape = input.shape();
        if shape.is_empty() || shape[1..] != tail[..] {
            return Err(permute_error(format!(
                "rows differ in shape: {} has {shape:?}, {} has {:?}",
                label,
                plan.labels[input_models[0]],
                first.shape()
            )));
        }
        let need = plan.rows_needed(m);
        if shape[0] < need {
            return Err(permute_error(format!(
                "model {label} has {} rows but its tokenizer uses ids up to {}",
                shape[0],
                need - 1
            )));
        }
    }
    let dtype = first.dtype();
    let read_row = |k: usize, row: usize, out: &mut [f32]| {
        inputs[k].read(row * width..(row + 1) * width, out);
    };

    // Distinct models among the inputs, with the first input holding each.
    let mut distinct: Vec<(usize, usize)> = Vec::new();
    for (k, &m) in input_models.iter().enumerate() {
        if !distinct.iter().any(|(_, d)| *d == m) {
            distinct.push((k, m));
        }
    }
    let base = plan
        .base
        .and_then(|b| distinct.iter().find(|(_, m)| *m == b).copied());

    // Default rows for tokens some input lacks, shared by every model lacking them.
    let n_tokens = plan.tokens.len();
    let mut defaults: HashMap<usize, Fill> = HashMap::new();
    let mut means: Vec<Vec<f32>> = Vec::new();
    for r in 0..n_tokens {
        if plan.tokens[r].is_none() || distinct.iter().all(|(_, m)| plan.own[*m][r].is_some()) {
            continue;
        }
        let present: Vec<(usize, usize)> = distinct
            .iter()
            .filter_map(|(k, m)| plan.own[*m][r].map(|row| (*k, row)))
            .collect();
        let base_row = base.and_then(|(k, m)| plan.own[m][r].map(|row| (k, row)));
        let d = match (base_row, present.as_slice()) {
            (Some((k, row)), _) | (None, &[(k, row)]) => Fill::Copy(k, row),
            (None, []) => Fill::Zero,
            (None, many) => {
                let mut acc = vec![0f32; width];
                let mut buf = vec![0f32; width];
                for (k, row) in many {
                    read_row(*k, *row, &mut buf);
                    for (a, v) in acc.iter_mut().zip(&buf) {
                        *a = dtype.round(*a + v);
                    }
                }
                let count = many.len() as f32;
                acc.iter_mut().for_each(|a| *a = dtype.round(*a / count));
                means.push(acc);
                Fill::Mean(means.len() - 1)
            }
        };
        defaults.insert(r, d);
    }

    inputs
        .iter()
        .zip(input_models)
        .map(|(input, &m)| {
            let own = &plan.own[m];
            let identity = plan.rows == n_tokens
                && input.shape()[0] == plan.rows
                && own.iter().enumerate().all(|(r, o)| *o == Some(r));
            if identity {
                return Ok(input.clone());
            }
            let mut data = vec![0f32; plan.rows * width];
            if width > 0 {
                data.par_chunks_mut(width)
                    .take(n_tokens)
                    .enumerate()
                    .for_each(|(r, out)| {
                        if plan.tokens[r].is_none() {
                            return;
                        }
                        match (own[r], defaults.get(&r)) {
                            (Some(row), _) => input.read(row * width..(row + 1) * width, out),
                            (None, Some(Fill::Copy(k, row))) => read_row(*k, *row, out),
                            (None, Some(Fill::Mean(i))) => out.copy_from_slice(&means[*i]),
                            (None, Some(Fill::Zero) | None) => {}
                        }
                    });
                fill_non_token_rows(plan, &mut data, width, dtype);
            }
            let mut shape = Vec::with_capacity(tail.len() + 1);
            shape.push(plan.rows);
            shape.extend_from_slice(&tail);
            Ok(InputTensor::owned(shape, input.stored_dtype(), data)
                .with_load_dtype(Some(input.dtype())))
        })
        .collect()
}

/// Padding rows and unused ids: the mean of the token rows (f64 sums over fixed blocks, one
/// rounding to `dtype`).
fn fill_non_token_rows(plan: &VocabPlan, data: &mut [f32], width: usize, dtype: DType) {
    let n_tokens = plan.tokens.len();
    let holes = plan.tokens.iter().any(Option::is_none);
    if plan.rows == n_tokens && !holes {
        return;
    }
    let count = plan.tokens.iter().flatten().count();
    let mean: Vec<f32> = if count == 0 {
        vec![0.0; width]
    } else {
        let token_data = &data[..n_tokens * width];
        let partials: Vec<Vec<f64>> = token_data
            .par_chunks(MEAN_BLOCK * width)
            .enumerate()
            .map(|(b, block)| {
                let mut acc = vec![0f64; width];
                for (i, row) in block.chunks(width).enumerate() {
                    if plan.tokens[b * MEAN_BLOCK + i].is_some() {
                        for (a, v) in acc.iter_mut().zip(row) {
                            *a += f64::from(*v);
                        }
                    }
                }
                acc
            })
            .collect();
        let mut sum = vec![0f64; width];
        for p in &partials {
            for (s, v) in sum.iter_mut().zip(p) {
                *s += v;
            }
        }
        sum.iter()
            .map(|s| dtype.round((s / count as f64) as f32))
            .collect()
    };
    for (r, row) in data.chunks_mut(width).enumerate() {
        if r >= n_tokens || plan.tokens[r].is_none() {
            row.copy_from_slice(&mean);
        }
    }
}
