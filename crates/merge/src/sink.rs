//! Where a running merge puts its values: the shard files of an output
//! directory ([`ShardedWriter`]) or buffers in memory ([`MemorySink`]).

use std::collections::BTreeMap;
use std::sync::Mutex;

use crate::plan::MergePlan;
use crate::source::HostTensor;
use crate::writer::ShardedWriter;
use crate::{MergeError, Result};

/// Receives merged values (f32) for planned tensor `tensor` starting at element `offset`.
pub trait TensorSink: Sync {
    /// # Errors
    /// I/O failures of the sink.
    fn write(&self, tensor: usize, offset: usize, values: &[f32]) -> Result<()>;
}

impl TensorSink for ShardedWriter {
    fn write(&self, tensor: usize, offset: usize, values: &[f32]) -> Result<()> {
        Self::write(self, tensor, offset, values)
    }
}

/// In-memory sink: one buffer per planned tensor, values rounded to the output dtype.
pub(crate) struct MemorySink<'p> {
    plan: &'p MergePlan,
    buffers: Vec<Mutex<Vec<f32>>>,
}

impl<'p> MemorySink<'p> {
    /// Zeroed buffers for every tensor of `plan`.
    pub(crate) fn new(plan: &'p MergePlan) -> Self {
        Self {
            plan,
            buffers: plan
                .tensors
                .iter()
                .map(|t| Mutex::new(vec![0f32; t.numel()]))
                .collect(),
        }
    }

    /// The merged tensors by name.
    pub(crate) fn into_tensors(self) -> BTreeMap<String, HostTensor> {
        self.plan
            .tensors
            .iter()
            .zip(self.buffers)
            .map(|(t, b)| {
                let data = b.into_inner().unwrap_or_default();
                (
                    t.name.clone(),
                    HostTensor::new(t.shape.clone(), t.out_dtype, data),
                )
            })
            .collect()
    }
}

impl TensorSink for MemorySink<'_> {
    fn write(&self, tensor: usize, offset: usize, values: &[f32]) -> Result<()> {
        let dtype = self.plan.tensors[tensor].out_dtype;
        let mut buf = self.buffers[tensor]
            .lock()
            .map_err(|_| MergeError::tensor(&self.plan.tensors[tensor].name, "poisoned buffer"))?;
        for (o, v) in buf[offset..offset + values.len()].iter_mut().zip(values) {
            *o = dtype.round(*v);
        }
        Ok(())
    }
}
