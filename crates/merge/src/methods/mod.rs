//! Merge methods, by mergekit registry name: the one public module of the crate, a catalogue
//! of the [`MergeMethod`] implementations (each usable on its own on a
//! [`TensorJob`](crate::TensorJob)) and of the kernels they share with tests and benchmarks
//! ([`slerp`], [`nuslerp`], [`nearswap`], ...).

mod karcher;
mod linear;
mod model_stock;
mod multislerp;
mod nearswap;
mod nuslerp;
mod passthrough;
mod sce;
mod slerp;
mod sparsify;
mod task_arithmetic;
mod vectors;

pub use karcher::Karcher;
pub use linear::Linear;
pub use model_stock::{ModelStock, model_stock_t};
pub use multislerp::Multislerp;
pub use nearswap::{Nearswap, nearswap};
pub use nuslerp::{Nuslerp, nuslerp, nuslerp_t};
pub use passthrough::Passthrough;
pub use sce::Sce;
pub use slerp::{DOT_THRESHOLD, EPS, Slerp, slerp, slerp_coefficients};
pub use task_arithmetic::{Consensus, Sparsification, TaskArithmetic};

use crate::method::MergeMethod;
use crate::{MergeError, Result};

/// Every method name Temper implements.
pub const METHOD_NAMES: &[&str] = &[
    "linear",
    "slerp",
    "nuslerp",
    "multislerp",
    "karcher",
    "task_arithmetic",
    "ties",
    "dare_linear",
    "dare_ties",
    "breadcrumbs",
    "breadcrumbs_ties",
    "della",
    "della_linear",
    "sce",
    "model_stock",
    "nearswap",
    "passthrough",
];

/// Look up a method by its mergekit name.
///
/// # Errors
/// An unknown name (the message lists the known ones).
pub fn method_by_name(name: &str) -> Result<Box<dyn MergeMethod>> {
    Ok(match name {
        "linear" => Box::new(Linear),
        "slerp" => Box::new(Slerp),
        "nuslerp" => Box::new(Nuslerp),
        "multislerp" => Box::new(Multislerp),
        "karcher" => Box::new(Karcher),
        "task_arithmetic" => Box::new(TaskArithmetic::task_arithmetic()),
        "ties" => Box::new(TaskArithmetic::ties()),
        "dare_linear" => Box::new(TaskArithmetic::dare_linear()),
        "dare_ties" => Box::new(TaskArithmetic::dare_ties()),
        "breadcrumbs" => Box::new(TaskArithmetic::breadcrumbs()),
        "breadcrumbs_ties" => Box::new(TaskArithmetic::breadcrumbs_ties()),
        "della" => Box::new(TaskArithmetic::della()),
        "della_linear" => Box::new(TaskArithmetic::della_linear()),
        "sce" => Box::new(Sce),
        "model_stock" => Box::new(ModelStock),
        "nearswap" => Box::new(Nearswap),
        "passthrough" => Box::new(Passthrough),
        other => {
            return Err(MergeError::Config(format!(
                "unknown merge_method `{other}` (known: {})",
                METHOD_NAMES.join(", ")
            )));
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_name_resolves_to_itself() -> Result<()> {
        for name in METHOD_NAMES {
            assert_eq!(method_by_name(name)?.name(), *name);
        }
        assert!(method_by_name("frankenmerge").is_err());
        Ok(())
    }
}
