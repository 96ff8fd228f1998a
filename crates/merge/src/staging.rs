//! The name `output.rs` uses for its output directory; the staging itself (temporary
//! directory beside the destination, renamed into place when complete, removed on error) is
//! `temper_formats::StagingDir`. This adaptor goes once `output.rs` calls it directly.

use std::path::Path;

use crate::Result;

/// [`temper_formats::StagingDir`] under its former constructor.
#[derive(Debug)]
pub(crate) struct StagingDir(temper_formats::StagingDir);

impl StagingDir {
    /// [`temper_formats::StagingDir::create`]; `_tag` named the temporary directory before
    /// Temper had one naming scheme.
    pub(crate) fn new(out_dir: &Path, overwrite: bool, _tag: &str) -> Result<Self> {
        Ok(Self(temper_formats::StagingDir::create(
            out_dir, overwrite,
        )?))
    }

    /// Where to write.
    pub(crate) fn path(&self) -> &Path {
        self.0.path()
    }

    /// Replace the destination with the finished directory.
    pub(crate) fn commit(self) -> Result<()> {
        self.0.commit()?;
        Ok(())
    }
}
