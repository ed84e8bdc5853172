//! `creme trace`'s presentation: its `trace.json` document, `report.html` sections and SVGs.

use serde_json::json;

use crate::trace::{GridTrace, LayerTrace, TraceSetup};

use super::{escape, grid_heatmap_svg, layer_curve_svg};

/// One trace run, for its report.
pub struct TraceRun<'a> {
    pub model: &'a str,
    pub label: &'a str,
    /// The restoration metric's name (logprob, pass).
    pub metric: &'a str,
    pub target_tokens: usize,
    /// (clean, perturbed) prompt texts.
    pub prompts: (&'a str, &'a str),
    pub setup: &'a TraceSetup,
    /// The target decoded, and its length in tokens.
    pub target: (&'a str, usize),
    /// Every prompt position patched (or the pass metric's trace), only the differing ones.
    pub all: &'a LayerTrace,
    pub diff: &'a LayerTrace,
    pub grid: Option<&'a GridTrace>,
    /// The pass metric's account (null for the logprob metric).
    pub pass: serde_json::Value,
    /// Seconds of the target and capture, and of the layer trace.
    pub timings: (f64, f64),
    pub adapter: &'a str,
}

/// `trace.svg`: the layer trace over every prompt position.
pub fn trace_svg(all: &LayerTrace, label: &str) -> String {
    layer_curve_svg(all, &format!("{label}: restoration by layer"))
}

/// `grid.svg`: the layer x position grid, positions labelled by their perturbed token.
pub fn grid_svg(grid: &GridTrace, labels: &[String], label: &str) -> String {
    let title = format!("{label}: restoration, one position patched at one layer");
    grid_heatmap_svg(grid, labels, &title)
}

/// The report's sections: the prompts and target, both layer traces, and the grid's `svg`.
pub fn trace_sections(r: &TraceRun, grid_svg: Option<String>) -> Vec<(String, String)> {
    let (clean, pert) = r.prompts;
    let label = r.label;
    let mut sections = vec![
        ("Prompts".to_string(), format!("<table><tr><th>clean</th><th>perturbed</th></tr><tr><td><pre>{}</pre></td><td><pre>{}</pre></td></tr></table><p>Target (clean greedy continuation, {} tokens): <pre>{}</pre></p>",
            escape(clean), escape(pert), r.target.1, escape(r.target.0))),
        ("Layer trace: every prompt position patched".to_string(), layer_curve_svg(r.all, &format!("{label}: restoration by layer (all prompt positions)"))),
        ("Layer trace: only differing positions patched".to_string(), layer_curve_svg(r.diff, &format!("{label}: restoration by layer (differing positions)"))),
    ];
    if let Some(c) = r.all.too_close {
        sections.insert(
            1,
            (
                "Not normalised".to_string(),
                format!("<p>{}.</p>", escape(&c.to_string())),
            ),
        );
    }
    if let Some(svg) = grid_svg {
        sections.push(("Layer x position grid".to_string(), svg));
    }
    sections
}

/// `trace.json`.
pub fn trace_document(r: &TraceRun) -> serde_json::Value {
    let s = r.setup;
    json!({
        "model": r.model, "pair": r.label, "metric": r.metric,
        "settings": {"target_tokens": r.target_tokens, "positions": ["all", "differing"]},
        "clean_tokens": s.clean.len(), "pert_tokens": s.pert.len(), "frame": s.frame,
        "target": r.target.0, "lp_clean": s.lp_clean, "lp_pert": s.lp_pert,
        "all_positions": r.all, "differing_positions": r.diff, "grid": r.grid, "pass": r.pass,
        "key_layer": r.all.key_layer,
        "timings_s": {"target_and_capture": r.timings.0, "layer_trace": r.timings.1},
        "adapter": r.adapter,
    })
}
