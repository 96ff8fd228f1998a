//! The generalized task-arithmetic family: combine task vectors τᵢ = θᵢ − θ_base and add
//! them to the base, θ = θ_base + λ·Σ wᵢ·sparsify(τᵢ) (÷ Σ wᵢ with `normalize`).
//!
//! | method | sparsification (per model) | sign consensus | `normalize` | `rescale` |
//! |---|---|---|---|---|
//! | `task_arithmetic` | — | — | false | false |
//! | `ties` | top-`density` by magnitude | sum | true | false |
//! | `dare_linear` | Bernoulli(`density`) | — | false | true |
//! | `dare_ties` | Bernoulli(`density`) | sum | false | true |
//! | `breadcrumbs` | drop top `gamma` and bottom by magnitude | — | false | false |
//! | `breadcrumbs_ties` | as `breadcrumbs` | sum | false | false |
//! | `della` | rank-weighted Bernoulli (`density` ± `epsilon`) | sum | true | true |
//! | `della_linear` | as `della` | — | false | true |
//!
//! The sparsifiers are in [`sparsify`]; `rescale` L1-rescales each sparsified τᵢ back to its
//! dense L1 norm. The sign consensus ("sum" election, TIES) keeps, per element, only the
//! weighted task vectors whose sign matches the sign of their sum (≥ 0 counts as +), and then
//! `normalize` divides by the sum of the weights of the kept ones (1 where none is kept);
//! without consensus it divides by Σ wᵢ (1 where |Σ wᵢ| < 1e-8).
//!
//! Every method takes mergekit's full parameter set: global `int8_mask` (false; only the
//! storage type of mergekit's mask, so it changes nothing here), `normalize`, `rescale`,
//! `lambda` (1.0); per model `weight` (required) and `density` (1.0), plus `gamma` (0.01) for
//! the breadcrumbs methods and `epsilon` (0.15) for the DELLA ones. Like mergekit,
//! `task_arithmetic` accepts (and ignores) `density` and `rescale`.
//!
//! The random methods (DARE, DELLA) draw their masks from the tensor's seed mixed with the
//! input's index ([`sparsify::input_seed`]), so a merge is reproducible for a given
//! `--random-seed` and independent of the thread count. They cannot reproduce mergekit's
//! masks (torch's generator), only their distribution.
//!
//! Like mergekit, these methods compute in the *load dtype*: on bf16 inputs every operation is
//! rounded to bf16 (weights too: 0.7 → 0.69921875), except the sums over the model axis, which
//! torch accumulates in f32 and rounds once. With f32 inputs the results are bit-identical to
//! mergekit's for the deterministic methods.

use rayon::prelude::*;

use crate::method::{
    BaseModel, CHUNK, ElementwiseKernel, MergeMethod, MergeOutput, Merged, MethodReport,
    MethodSpec, ParamSpec, TensorJob,
};
use crate::methods::sparsify;
use crate::{DType, MergeError, Result};

/// How task vectors are sparsified before being combined.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sparsification {
    /// Keep the top-`density` fraction by magnitude (TIES).
    Magnitude,
    /// Keep each entry with probability `density` (DARE).
    Random,
    /// Drop the top-`gamma` outliers and the smallest entries, keeping `density` (Model
    /// Breadcrumbs).
    MagnitudeOutliers,
    /// Keep each entry with a probability rising with its magnitude rank in its row, in
    /// `[density − epsilon, density + epsilon]` (DELLA).
    DellaMagprune,
}

/// How signs are reconciled across models.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Consensus {
    /// Sign of the weighted sum (TIES' "sum" election).
    Sum,
}

/// A method of the family.
#[derive(Debug, Clone, Copy)]
pub struct TaskArithmetic {
    name: &'static str,
    spec: &'static MethodSpec,
    sparsification: Option<Sparsification>,
    consensus: Option<Consensus>,
}

/// mergekit's shared parameters of the family, with the method's defaults.
macro_rules! gta_spec {
    ($normalize:expr, $rescale:expr, [$($extra:expr),*]) => {
        MethodSpec {
            base: BaseModel::Required,
            min_inputs: 2,
            max_inputs: None,
            global: &[
                ParamSpec::optional("int8_mask", 0.0),
                ParamSpec::optional("normalize", $normalize),
                ParamSpec::optional("rescale", $rescale),
                ParamSpec::optional("lambda", 1.0),
            ],
            per_model: &[
                ParamSpec::required("weight"),
                ParamSpec::optional("density", 1.0),
                $($extra),*
            ],
        }
    };
}

static TA_SPEC: MethodSpec = gta_spec!(0.0, 0.0, []);
static TIES_SPEC: MethodSpec = gta_spec!(1.0, 0.0, []);
static DARE_SPEC: MethodSpec = gta_spec!(0.0, 1.0, []);
static BREADCRUMBS_SPEC: MethodSpec = gta_spec!(0.0, 0.0, [ParamSpec::optional("gamma", 0.01)]);
static DELLA_SPEC: MethodSpec = gta_spec!(1.0, 1.0, [ParamSpec::optional("epsilon", 0.15)]);
static DELLA_LINEAR_SPEC: MethodSpec = gta_spec!(0.0, 1.0, [ParamSpec::optional("epsilon", 0.15)]);

impl TaskArithmetic {
    const fn new(
        name: &'static str,
        spec: &'static MethodSpec,
        sparsification: Option<Sparsification>,
        consensus: Option<Consensus>,
    ) -> Self {
        Self {
            name,
            spec,
            sparsification,
            consensus,
        }
    }

    /// `task_arithmetic`: θ_base + λ·Σ wᵢτᵢ.
    #[allow(clippy::self_named_constructors)] // named after the method, like its siblings
    pub fn task_arithmetic() -> Self {
        Self::new("task_arithmetic", &TA_SPEC, None, None)
    }

    /// `ties`: magnitude pruning, sign election, disjoint mean.
    pub fn ties() -> Self {
        Self::new(
            "ties",
            &TIES_SPEC,
            Some(Sparsification::Magnitude),
            Some(Consensus::Sum),
        )
    }

    /// `dare_linear`: random drop with L1 rescale, then task arithmetic.
    pub fn dare_linear() -> Self {
        Self::new(
            "dare_linear",
            &DARE_SPEC,
            Some(Sparsification::Random),
            None,
        )
    }

    /// `dare_ties`: random drop with L1 rescale, then TIES' sign election (no normalisation
    /// by default).
    pub fn dare_ties() -> Self {
        Self::new(
            "dare_ties",
            &DARE_SPEC,
            Some(Sparsification::Random),
            Some(Consensus::Sum),
        )
    }

    /// `breadcrumbs`: drop outliers and small entries, then task arithmetic.
    pub fn breadcrumbs() -> Self {
        Self::new(
            "breadcrumbs",
            &BREADCRUMBS_SPEC,
            Some(Sparsification::MagnitudeOutliers),
            None,
        )
    }

    /// `breadcrumbs_ties`: breadcrumbs' sparsification with TIES' sign election.
    pub fn breadcrumbs_ties() -> Self {
        Self::new(
            "breadcrumbs_ties",
            &BREADCRUMBS_SPEC,
            Some(Sparsification::MagnitudeOutliers),
            Some(Consensus::Sum),
        )
    }

    /// `della`: magnitude-ranked random drop with L1 rescale, sign election, normalisation.
    pub fn della() -> Self {
        Self::new(
            "della",
            &DELLA_SPEC,
            Some(Sparsification::DellaMagprune),
            Some(Consensus::Sum),
        )
    }

    /// `della_linear`: DELLA's drop without the sign election.
    pub fn della_linear() -> Self {
        Self::new(
            "della_linear",
            &DELLA_LINEAR_SPEC,
            Some(Sparsification::DellaMagprune),
            None,
        )
    }

    /// Sparsify input `i`'s task vector `delta` in place, checking its parameters.
    fn sparsify(
        &self,
        job: &TensorJob<'_>,
        i: usize,
        method: Sparsification,
        rescale: bool,
        delta: &mut [f32],
    ) -> Result<()> {
        let param = |name: &str, default: f64| job.params.model(i, name).unwrap_or(default);
        let bad = |msg: String| {
            MergeError::Parameter(format!(
                "{}: {msg} (input {i}, tensor {})",
                self.name, job.name
            ))
        };
        let density = param("density", 1.0);
        if density.is_nan() || density < 0.0 {
            return Err(bad(format!("`density` must be ≥ 0, got {density}")));
        }
        let dtype = job.dtype;
        match method {
            Sparsification::Magnitude => sparsify::magnitude(delta, density, rescale, dtype),
            Sparsification::Random => sparsify::bernoulli(
                delta,
                density,
                rescale,
                dtype,
                sparsify::input_seed(job.seed, i),
            ),
            Sparsification::MagnitudeOutliers => {
                let gamma = param("gamma", 0.01);
                if gamma.is_nan() || gamma < 0.0 {
                    return Err(bad(format!("`gamma` must be ≥ 0, got {gamma}")));
                }
                sparsify::magnitude_outliers(delta, density, gamma, rescale, dtype);
            }
            Sparsification::DellaMagprune => {
                let epsilon = param("epsilon", 0.15);
                if density > 0.0
                    && density < 1.0
                    && !(density - epsilon > 0.0 && density + epsilon < 1.0)
                {
                    return Err(bad(format!(
                        "`epsilon` must keep density ± epsilon inside (0, 1), got density \
                         {density} and epsilon {epsilon}"
                    )));
                }
                sparsify::della_magprune(
                    delta,
                    job.shape,
                    density,
                    epsilon,
                    rescale,
                    dtype,
                    sparsify::input_seed(job.seed, i),
                );
            }
        }
        Ok(())
    }
}

/// Elementwise task arithmetic (no sparsification, no consensus): streamed chunk by chunk.
struct TaKernel {
    base: usize,
    others: Vec<(usize, f32)>,
    divisor: Option<f32>,
    lambda: Option<f32>,
    dtype: DType,
}

impl ElementwiseKernel for TaKernel {
    fn apply(&self, inputs: &[&[f32]], out: &mut [f32]) {
        let r = |x: f32| self.dtype.round(x);
        let base = inputs[self.base];
        for (j, o) in out.iter_mut().enumerate() {
            let b = base[j];
            // Σ over the model axis: f32 accumulation, one rounding (torch's sum).
            let mut acc = 0f32;
            for (k, (i, w)) in self.others.iter().enumerate() {
                let d = r(r(inputs[*i][j] - b) * w);
                acc = if k == 0 { d } else { acc + d };
            }
            let mut mixed = r(acc);
            if let Some(div) = self.divisor {
                mixed = r(mixed / div);
            }
            if let Some(l) = self.lambda {
                mixed = r(mixed * l);
            }
            *o = r(b + mixed);
        }
    }
}

impl MergeMethod for TaskArithmetic {
    fn name(&self) -> &'static str {
        self.name
    }

    fn spec(&self) -> &'static MethodSpec {
        self.spec
    }

    fn merge<'a>(&self, job: &'a TensorJob<'a>) -> Result<MergeOutput<'a>> {
        let dtype = job.dtype;
        let r = |x: f32| dtype.round(x);
        let base = job.base_index(self.name)?;
        let others = job.others();
        let weights: Vec<f32> = others
            .iter()
            .map(|&i| {
                job.params
                    .model(i, "weight")
                    .map(|w| r(w as f32))
                    .ok_or_else(|| {
                        MergeError::Parameter(format!(
                            "{}: input {i} has no `weight` for tensor {}",
                            self.name, job.name
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        let normalize = job.params.flag("normalize")?;
        let rescale = job.params.flag("rescale")?;
        let lambda = job.params.get("lambda")? as f32;
        let lambda = (lambda != 1.0).then_some(r(lambda));

        if self.sparsification.is_none() && self.consensus.is_none() {
            let divisor = normalize.then(|| {
                let s = r(weights.iter().fold(0f32, |s, w| s + w));
                if s.abs() < 1e-8 { 1.0 } else { s }
            });
            return Ok(MergeOutput {
                values: Merged::Elementwise(Box::new(TaKernel {
                    base,
                    others: others.iter().copied().zip(weights).collect(),
                    divisor,
                    lambda,
                    dtype,
                })),
                report: MethodReport::default(),
            });
        }

        // Dense path: sparsification needs whole task vectors. The inputs' buffers are reused
        // for the task vectors.
        let mut all = job.load_all();
        let base_v = std::mem::take(&mut all[base]);
        let n = base_v.len();
        let mut deltas: Vec<Vec<f32>> = Vec::with_capacity(others.len());
        let mut kept = 0usize;
        for (&i, &w) in others.iter().zip(&weights) {
            let mut d = std::mem::take(&mut all[i]);
            d.par_iter_mut()
                .zip(base_v.par_iter())
                .for_each(|(x, b)| *x = r(*x - b));
            if let Some(method) = self.sparsification {
                self.sparsify(job, i, method, rescale, &mut d)?;
            }
            kept += d.par_iter().filter(|v| **v != 0.0).count();
            d.par_iter_mut().for_each(|v| *v = r(*v * w));
            deltas.push(d);
        }
        drop(all);
        let consensus = self.consensus;
        let combine = |j: usize| -> f32 {
            let (mixed, div) = match consensus {
                Some(Consensus::Sum) => {
                    let total = r(deltas.iter().fold(0f32, |s, d| s + d[j]));
                    let majority = if total >= 0.0 { 1.0 } else { -1.0 };
                    let (mut m, mut dv) = (0f32, 0f32);
                    for (d, w) in deltas.iter().zip(&weights) {
                        let v = d[j];
                        let sign = if v > 0.0 {
                            1.0
                        } else if v < 0.0 {
                            -1.0
                        } else {
                            0.0
                        };
                        if sign == majority {
                            m += v;
                            dv += w;
                        }
                    }
                    (r(m), r(dv))
                }
                None => (
                    r(deltas.iter().fold(0f32, |s, d| s + d[j])),
                    r(weights.iter().fold(0f32, |s, w| s + w)),
                ),
            };
            let mut mixed = mixed;
            if normalize {
                let div = if consensus.is_some() {
                    if div == 0.0 { 1.0 } else { div }
                } else if div.abs() < 1e-8 {
                    1.0
                } else {
                    div
                };
                mixed = r(mixed / div);
            }
            if let Some(l) = lambda {
                mixed = r(mixed * l);
            }
            r(base_v[j] + mixed)
        };
        let mut out = vec![0f32; n];
        out.par_chunks_mut(CHUNK)
            .enumerate()
            .for_each(|(c, chunk)| {
                for (k, o) in chunk.iter_mut().enumerate() {
                    *o = combine(c * CHUNK + k);
                }
            });
        let mut report = MethodReport::default();
        if !others.is_empty() && n > 0 {
            report.extra.insert(
                "kept_fraction".into(),
                kept as f64 / (n * others.len()) as f64,
            );
        }
        Ok(MergeOutput {
            values: Merged::Dense(out),
            report,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::method::ResolvedParams;
    use crate::method::testing::with_job;
    use crate::source::InputTensor;

    /// Run `method` on `models` (each with weight and optional density) over `base` (last
    /// input), materialising elementwise results.
    fn run(
        method: &TaskArithmetic,
        base: &[f32],
        models: &[(&[f32], f64, f64)],
        seed: u64,
        dtype: DType,
    ) -> Result<Vec<f32>> {
        run_with(method, base, models, seed, dtype, &[])
    }

    fn run_with(
        method: &TaskArithmetic,
        base: &[f32],
        models: &[(&[f32], f64, f64)],
        seed: u64,
        dtype: DType,
        globals: &[(&'static str, f64)],
    ) -> Result<Vec<f32>> {
        let mut p = ResolvedParams::default();
        for spec in method.spec().global {
            p.global.insert(spec.name, spec.default.unwrap_or(0.0));
        }
        p.global.extend(globals.iter().copied());
        for (_, w, density) in models {
            let mut m = std::collections::BTreeMap::new();
            for spec in method.spec().per_model {
                if let Some(d) = spec.default {
                    m.insert(spec.name, d);
                }
            }
            m.insert("weight", *w);
            m.insert("density", *density);
            p.per_model.push(m);
        }
        p.per_model.push(Default::default());
        let data: Vec<&[f32]> = models.iter().map(|(d, _, _)| *d).chain([base]).collect();
        with_job(
            &[base.len()],
            &data,
            Some(models.len()),
            &p,
            dtype,
            seed,
            |job| match method.merge(job)?.values {
                Merged::Dense(v) => Ok(v),
                Merged::Elementwise(k) => {
                    let views: Vec<Vec<f32>> = job.inputs.iter().map(InputTensor::to_vec).collect();
                    let views: Vec<&[f32]> = views.iter().map(Vec::as_slice).collect();
                    let mut out = vec![0f32; base.len()];
                    k.apply(&views, &mut out);
                    Ok(out)
                }
            },
        )
    }

    fn data(n: usize, salt: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let x = (i as u32)
                    .wrapping_mul(2_654_435_761)
                    .wrapping_add(salt * 97);
                (x % 1000) as f32 / 500.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn full_density_dare_and_della_equal_task_arithmetic() -> Result<()> {
        let (base, a, b) = (data(300, 1), data(300, 2), data(300, 3));
        let models = [(&a[..], 0.7, 1.0), (&b[..], 0.3, 1.0)];
        for dtype in [DType::F32, DType::BF16] {
            let ta = run(&TaskArithmetic::task_arithmetic(), &base, &models, 1, dtype)?;
            for m in [
                TaskArithmetic::dare_linear(),
                TaskArithmetic::della_linear(),
                TaskArithmetic::breadcrumbs(),
            ] {
                assert_eq!(run(&m, &base, &models, 1, dtype)?, ta, "{}", m.name);
            }
            // With the sign election, full density equals TIES at full density.
            let ties = run(&TaskArithmetic::ties(), &base, &models, 1, dtype)?;
            assert_eq!(
                run(&TaskArithmetic::della(), &base, &models, 1, dtype)?,
                ties
            );
            let norm = [("normalize", 1.0)];
            for m in [
                TaskArithmetic::dare_ties(),
                TaskArithmetic::breadcrumbs_ties(),
            ] {
                assert_eq!(
                    run_with(&m, &base, &models, 1, dtype, &norm)?,
                    ties,
                    "{}",
                    m.name
                );
            }
        }
        Ok(())
    }

    #[test]
    fn dare_is_seeded() -> Result<()> {
        let (base, a, b) = (data(5000, 1), data(5000, 2), data(5000, 3));
        let models = [(&a[..], 0.5, 0.3), (&b[..], 0.5, 0.3)];
        let m = TaskArithmetic::dare_ties();
        let x = run(&m, &base, &models, 7, DType::F32)?;
        assert_eq!(x, run(&m, &base, &models, 7, DType::F32)?);
        assert_ne!(x, run(&m, &base, &models, 8, DType::F32)?);
        // The two inputs get different masks even with identical task vectors: some
        // elements keep one copy (≈ 2τ after rescale), others both (≈ 4τ).
        let same = [(&a[..], 1.0, 0.5), (&a[..], 1.0, 0.5)];
        let lin = run(&TaskArithmetic::dare_linear(), &base, &same, 3, DType::F32)?;
        let ratios: Vec<f32> = lin
            .iter()
            .zip(&base)
            .zip(&a)
            .filter(|((o, b), x)| (**x - **b).abs() > 0.1 && **o != **b)
            .map(|((o, b), x)| (o - b) / (x - b))
            .collect();
        let (lo, hi) = ratios
            .iter()
            .fold((f32::MAX, f32::MIN), |(l, h), r| (l.min(*r), h.max(*r)));
        assert!(hi / lo > 1.5, "{lo} {hi}");
        Ok(())
    }

    #[test]
    fn dare_rescale_keeps_the_l1_mass() -> Result<()> {
        let base = vec![0f32; 20_000];
        let a = data(20_000, 5);
        let out = run(
            &TaskArithmetic::dare_linear(),
            &base,
            &[(&a[..], 1.0, 0.2)],
            11,
            DType::F32,
        )?;
        let l1 = |v: &[f32]| v.iter().map(|x| f64::from(x.abs())).sum::<f64>();
        assert!((l1(&out) - l1(&a)).abs() / l1(&a) < 1e-5);
        let kept = out.iter().filter(|v| **v != 0.0).count() as f64 / 20_000.0;
        assert!((kept - 0.2).abs() < 0.02, "{kept}");
        Ok(())
    }

    #[test]
    fn breadcrumbs_drops_outliers_and_small_entries() -> Result<()> {
        let base = vec![0f32; 100];
        let a: Vec<f32> = (1..=100).map(|v| v as f32).collect();
        // density 0.5, gamma 0.1: keep magnitudes 41..=90.
        let m = TaskArithmetic::breadcrumbs();
        let shape = vec![100];
        let inputs = [
            InputTensor::from_f32(shape.clone(), &a),
            InputTensor::from_f32(shape.clone(), &base),
        ];
        let mut p = ResolvedParams::default();
        for spec in m.spec().global {
            p.global.insert(spec.name, spec.default.unwrap_or(0.0));
        }
        p.per_model = vec![
            [("weight", 1.0), ("density", 0.5), ("gamma", 0.1)].into(),
            Default::default(),
        ];
        let job = TensorJob {
            name: "w",
            shape: &shape,
            inputs: &inputs,
            base: Some(1),
            params: &p,
            dtype: DType::F32,
            seed: 0,
        };
        let Merged::Dense(out) = m.merge(&job)?.values else {
            return Err(MergeError::Config("expected dense".into()));
        };
        let want: Vec<f32> = a
            .iter()
            .map(|v| if (41.0..=90.0).contains(v) { *v } else { 0.0 })
            .collect();
        assert_eq!(out, want);
        Ok(())
    }

    #[test]
    fn della_checks_epsilon() {
        let (base, a) = (data(10, 1), data(10, 2));
        let r = run(
            &TaskArithmetic::della(),
            &base,
            &[(&a[..], 1.0, 0.1)],
            0,
            DType::F32,
        );
        let msg = r.err().map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("epsilon"), "{msg}");
        assert!(
            run(
                &TaskArithmetic::della(),
                &base,
                &[(&a[..], 1.0, 0.5)],
                0,
                DType::F32
            )
            .is_ok()
        );
    }

    #[test]
    fn negative_density_is_an_error() {
        let (base, a) = (data(10, 1), data(10, 2));
        let r = run(
            &TaskArithmetic::ties(),
            &base,
            &[(&a[..], 1.0, -0.5)],
            0,
            DType::F32,
        );
        assert!(r.is_err());
    }
}
