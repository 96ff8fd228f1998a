//! mergekit-yaml's own flags, accepted so that a mergekit command line runs unchanged. Those
//! that mean something here do it (`--copy-tokenizer`, `--write-model-card`, `--num-threads`,
//! `--random-seed`); the others print a note saying why they change nothing.

use std::path::PathBuf;

/// The flags of `mergekit-yaml` that Temper has no use for.
#[derive(clap::Args, Debug, Default)]
#[command(next_help_heading = "mergekit flags (accepted; each prints why it changes nothing)")]
pub struct MergekitFlags {
    /// mergekit: arithmetic on the GPU. Temper merges on the CPU at disk speed.
    #[arg(long, alias = "no-cuda")]
    pub cuda: bool,
    /// mergekit: keep results on the GPU. Temper streams one tensor at a time.
    #[arg(long, alias = "no-low-cpu-memory")]
    pub low_cpu_memory: bool,
    /// mergekit: its lazy pickle loader. Temper reads safetensors by memory map.
    #[arg(long, alias = "no-lazy-unpickle")]
    pub lazy_unpickle: bool,
    /// mergekit: allow mixing architectures. Temper checks tensor names and shapes instead.
    #[arg(long, alias = "no-allow-crimes")]
    pub allow_crimes: bool,
    /// mergekit: clone tensors before saving. Temper writes each tensor once, streamed.
    #[arg(long, alias = "no-clone-tensors")]
    pub clone_tensors: bool,
    /// mergekit: run a repository's Python code. Temper never runs model code.
    #[arg(long, alias = "no-trust-remote-code")]
    pub trust_remote_code: bool,
    /// mergekit: safetensors output. Temper always writes safetensors.
    #[arg(long)]
    pub safe_serialization: bool,
    /// mergekit: pickled output. Refused: Temper writes safetensors only.
    #[arg(long)]
    pub no_safe_serialization: bool,
    /// mergekit: GPU placement flags (--read-to-gpu, --multi-gpu, --async-write).
    #[arg(long, alias = "multi-gpu", alias = "async-write")]
    pub read_to_gpu: bool,
    /// mergekit: its download cache. Temper finds hub ids in HF_HUB_CACHE / HF_HOME.
    #[arg(long, value_name = "PATH")]
    pub transformers_cache: Option<PathBuf>,
    /// mergekit: where merged LoRA models are kept. Temper merges adapters in memory.
    #[arg(long, value_name = "PATH")]
    pub lora_merge_cache: Option<PathBuf>,
    /// mergekit: torch device. Temper merges on the CPU.
    #[arg(long, value_name = "DEVICE")]
    pub device: Option<String>,
    /// mergekit: more logging. Temper logs through RUST_LOG (e.g. RUST_LOG=debug).
    #[arg(long, short = 'v')]
    pub verbose: bool,
}

impl MergekitFlags {
    /// One note per flag given, saying why it changes nothing.
    pub fn notes(&self) -> Vec<String> {
        let flags: [(bool, &str, &str); 12] = [
            (
                self.cuda,
                "--cuda",
                "Temper merges on the CPU, at disk speed",
            ),
            (
                self.low_cpu_memory,
                "--low-cpu-memory",
                "Temper holds one tensor at a time",
            ),
            (
                self.lazy_unpickle,
                "--lazy-unpickle",
                "Temper memory-maps safetensors",
            ),
            (
                self.allow_crimes,
                "--allow-crimes",
                "Temper merges tensors of the same names and shapes, whatever the architecture",
            ),
            (
                self.clone_tensors,
                "--clone-tensors",
                "each tensor is written once",
            ),
            (
                self.trust_remote_code,
                "--trust-remote-code",
                "Temper never runs model code",
            ),
            (
                self.safe_serialization,
                "--safe-serialization",
                "the output is always safetensors",
            ),
            (
                self.read_to_gpu,
                "--read-to-gpu/--multi-gpu/--async-write",
                "no GPU is used",
            ),
            (
                self.transformers_cache.is_some(),
                "--transformers-cache",
                "hub ids are found in HF_HUB_CACHE or HF_HOME; set HF_HUB_CACHE instead",
            ),
            (
                self.lora_merge_cache.is_some(),
                "--lora-merge-cache",
                "adapters (model+adapter) are merged in memory",
            ),
            (self.device.is_some(), "--device", "merges run on the CPU"),
            (
                self.verbose,
                "--verbose",
                "set RUST_LOG=debug for more logging",
            ),
        ];
        flags
            .into_iter()
            .filter(|(given, _, _)| *given)
            .map(|(_, flag, why)| format!("note: mergekit's {flag} changes nothing here: {why}"))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        flags: super::MergekitFlags,
    }

    #[test]
    fn mergekit_flags_parse_and_each_gets_a_note() {
        let cmd = Cmd::try_parse_from([
            "merge",
            "--cuda",
            "--no-lazy-unpickle",
            "--allow-crimes",
            "--transformers-cache",
            "/tmp/c",
        ]);
        let notes = cmd.map(|c| c.flags.notes()).unwrap_or_default();
        assert_eq!(notes.len(), 4, "{notes:?}");
        assert!(notes[0].contains("--cuda") && notes[2].contains("--allow-crimes"));
        assert!(notes[3].contains("HF_HUB_CACHE"));
    }
}
