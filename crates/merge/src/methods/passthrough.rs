//! `passthrough`: copy one model's tensors (optionally scaled), for layer stacking with
//! `slices` ("frankenmerges").

use crate::Result;
use crate::method::{
    BaseModel, ElementwiseKernel, MergeMethod, MergeOutput, Merged, MethodSpec, ParamSpec,
    TensorJob,
};

/// The `passthrough` method.
#[derive(Debug, Clone, Copy, Default)]
pub struct Passthrough;

static SPEC: MethodSpec = MethodSpec {
    base: BaseModel::Ignored,
    min_inputs: 1,
    max_inputs: Some(1),
    global: &[],
    per_model: &[ParamSpec::optional("scale", 1.0)],
};

struct Kernel {
    scale: f32,
}

impl ElementwiseKernel for Kernel {
    fn apply(&self, inputs: &[&[f32]], out: &mut [f32]) {
        if self.scale == 1.0 {
            out.copy_from_slice(inputs[0]);
        } else {
            for (o, x) in out.iter_mut().zip(inputs[0]) {
                *o = x * self.scale;
            }
        }
    }
}

impl MergeMethod for Passthrough {
    fn name(&self) -> &'static str {
        "passthrough"
    }

    fn spec(&self) -> &'static MethodSpec {
        &SPEC
    }

    fn merge<'a>(&self, job: &'a TensorJob<'a>) -> Result<MergeOutput<'a>> {
        let scale = job.params.model(0, "scale").unwrap_or(1.0) as f32;
        Ok(MergeOutput {
            values: Merged::Elementwise(Box::new(Kernel { scale })),
            report: Default::default(),
        })
    }
}
