//! Tests of [`super::weight_delta`] (a `#[cfg(test)]` module of `delta.rs`): exact figures on
//! small vectors, grouping by layer and module, chunking, and the refusals.

use std::collections::BTreeMap;

use super::*;
use crate::{DType, HostTensor};

fn model(label: &str, tensors: &[(&str, Vec<usize>, Vec<f32>)]) -> ModelSource {
    let map: BTreeMap<String, HostTensor> = tensors
        .iter()
        .map(|(n, shape, data)| {
            (
                (*n).to_string(),
                HostTensor::new(shape.clone(), DType::F32, data.clone()),
            )
        })
        .collect();
    ModelSource::from_tensors(label, None, map)
}

const Q: &str = "model.layers.0.self_attn.q_proj.weight";
const K: &str = "model.layers.0.self_attn.k_proj.weight";
const UP: &str = "model.layers.1.mlp.up_proj.weight";
const NORM: &str = "model.norm.weight";

#[test]
fn an_unchanged_model_has_cosine_one_and_no_change() {
    let a = model(
        "a",
        &[(Q, vec![2], vec![1.0, -2.0]), (NORM, vec![1], vec![1.0])],
    );
    let b = model(
        "b",
        &[(Q, vec![2], vec![1.0, -2.0]), (NORM, vec![1], vec![1.0])],
    );
    let d = weight_delta(&b, &a).expect("delta");
    assert_eq!(d.changed, 0);
    assert_eq!(d.relative_change, 0.0);
    assert_eq!(d.linear_fallbacks, 2);
    assert!(
        d.tensors
            .iter()
            .all(|t| t.cosine == 1.0 && t.norm_ratio == 1.0)
    );
}

#[test]
fn figures_are_exact_on_small_vectors() {
    // parent (3, 4), fine-tuned (4, 3): cos 24/25, ‖Δ‖ = √2, ‖W‖ = 5.
    let parent = model(
        "instruct",
        &[
            (Q, vec![2], vec![3.0, 4.0]),
            (K, vec![2], vec![0.0, 5.0]),
            (UP, vec![2], vec![1.0, 0.0]),
            (NORM, vec![1], vec![2.0]),
        ],
    );
    let tuned = model(
        "cpt",
        &[
            (Q, vec![2], vec![4.0, 3.0]),
            (K, vec![2], vec![0.0, 5.0]),
            (UP, vec![2], vec![2.0, 0.0]),
            (NORM, vec![1], vec![2.0]),
        ],
    );
    let d = weight_delta(&tuned, &parent).expect("delta");
    let q = d.tensors.iter().find(|t| t.name == Q).expect("q");
    assert!((q.cosine - 0.96).abs() < 1e-12);
    assert!((q.relative_change - 2f64.sqrt() / 5.0).abs() < 1e-12);
    assert!((q.norm_ratio - 1.0).abs() < 1e-12);
    assert!(!q.linear_fallback);
    assert_eq!((q.layer, q.group), (Some(0), ModuleGroup::SelfAttn));
    // (1, 0) → (2, 0): colinear, twice the norm, SLERP falls back to linear.
    let up = d.tensors.iter().find(|t| t.name == UP).expect("up");
    assert_eq!(
        (up.cosine, up.relative_change, up.norm_ratio),
        (1.0, 1.0, 2.0)
    );
    assert!(up.linear_fallback);
    assert_eq!(d.changed, 2);
    assert_eq!(d.linear_fallbacks, 3);
    assert!((d.linear_fallback_fraction() - 0.75).abs() < 1e-12);
    // Pooled: layer 0 attention has ‖Δ‖² = 2 over ‖W‖² = 25 + 25.
    let attn = d
        .groups
        .iter()
        .find(|g| g.layer == Some(0) && g.group == ModuleGroup::SelfAttn)
        .expect("layer 0 attention");
    assert_eq!(attn.tensors, 2);
    assert!((attn.relative_change - (2.0f64 / 50.0).sqrt()).abs() < 1e-12);
    assert!((attn.min_cosine - 0.96).abs() < 1e-12);
    assert_eq!(attn.linear_fallbacks, 1);
    // Non-layer tensors come first, then by layer.
    let order: Vec<_> = d.groups.iter().map(|g| (g.layer, g.group)).collect();
    assert_eq!(
        order,
        [
            (None, ModuleGroup::Other),
            (Some(0), ModuleGroup::SelfAttn),
            (Some(1), ModuleGroup::Mlp)
        ]
    );
    // Whole model: ‖Δ‖² = 2 + 1 over 25 + 25 + 1 + 4.
    assert!((d.relative_change - (3.0f64 / 55.0).sqrt()).abs() < 1e-12);
    assert!((d.self_attn_change - (2.0f64 / 50.0).sqrt()).abs() < 1e-12);
    assert_eq!(d.mlp_change, 1.0);
    assert!((d.min_cosine - 0.96).abs() < 1e-12);
}

#[test]
fn chunked_reading_matches_one_pass() {
    let n = CHUNK * 2 + 123;
    let p: Vec<f32> = (0..n)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 7.0)
        .collect();
    let f: Vec<f32> = p
        .iter()
        .enumerate()
        .map(|(i, v)| v + ((i % 13) as f32 - 6.0) * 1e-2)
        .collect();
    let d = weight_delta(
        &model("f", &[(UP, vec![n], f.clone())]),
        &model("p", &[(UP, vec![n], p.clone())]),
    )
    .expect("delta");
    let (mut pp, mut ff, mut pf, mut dd) = (0f64, 0f64, 0f64, 0f64);
    for (&a, &b) in p.iter().zip(&f) {
        let (a, b) = (f64::from(a), f64::from(b));
        pp += a * a;
        ff += b * b;
        pf += a * b;
        dd += (b - a) * (b - a);
    }
    let t = &d.tensors[0];
    assert_eq!(t.numel, n);
    assert!((t.cosine - pf / (pp * ff).sqrt()).abs() < 1e-12);
    assert!((t.relative_change - (dd / pp).sqrt()).abs() < 1e-12);
}

#[test]
fn mismatched_models_are_refused_naming_the_tensor() {
    let parent = model("instruct", &[(Q, vec![2], vec![1.0, 2.0])]);
    let extra = model(
        "cpt",
        &[(Q, vec![2], vec![1.0, 2.0]), (NORM, vec![1], vec![1.0])],
    );
    let e = weight_delta(&extra, &parent)
        .expect_err("extra tensor")
        .to_string();
    assert!(e.contains(NORM) && e.contains("instruct"), "{e}");
    let e = weight_delta(&model("cpt", &[]), &parent)
        .expect_err("missing tensor")
        .to_string();
    assert!(e.contains(Q) && e.contains("cpt"), "{e}");
    let shape = model("cpt", &[(Q, vec![1, 2], vec![1.0, 2.0])]);
    let e = weight_delta(&shape, &parent)
        .expect_err("shape")
        .to_string();
    assert!(e.contains(Q) && e.contains("[1, 2]"), "{e}");
    let nan = model("cpt", &[(Q, vec![2], vec![1.0, f32::NAN])]);
    let e = weight_delta(&nan, &parent).expect_err("NaN").to_string();
    assert!(e.contains(Q) && e.contains("non-finite"), "{e}");
}
