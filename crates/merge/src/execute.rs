//! Running a [`MergePlan`]: tensors in parallel, large tensors in parallel chunks, every
//! output chunk handed to a sink at its final position. The result bytes do not depend on the
//! thread count: reductions use fixed chunks summed in order, and writes are positional.

use std::sync::Mutex;

use rayon::prelude::*;

use crate::method::{CHUNK, Merged, MethodReport, TensorJob};
use crate::plan::{MergePlan, PlannedTensor, is_vocab_tensor};
use crate::sink::TensorSink;
use crate::source::InputTensor;
use crate::vocab::permute_rows;
use crate::{DType, MergeError, Result};

/// Progress callbacks (the CLI draws a bar with them).
pub trait Progress: Sync {
    /// Called once before merging.
    fn start(&self, _tensors: usize, _bytes: u64) {}
    /// Called after each output tensor is complete.
    fn tensor_done(&self, _name: &str, _bytes: u64) {}
}

/// A [`Progress`] that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoProgress;

impl Progress for NoProgress {}

/// One line of the per-tensor report.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct TensorReport {
    pub name: String,
    pub shape: Vec<usize>,
    pub dtype: String,
    /// Input models in order (the base model's index is `base`).
    pub models: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base: Option<usize>,
    #[serde(flatten)]
    pub method: MethodReport,
}

/// FNV-1a: a stable hash (unlike `std`'s) so random methods are reproducible across builds.
fn stable_hash(seed: u64, name: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ seed;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Merge every planned tensor into `sink`. Returns one report per tensor, in plan order.
///
/// # Errors
/// The first failing tensor's error (a method failure, non-finite output, a sink error).
pub fn execute(
    plan: &MergePlan,
    sink: &dyn TensorSink,
    seed: u64,
    progress: &dyn Progress,
) -> Result<Vec<TensorReport>> {
    progress.start(plan.tensors.len(), plan.out_bytes());
    // Largest tensors first: the long poles start early and small ones fill the gaps.
    let mut order: Vec<usize> = (0..plan.tensors.len()).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(plan.tensors[i].numel()));
    let reports: Vec<Mutex<Option<TensorReport>>> =
        plan.tensors.iter().map(|_| Mutex::new(None)).collect();
    order.par_iter().try_for_each(|&i| -> Result<()> {
        let t = &plan.tensors[i];
        let report = merge_one(plan, i, t, sink, seed)?;
        progress.tensor_done(&t.name, t.out_bytes());
        if let Ok(mut slot) = reports[i].lock() {
            *slot = Some(report);
        }
        Ok(())
    })?;
    Ok(reports
        .into_iter()
        .filter_map(|m| m.into_inner().ok().flatten())
        .collect())
}

fn merge_one(
    plan: &MergePlan,
    index: usize,
    t: &PlannedTensor,
    sink: &dyn TensorSink,
    seed: u64,
) -> Result<TensorReport> {
    let inputs: Vec<InputTensor<'_>> = t
        .inputs
        .iter()
        .map(|inp| {
            let tensor = plan.models[inp.model]
                .tensor(&inp.tensor)?
                .with_load_dtype(Some(t.load_dtype));
            Ok(match t.rows {
                Some(r) => tensor.truncate_rows(r),
                None => tensor,
            })
        })
        .collect::<Result<_>>()?;
    // Different vocabularies: every input re-laid-out to the output vocabulary first.
    let inputs = match &plan.vocab {
        Some(vocab) if is_vocab_tensor(&t.name) => {
            let models: Vec<usize> = t.inputs.iter().map(|i| i.model).collect();
            permute_rows(vocab, &inputs, &models)?
        }
        _ => inputs,
    };
    let job = TensorJob {
        name: &t.name,
        shape: &t.shape,
        inputs: &inputs,
        base: t.base,
        params: &t.params,
        dtype: t.load_dtype,
        seed: stable_hash(seed, &t.name),
    };
    let out = plan.method.merge(&job)?;
    write_merged(&job, out.values, t.out_dtype, |offset, values| {
        sink.write(index, offset, values)
    })?;
    Ok(TensorReport {
        name: t.name.clone(),
        shape: t.shape.clone(),
        dtype: t.out_dtype.to_string(),
        models: t
            .inputs
            .iter()
            .map(|i| plan.refs[i.model].to_string())
            .collect(),
        base: t.base,
        method: out.report,
    })
}

/// Stream a method's result to `write` in [`CHUNK`]s, checking every value is finite.
pub(crate) fn write_merged(
    job: &TensorJob<'_>,
    merged: Merged<'_>,
    out_dtype: DType,
    write: impl Fn(usize, &[f32]) -> Result<()> + Sync,
) -> Result<()> {
    let n = job.numel();
    let check = |values: &[f32], offset: usize| -> Result<()> {
        // Fast path: OR of "exponent all ones" over the chunk (vectorises); the position is
        // only searched for when something is wrong.
        let bad = values.iter().fold(0u32, |acc, v| {
            acc | u32::from(v.to_bits() & 0x7f80_0000 == 0x7f80_0000)
        });
        if bad == 0 {
            return Ok(());
        }
        if let Some(j) = values.iter().position(|v| !v.is_finite()) {
            return Err(MergeError::tensor(
                job.name,
                format!(
                    "merged value at flat index {} is {} (check the inputs and parameters)",
                    offset + j,
                    values[j]
                ),
            ));
        }
        Ok(())
    };
    let _ = out_dtype;
    match merged {
        Merged::Dense(values) => {
            if values.len() != n {
                return Err(MergeError::tensor(
                    job.name,
                    format!("method produced {} values for {n} elements", values.len()),
                ));
            }
            values
                .par_chunks(CHUNK)
                .enumerate()
                .try_for_each(|(c, chunk)| {
                    check(chunk, c * CHUNK)?;
                    write(c * CHUNK, chunk)
                })
        }
        Merged::Elementwise(kernel) => {
            let chunks = n.div_ceil(CHUNK);
            (0..chunks).into_par_iter().try_for_each_init(
                || (vec![vec![0f32; CHUNK]; job.inputs.len()], vec![0f32; CHUNK]),
                |(bufs, out), c| {
                    let range = c * CHUNK..((c + 1) * CHUNK).min(n);
                    let len = range.len();
                    for (buf, input) in bufs.iter_mut().zip(job.inputs) {
                        input.read(range.clone(), &mut buf[..len]);
                    }
                    let views: Vec<&[f32]> = bufs.iter().map(|b| &b[..len]).collect();
                    kernel.apply(&views, &mut out[..len]);
                    check(&out[..len], range.start)?;
                    write(range.start, &out[..len])
                },
            )
        }
    }
}
