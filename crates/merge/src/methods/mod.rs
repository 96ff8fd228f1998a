//! Merge methods, by mergekit registry name.

mod linear;
mod passthrough;
mod slerp;
pub mod sparsify;
mod task_arithmetic;

pub use linear::Linear;
pub use passthrough::Passthrough;
pub use slerp::{DOT_THRESHOLD, EPS, Slerp, slerp, slerp_coefficients};
pub use task_arithmetic::{Consensus, Sparsification, TaskArithmetic};

use crate::method::MergeMethod;
use crate::{MergeError, Result};

/// Every method name Temper implements.
pub const METHOD_NAMES: &[&str] = &["linear", "slerp", "task_arithmetic", "ties", "passthrough"];

/// Look up a method by its mergekit name.
///
/// # Errors
/// An unknown name (the message lists the known ones).
pub fn method_by_name(name: &str) -> Result<Box<dyn MergeMethod>> {
    Ok(match name {
        "linear" => Box::new(Linear),
        "slerp" => Box::new(Slerp),
        "task_arithmetic" => Box::new(TaskArithmetic::task_arithmetic()),
        "ties" => Box::new(TaskArithmetic::ties()),
        "passthrough" => Box::new(Passthrough),
        other => {
            return Err(MergeError::Config(format!(
                "unknown merge_method `{other}` (known: {})",
                METHOD_NAMES.join(", ")
            )));
        }
    })
}
