//! Frozen weights kept block-quantized (QLoRA's base, a GGUF model's own blocks): the weight a
//! quantized product ([`crate::kernels::quant_linear`]) reads, tile by tile, without ever
//! holding a dense copy.
//!
//! The encodings themselves (NF4 as bitsandbytes, ggml's Q8_0/Q4_0/Q4_1/Q4_K/Q6_K) live in
//! `temper_formats::quant`; this type adds the matrix view the kernels need: a weight
//! `[out, in]` in PyTorch's layout (`nn.Linear.weight`, GGUF's `ne = [in, out]`), row-major, so
//! a run of rows is a run of blocks.

#[cfg_attr(not(feature = "gpu-kernels"), allow(dead_code))]
pub(crate) mod groups;

use std::any::Any;
use std::fmt;
use std::ops::Range;
use std::sync::{Arc, Mutex};

use temper_formats::quant::{BlockFormat, Nf4Options, Nf4Tensor, QuantError, QuantType, q8_0};

use crate::BackendError;

/// The stored blocks.
#[derive(Clone)]
enum Blocks {
    /// Blocks that carry their own scales (ggml's), `rows × cols / block` of them.
    SelfContained {
        format: &'static dyn BlockFormat,
        bytes: Arc<[u8]>,
    },
    /// NF4: nibbles, and the double-quantized scales beside them.
    Nf4(Arc<Nf4Tensor>),
}

/// A frozen `[out, in]` weight stored block-quantized; cheap to clone (the blocks are shared).
#[derive(Clone)]
pub struct QuantizedWeight {
    name: Arc<str>,
    ty: QuantType,
    shape: [usize; 2],
    blocks: Blocks,
    copies: DeviceCopies,
}

/// Copies of the weight that backends keep beside the blocks (a GPU backend's upload, one per
/// device), made on first use and shared by clones: repeated products do not upload again.
#[derive(Clone, Default)]
struct DeviceCopies(Arc<Mutex<Vec<Arc<dyn Any + Send + Sync>>>>);

impl fmt::Debug for QuantizedWeight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "QuantizedWeight({} {} {:?}, {} bytes)",
            self.name,
            self.ty,
            self.shape,
            self.storage_bytes()
        )
    }
}

impl QuantizedWeight {
    /// Quantize the `[out, in]` weight `name` (row-major `values`) to `ty`: NF4 as
    /// bitsandbytes' `quantize_4bit(blocksize=64, compress_statistics=True)`, Q8_0 as ggml.
    ///
    /// # Errors
    /// [`BackendError::Quant`] naming the tensor: a type Temper cannot quantize to (the other
    /// ggml types are read from GGUF files, see [`QuantizedWeight::from_blocks`]), a shape the
    /// encoding refuses, a non-finite value.
    pub fn quantize(
        name: &str,
        values: &[f32],
        shape: [usize; 2],
        ty: QuantType,
    ) -> Result<Self, BackendError> {
        let blocks = match ty {
            QuantType::Nf4 => Blocks::Nf4(Arc::new(Nf4Tensor::quantize(
                name,
                &shape,
                values,
                &Nf4Options::default(),
            )?)),
            QuantType::Q8_0 => Blocks::SelfContained {
                format: &q8_0::Q8_0,
                bytes: q8_0::quantize(name, &shape, values)?.into(),
            },
            _ => {
                return Err(BackendError::QuantizeTo {
                    tensor: name.to_string(),
                    ty,
                });
            }
        };
        Ok(Self {
            name: name.into(),
            ty,
            shape,
            blocks,
            copies: DeviceCopies::default(),
        })
    }

    /// A weight from its stored blocks (a GGUF tensor's data as it is in the file).
    ///
    /// # Errors
    /// [`BackendError::Quant`] naming the tensor when `ty` has no self-contained blocks (NF4:
    /// use [`QuantizedWeight::from_nf4`]), when rows are not a whole number of blocks, or when
    /// `bytes` is not exactly the blocks of `shape`.
    pub fn from_blocks(
        name: &str,
        ty: QuantType,
        bytes: impl Into<Arc<[u8]>>,
        shape: [usize; 2],
    ) -> Result<Self, BackendError> {
        let bytes: Arc<[u8]> = bytes.into();
        let Some(format) = ty.block_format() else {
            return Err(BackendError::QuantizeTo {
                tensor: name.to_string(),
                ty,
            });
        };
        let [rows, cols] = shape;
        let (be, bb) = (format.block_elems(), format.block_bytes());
        let expected = rows
            .checked_mul(cols / be)
            .and_then(|blocks| blocks.checked_mul(bb));
        if !cols.is_multiple_of(be) || expected != Some(bytes.len()) {
            return Err(BackendError::QuantLayout {
                tensor: name.to_string(),
                ty,
                shape,
                bytes: bytes.len(),
                block_elems: be,
                block_bytes: bb,
            });
        }
        Ok(Self {
            name: name.into(),
            ty,
            shape,
            blocks: Blocks::SelfContained { format, bytes },
            copies: DeviceCopies::default(),
        })
    }

    /// A weight from an NF4 tensor of rank 2 (`[out, in]`).
    ///
    /// # Errors
    /// [`BackendError::QuantLayout`] for another rank.
    pub fn from_nf4(name: &str, tensor: Nf4Tensor) -> Result<Self, BackendError> {
        let &[rows, cols] = tensor.shape() else {
            return Err(BackendError::QuantLayout {
                tensor: name.to_string(),
                ty: QuantType::Nf4,
                shape: [tensor.len(), 1],
                bytes: tensor.packed().len(),
                block_elems: temper_formats::quant::nf4::NF4_BLOCK,
                block_bytes: temper_formats::quant::nf4::NF4_BLOCK / 2,
            });
        };
        Ok(Self {
            name: name.into(),
            ty: QuantType::Nf4,
            shape: [rows, cols],
            blocks: Blocks::Nf4(Arc::new(tensor)),
            copies: DeviceCopies::default(),
        })
    }

    /// The tensor's name (for errors).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The encoding.
    pub fn quant_type(&self) -> QuantType {
        self.ty
    }

    /// `[out, in]`.
    pub fn shape(&self) -> [usize; 2] {
        self.shape
    }

    /// The NF4 tensor, for NF4 weights (its parts are what a PEFT + bitsandbytes user sees).
    pub fn nf4(&self) -> Option<&Nf4Tensor> {
        match &self.blocks {
            Blocks::Nf4(t) => Some(t),
            Blocks::SelfContained { .. } => None,
        }
    }

    /// The stored blocks, for ggml encodings.
    pub fn block_bytes(&self) -> Option<&[u8]> {
        match &self.blocks {
            Blocks::SelfContained { bytes, .. } => Some(bytes),
            Blocks::Nf4(_) => None,
        }
    }

    /// Bytes the weight occupies (blocks and scales).
    pub fn storage_bytes(&self) -> usize {
        match &self.blocks {
            Blocks::SelfContained { bytes, .. } => bytes.len(),
            Blocks::Nf4(t) => {
                t.packed().len() + t.absmax_codes().len() + 4 * t.nested_absmax().len() + 4 * 256
            }
        }
    }

    /// The copy of type `T` kept with this weight that `matches` accepts (a backend's upload to
    /// one device), or the one `make` builds, kept from then on for as long as the weight (and
    /// its clones) live. Concurrent callers wait for one `make`.
    #[cfg_attr(not(feature = "gpu-kernels"), allow(dead_code))]
    pub(crate) fn device_copy<T: Any + Send + Sync>(
        &self,
        matches: impl Fn(&T) -> bool,
        make: impl FnOnce() -> T,
    ) -> Arc<T> {
        let mut copies = self
            .copies
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let found = copies
            .iter()
            .filter_map(|c| Arc::clone(c).downcast::<T>().ok())
            .find(|c| matches(c));
        if let Some(copy) = found {
            return copy;
        }
        let copy = Arc::new(make());
        copies.push(copy.clone());
        copy
    }

    /// The whole weight decoded, row-major `[out, in]` (merging an adapter into its base,
    /// tests; the products never call it).
    pub fn dequantize(&self) -> Vec<f32> {
        let [rows, cols] = self.shape;
        let mut out = vec![0.0; rows * cols];
        self.dequantize_rows(0..rows, &mut out);
        out
    }

    /// Rows `rows` decoded into `out` (`rows.len() × in` values).
    ///
    /// # Panics
    /// If the rows leave the weight or `out` has another length (the kernels size both).
    pub(crate) fn dequantize_rows(&self, rows: Range<usize>, out: &mut [f32]) {
        let cols = self.shape[1];
        assert!(
            rows.end <= self.shape[0] && out.len() == rows.len() * cols,
            "{self:?}: rows {rows:?} into {} values",
            out.len()
        );
        let (start, end) = (rows.start * cols, rows.end * cols);
        match &self.blocks {
            Blocks::SelfContained { format, bytes } => {
                // Rows are whole blocks (checked at construction).
                let (be, bb) = (format.block_elems(), format.block_bytes());
                let run = &bytes[start / be * bb..end / be * bb];
                expect_decoded(self, format.dequantize_blocks(run, out));
            }
            Blocks::Nf4(t) => {
                let be = temper_formats::quant::nf4::NF4_BLOCK;
                if start.is_multiple_of(be) && (end.is_multiple_of(be) || end == t.len()) {
                    let blocks = start / be..end.div_ceil(be);
                    expect_decoded(self, t.dequantize_blocks(blocks, out));
                } else {
                    // Rows that do not start or end on a block boundary (`in` not a multiple
                    // of 64, as bitsandbytes allows): decode the covering blocks.
                    let (b0, b1) = (start / be, end.div_ceil(be));
                    let mut tmp = vec![0.0; (b1 * be).min(t.len()) - b0 * be];
                    expect_decoded(self, t.dequantize_blocks(b0..b1, &mut tmp));
                    out.copy_from_slice(&tmp[start - b0 * be..end - b0 * be]);
                }
            }
        }
    }
}

/// Decoding checked runs cannot fail; a failure is a bug in the range arithmetic above.
fn expect_decoded(w: &QuantizedWeight, r: Result<(), QuantError>) {
    if let Err(e) = r {
        unreachable!("{w:?}: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_copies_are_made_once_and_shared_by_clones() {
        let w =
            QuantizedWeight::quantize("w", &[0.25; 64], [2, 32], QuantType::Q8_0).expect("q8_0");
        let made = std::cell::Cell::new(0);
        let make = |tag: u32| {
            made.set(made.get() + 1);
            tag
        };
        let a = w.device_copy(|t: &u32| *t == 1, || make(1));
        let b = w.clone().device_copy(|t: &u32| *t == 1, || make(1));
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(made.get(), 1);
        // Another device (here: another tag) gets its own copy.
        let c = w.device_copy(|t: &u32| *t == 2, || make(2));
        assert_eq!((*c, made.get()), (2, 2));
    }
}
