//! Content fingerprints that decide whether a step's output can be reused: a step is skipped
//! when its directory holds a marker with the same fingerprint, which covers the step's own
//! settings, the bytes of its data files and the fingerprints of the models it starts from.

use std::io::Read;
use std::path::Path;

use sha2::{Digest, Sha256};

use crate::{PipelineError, Result};

/// An incremental fingerprint: labelled parts, then [`Fingerprint::finish`].
#[derive(Debug, Clone, Default)]
pub struct Fingerprint(Sha256);

impl Fingerprint {
    pub fn new(kind: &str) -> Self {
        let mut f = Self(Sha256::new());
        f.str("kind", kind);
        f
    }

    /// Add a labelled string (length-prefixed, so parts cannot run into each other).
    pub fn str(&mut self, label: &str, value: &str) -> &mut Self {
        for part in [label, value] {
            self.0.update((part.len() as u64).to_le_bytes());
            self.0.update(part.as_bytes());
        }
        self
    }

    /// Add a serialisable value as canonical JSON.
    pub fn json(&mut self, label: &str, value: &impl serde::Serialize) -> &mut Self {
        let text = serde_json::to_string(value).unwrap_or_default();
        self.str(label, &text)
    }

    /// Add the bytes of a file.
    ///
    /// # Errors
    /// The file cannot be read.
    pub fn file(&mut self, label: &str, path: &Path) -> Result<&mut Self> {
        let digest = file_sha256(path)?;
        Ok(self.str(label, &digest))
    }

    /// Hex digest (16 bytes are plenty to tell configurations apart).
    pub fn finish(&self) -> String {
        let digest = self.0.clone().finalize();
        digest[..16].iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// SHA-256 of a file's bytes, hex.
///
/// # Errors
/// The file cannot be read.
pub fn file_sha256(path: &Path) -> Result<String> {
    let mut file = temper_formats::open_regular(path).map_err(|e| PipelineError::io(path, e))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| PipelineError::io(path, e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parts_do_not_run_into_each_other() {
        let a = Fingerprint::new("x").str("a", "bc").finish();
        let b = Fingerprint::new("x").str("ab", "c").finish();
        assert_ne!(a, b);
        assert_eq!(a, Fingerprint::new("x").str("a", "bc").finish());
        assert_eq!(a.len(), 32);
    }
}
