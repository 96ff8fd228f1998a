//! LoRA inputs (`model: base+path/to/adapter`): the adapter is merged into the base weights
//! before the merge sees them.

use std::path::Path;

use crate::source::ModelSource;
use crate::{MergeError, Result};

/// Merge the PEFT adapter at `adapter_dir` into `source`'s weights.
///
/// # Errors
/// A malformed adapter.
pub fn apply_adapter(source: &mut ModelSource, adapter_dir: &Path) -> Result<()> {
    let _ = source;
    Err(MergeError::checkpoint(
        adapter_dir,
        "LoRA inputs are not supported yet",
    ))
}
