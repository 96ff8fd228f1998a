//! `report.html`: one self-contained page (inline SVG plots) rendered by minijinja from
//! `templates/report.html`. The template is auto-escaped (its name ends in `.html`), so a
//! variant, stage or file name can hold any character; only the SVGs, which plotters escapes
//! itself, are marked safe.

use minijinja::{Environment, context};
use serde::Serialize;

use super::PipelineReport;
use super::figures::Figure;
use super::tables::{self, Table};
use crate::{PipelineError, Result};

const TEMPLATE: &str = include_str!("templates/report.html");

#[derive(Serialize)]
struct FigureView<'a> {
    file: &'a str,
    title: &'a str,
    svg: &'a str,
}

#[derive(Serialize)]
struct PerTensor {
    variant: String,
    table: Table,
}

pub(crate) fn html(r: &PipelineReport, figs: &[Figure]) -> Result<String> {
    let mut env = Environment::new();
    let err = |e: minijinja::Error| PipelineError::Report(format!("report.html: {e:#}"));
    env.add_template("report.html", TEMPLATE).map_err(err)?;
    let figures: Vec<FigureView<'_>> = figs
        .iter()
        .map(|f| FigureView {
            file: &f.file,
            title: &f.title,
            svg: &f.svg,
        })
        .collect();
    let per_tensor: Vec<PerTensor> = r
        .merges
        .iter()
        .map(|m| PerTensor {
            variant: m.variant.clone(),
            table: tables::per_tensor(m),
        })
        .collect();
    let ctx = context! {
        name => r.name,
        benchmark => r.benchmark,
        questions => r.questions,
        mode => super::mode_name(r.mode),
        metric => r.metric_name(),
        conclusion => r.conclusion(),
        figures => figures,
        per_tensor => per_tensor,
        facts => tables::facts(r),
        sections => super::sweeps::sections(r),
        tables => context! {
            variants => tables::variants(r),
            categories => tables::categories(r),
            analyses => tables::analyses(r),
            stages => tables::stages(r),
            merges => tables::merges(r),
            weights => super::weights_moved(r),
            hyperparameters => tables::hyperparameters(r),
            models => tables::models(r),
            data_files => tables::data_files(r),
        },
    };
    env.get_template("report.html")
        .and_then(|t| t.render(ctx))
        .map_err(err)
}
