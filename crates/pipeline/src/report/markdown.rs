//! `report.md`: the same sections as the HTML page, the plots linked from `plots/`.

use std::fmt::Write as _;

use super::PipelineReport;
use super::figures::Figure;
use super::tables;

fn figure(s: &mut String, figs: &[Figure], file: &str) {
    if let Some(f) = figs.iter().find(|f| f.file == file) {
        let _ = writeln!(s, "![{}](plots/{})\n\n*{}*\n", f.title, f.file, f.title);
    }
}

const WEIGHTS_LEAD: &str = "## How far the fine-tunes moved\n\n‖ΔW‖/‖W‖: the norm of the change relative to the instruct weights. SLERP interpolates a tensor linearly when the two are nearly colinear (cos > 0.9995); a merge can only surprise where the weights moved apart.\n\n";

pub(crate) fn markdown(r: &PipelineReport, figs: &[Figure]) -> String {
    let mut s = format!("# Temper pipeline: {}\n\n", r.name);
    let _ = writeln!(
        s,
        "Benchmark `{}`: {} questions, scored by {} (`{}`).\n",
        r.benchmark,
        r.questions,
        super::mode_name(r.mode),
        r.metric_name(),
    );
    let _ = writeln!(s, "**{}**\n", r.conclusion());
    s.push_str("## Accuracy\n\n");
    figure(&mut s, figs, "accuracy.svg");
    let _ = writeln!(s, "{}", tables::variants(r).markdown());
    let _ = writeln!(
        s,
        "## Accuracy per category\n\n95% intervals from each category's own standard error.\n\n{}",
        tables::categories(r).markdown()
    );
    if !r.analyses.is_empty() {
        s.push_str("## Merges against their parents\n\nExpected = mean of the two parents; gains in accuracy points; p-values of the paired tests against the better parent.\n\n");
        figure(&mut s, figs, "merge_scatter.svg");
        let _ = writeln!(s, "{}", tables::analyses(r).markdown());
    }
    for section in super::sweeps::sections(r) {
        let _ = writeln!(s, "## {}\n\n{}\n", section.title, section.intro);
        if let Some(file) = &section.figure {
            figure(&mut s, figs, file);
        }
        let _ = writeln!(s, "{}", section.table.markdown());
    }
    if !r.weights.is_empty() {
        s.push_str(WEIGHTS_LEAD);
        figure(&mut s, figs, "weights_moved.svg");
        let _ = writeln!(s, "{}", super::weights_moved(r).markdown());
    }
    s.push_str("## Training\n\n");
    figure(&mut s, figs, "loss.svg");
    figure(&mut s, figs, "train_metrics.svg");
    let _ = writeln!(s, "{}", tables::stages(r).markdown());
    if !r.merges.is_empty() {
        s.push_str("## Merges\n\n");
        figure(&mut s, figs, "merge_distance.svg");
        let _ = writeln!(s, "{}", tables::merges(r).markdown());
    }
    s.push_str("## Run\n\n");
    for (k, v) in tables::facts(r) {
        let _ = writeln!(s, "- **{k}**: {v}");
    }
    let _ = writeln!(
        s,
        "\n### Hyper-parameters\n\n{}",
        tables::hyperparameters(r).markdown()
    );
    let _ = writeln!(s, "### Models\n\n{}", tables::models(r).markdown());
    if !r.data_files.is_empty() {
        let _ = writeln!(s, "### Data\n\n{}", tables::data_files(r).markdown());
    }
    s
}
