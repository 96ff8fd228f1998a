//! The CLI explains itself: every option and argument of every subcommand has help text,
//! every subcommand ends its help with examples, and `--version` answers.

use clap::{CommandFactory, Parser};

use crate::Cli;

#[test]
fn every_option_has_help_and_every_subcommand_examples() {
    let cli = Cli::command();
    let mut missing = Vec::new();
    for sub in cli.get_subcommands() {
        for arg in sub.get_arguments() {
            let builtin = matches!(arg.get_id().as_str(), "help" | "version");
            if !builtin && arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{} {}", sub.get_name(), arg.get_id()));
            }
        }
        let examples = sub
            .get_after_help()
            .map(|h| h.to_string())
            .unwrap_or_default();
        assert!(
            examples.starts_with("Examples:")
                && examples.contains(&format!("temper {}", sub.get_name())),
            "`temper {} --help` has no examples",
            sub.get_name()
        );
    }
    assert!(missing.is_empty(), "options without help: {missing:?}");
    assert!(cli.get_version().is_some());
}

#[test]
fn trl_names_are_accepted_for_training_flags() {
    let parsed = Cli::try_parse_from([
        "temper",
        "train",
        "sft",
        "--learning_rate",
        "2e-4",
        "--per_device_train_batch_size",
        "4",
        "--num-train-epochs",
        "2",
        "--gradient_accumulation_steps",
        "2",
    ]);
    let Ok(Cli {
        command: crate::Command::Train(args),
    }) = parsed
    else {
        panic!("TRL flag names refused: {parsed:?}");
    };
    assert_eq!(args.lr, Some(2e-4));
    assert_eq!(args.batch_size, Some(4));
    assert_eq!(args.epochs, Some(2.0));
    assert_eq!(args.gradient_accumulation_steps, Some(2));
}
