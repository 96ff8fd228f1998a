//! The crate's entry points: open the models a configuration names, plan the merge, and run
//! it into an HF model directory (written atomically: everything goes to a temporary
//! directory next to the destination, renamed into place only when complete) or into memory.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::config::{MergeConfig, resolve_model_path};
use crate::execute::{NoProgress, Progress, TensorReport, execute};
use crate::files::{read_json, write_file, write_json};
use crate::lora::apply_adapter;
use crate::plan::{MergePlan, PlanOptions};
use crate::sink::MemorySink;
use crate::source::{HostTensor, ModelSource};
use crate::threads::with_threads;
use crate::vocab::{copy_tokenizer_files, write_tokenizer};
use crate::writer::ShardedWriter;
use crate::{MergeError, Result};

/// How to run a merge.
#[derive(Clone)]
pub struct MergeOptions {
    /// Directory relative model paths fall back to (the config file's).
    pub config_dir: Option<PathBuf>,
    /// Largest output shard in bytes (mergekit's default: 5e9).
    pub out_shard_size: u64,
    pub unsafe_truncate_embeddings: bool,
    /// Copy tokenizer files from the base model.
    pub copy_tokenizer: bool,
    /// Write `README.md` (model card) and `mergekit_config.yml`.
    pub write_model_card: bool,
    /// Replace an existing, non-empty output directory.
    pub overwrite: bool,
    /// Seed of the random methods (DARE, DELLA).
    pub seed: u64,
    /// Flush the output to disk before renaming it into place.
    pub sync: bool,
    /// Rayon threads (`None`: rayon's default).
    pub threads: Option<usize>,
}

impl std::fmt::Debug for MergeOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MergeOptions")
            .field("out_shard_size", &self.out_shard_size)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

impl Default for MergeOptions {
    fn default() -> Self {
        Self {
            config_dir: None,
            out_shard_size: 5_000_000_000,
            unsafe_truncate_embeddings: false,
            copy_tokenizer: true,
            write_model_card: true,
            overwrite: false,
            seed: 0,
            sync: false,
            threads: None,
        }
    }
}

/// What a finished merge produced.
#[derive(Debug, Clone)]
pub struct MergeSummary {
    pub out_dir: PathBuf,
    pub shards: Vec<PathBuf>,
    pub tensors: usize,
    pub bytes_written: u64,
    pub bytes_read: u64,
    pub reports: Vec<TensorReport>,
}

/// Open every model the config references (LoRA inputs merged into their base first).
///
/// # Errors
/// A model that cannot be opened, naming it.
pub fn open_models(config: &MergeConfig, config_dir: Option<&Path>) -> Result<Vec<ModelSource>> {
    config
        .referenced_models()
        .iter()
        .map(|r| {
            let dir = resolve_model_path(&r.path, config_dir);
            let mut source = ModelSource::open(&dir, &r.to_string())?;
            if let Some(lora) = &r.lora {
                let adapter = resolve_model_path(lora, config_dir);
                apply_adapter(&mut source, &adapter)?;
            }
            Ok(source)
        })
        .collect()
}

/// Plan a merge from a configuration (opening its models).
///
/// # Errors
/// Everything [`open_models`] and [`MergePlan::new`] reject.
pub fn plan_merge(config: &MergeConfig, options: &MergeOptions) -> Result<MergePlan> {
    let models = open_models(config, options.config_dir.as_deref())?;
    MergePlan::new(config, models, &plan_options(options))
}

/// The planning part of `options`.
fn plan_options(options: &MergeOptions) -> PlanOptions {
    PlanOptions {
        unsafe_truncate_embeddings: options.unsafe_truncate_embeddings,
        config_dir: options.config_dir.clone(),
    }
}

/// Run `config` and write the merged model to `out_dir` (created atomically).
///
/// # Errors
/// Planning errors (before anything is written), I/O errors, a failing tensor. On error no
/// output directory is left behind.
pub fn run_merge(
    config: &MergeConfig,
    config_text: Option<&str>,
    out_dir: &Path,
    options: &MergeOptions,
    progress: &dyn Progress,
) -> Result<MergeSummary> {
    let plan = plan_merge(config, options)?;
    write_plan(&plan, config, config_text, out_dir, options, progress)
}

/// Write a planned merge to `out_dir`.
///
/// # Errors
/// As [`run_merge`].
pub fn write_plan(
    plan: &MergePlan,
    config: &MergeConfig,
    config_text: Option<&str>,
    out_dir: &Path,
    options: &MergeOptions,
    progress: &dyn Progress,
) -> Result<MergeSummary> {
    let tmp = temper_formats::StagingDir::create(out_dir, options.overwrite)?;

    let writer = ShardedWriter::create(tmp.path(), &plan.tensors, options.out_shard_size)?;
    let reports = with_threads(options.threads, || {
        execute(plan, &writer, options.seed, progress)
    })?;
    if let Some(index) = writer.index() {
        write_json(&tmp.path().join("model.safetensors.index.json"), index)?;
    }
    let shards = writer.finish(options.sync)?;

    let base = &plan.models[plan.config_model];
    write_config(plan, base, tmp.path())?;
    if let Some(vocab) = &plan.vocab {
        // A built vocabulary is always written (as mergekit does): the embedding matches it only.
        write_tokenizer(vocab, tmp.path())?;
    } else if options.copy_tokenizer
        && let Some(dir) = base.dir()
    {
        copy_tokenizer_files(dir, tmp.path())?;
    }
    if let Some(template) = &config.chat_template {
        write_chat_template(tmp.path(), template)?;
    }
    if options.write_model_card {
        let yaml = match config_text {
            Some(t) => t.to_string(),
            None => format!("merge_method: {}\n", config.merge_method),
        };
        write_file(&tmp.path().join("mergekit_config.yml"), yaml.as_bytes())?;
        write_file(
            &tmp.path().join("README.md"),
            model_card(plan, &yaml).as_bytes(),
        )?;
    }

    tmp.commit()?;
    let shards = shards
        .iter()
        .filter_map(|p| p.file_name().map(|n| out_dir.join(n)))
        .collect();
    Ok(MergeSummary {
        out_dir: out_dir.to_path_buf(),
        shards,
        tensors: plan.tensors.len(),
        bytes_written: plan.out_bytes(),
        bytes_read: bytes_read(plan),
        reports,
    })
}

fn bytes_read(plan: &MergePlan) -> u64 {
    plan.tensors
        .iter()
        .flat_map(|t| {
            t.inputs.iter().map(move |i| {
                let m = &plan.models[i.model];
                let numel: usize = t.shape.iter().product();
                (numel * m.dtype(&i.tensor).map_or(4, |d| d.size())) as u64
            })
        })
        .sum()
}

fn write_config(plan: &MergePlan, base: &ModelSource, dir: &Path) -> Result<()> {
    let Some(config) = base.config() else {
        return Ok(());
    };
    let mut config = config.clone();
    if let Some(obj) = config.as_object_mut() {
        let dtype = serde_json::Value::String(plan.out_dtype.torch_name().to_string());
        if obj.contains_key("torch_dtype") {
            obj.insert("torch_dtype".into(), dtype.clone());
        }
        obj.insert("dtype".into(), dtype);
        obj.insert("num_hidden_layers".into(), plan.num_layers.into());
        if let Some(types) = layer_types(plan) {
            obj.insert("layer_types".into(), types);
        }
        // mergekit keeps the old vocab_size after truncation (the fixture shows it); a
        // config that disagrees with its embedding does not load, so Temper fixes it.
        if let Some(rows) = plan.vocab_rows {
            obj.insert("vocab_size".into(), rows.into());
        }
    }
    write_json(&dir.join("config.json"), &config)
}

/// The output's `layer_types` (transformers 5's per-layer attention kinds: Qwen2/Qwen3's
/// `sliding_attention` layers), each output layer's entry taken from the config of the model
/// and layer it was sliced from: a stacked model keeps one entry per layer, each layer its
/// window. `None` when the config model has no such list (or a source's list lacks the layer,
/// which the loader then reports), so the config keeps what it had.
fn layer_types(plan: &MergePlan) -> Option<serde_json::Value> {
    let types_of = |model: usize| plan.models[model].config()?.get("layer_types")?.as_array();
    types_of(plan.config_model)?;
    plan.layer_origins
        .iter()
        .map(|&(model, layer)| types_of(model)?.get(layer).cloned())
        .collect::<Option<Vec<_>>>()
        .map(serde_json::Value::Array)
}

fn write_chat_template(dir: &Path, template: &str) -> Result<()> {
    if template == "auto" {
        return Ok(());
    }
    let text = match template {
        "chatml" => CHATML.to_string(),
        other => other.to_string(),
    };
    write_file(&dir.join("chat_template.jinja"), text.as_bytes())?;
    let tc = dir.join("tokenizer_config.json");
    if tc.is_file() {
        let mut v = read_json(&tc)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("chat_template".into(), serde_json::Value::String(text));
        }
        write_json(&tc, &v)?;
    }
    Ok(())
}

const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

fn model_card(plan: &MergePlan, yaml: &str) -> String {
    let models: Vec<String> = plan.refs.iter().map(|r| format!("* `{r}`")).collect();
    format!(
        "---\nlibrary_name: transformers\ntags:\n- merge\n- temper\n---\n# Merged model\n\n\
         Merged with Temper (`temper merge`) using the **{}** method.\n\n## Models\n\n{}\n\n\
         ## Configuration\n\n```yaml\n{}\n```\n",
        plan.method.name(),
        models.join("\n"),
        yaml.trim_end()
    )
}

/// Merge models held in memory (a trainer merging without a disk round trip).
///
/// `models` maps each model name used in `config` to its tensors (HF names) and optional
/// `config.json`. Returns the merged tensors by name and the per-tensor report.
///
/// # Errors
/// As [`MergePlan::new`] and the methods.
pub fn merge_in_memory(
    config: &MergeConfig,
    models: BTreeMap<String, (Option<serde_json::Value>, BTreeMap<String, HostTensor>)>,
    options: &MergeOptions,
) -> Result<(BTreeMap<String, HostTensor>, Vec<TensorReport>)> {
    let mut models = models;
    let sources = config
        .referenced_models()
        .iter()
        .map(|r| {
            let (cfg, tensors) = models.remove(&r.to_string()).ok_or_else(|| {
                MergeError::Config(format!("model {r} is used by the config but was not given"))
            })?;
            Ok(ModelSource::from_tensors(&r.to_string(), cfg, tensors))
        })
        .collect::<Result<Vec<_>>>()?;
    let plan = MergePlan::new(config, sources, &plan_options(options))?;
    let sink = MemorySink::new(&plan);
    let reports = with_threads(options.threads, || {
        execute(&plan, &sink, options.seed, &NoProgress)
    })?;
    Ok((sink.into_tensors(), reports))
}
