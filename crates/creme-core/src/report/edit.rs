//! `creme edit`'s presentation: the trace and fit lines it prints, the before/after lines, and its
//! `edit.json` document and `report.html` sections.

use serde_json::json;

use crate::edit::EditSettings;
use crate::eval::pair::{verdict_label, MarginChange, Outcome, PairOutcome};
use crate::eval::Verdict;
use crate::pipeline::CremeEdit;

use super::{diff_marked, escape, layer_curve_svg, loss_curve_svg};

/// One edit's run, for its report.
pub struct EditRun<'a> {
    pub label: &'a str,
    /// (clean, perturbed) prompt texts.
    pub prompts: (&'a str, &'a str),
    pub settings: &'a EditSettings,
    pub done: &'a CremeEdit,
    pub before: &'a PairOutcome,
    pub after: &'a PairOutcome,
}

/// The trace and the edit's loss curve, one line each, and the fit's (as `creme edit` prints
/// them; scripts/dev-edit-sweep.sh reads the "-- edit of layer" and "   rows" lines).
pub fn edit_lines(settings: &EditSettings, done: &CremeEdit) -> String {
    let (layer, result) = (done.layer, &done.result);
    let mut out = String::new();
    if let Some(t) = &done.trace {
        let row: Vec<String> = t.scores.iter().map(|s| format!("{s:.2}")).collect();
        let unit = match t.too_close {
            Some(_) => "patched log-probability".to_string(),
            None => format!("{} restoration", t.metric),
        };
        out += &format!(
            "-- causal trace ({unit} per layer, {:.1} s): [{}]\n   key layer {layer}\n",
            done.timings.trace_s,
            row.join(" ")
        );
        if let Some(c) = t.too_close {
            out += &format!("   note: {c}\n");
        }
    }
    let curve: Vec<String> = result
        .losses
        .iter()
        .map(|l| format!("{:.6}", l.total))
        .collect();
    out += &format!(
        "-- edit of layer {layer} W_down ({:?}, lambda {}): {} evaluations, loss {} -> kept step {} (best {:.6} at step {}); {:.3} s (+{:.2} s capture)\n",
        settings.solver, settings.lambda, result.steps, curve.join(" "), result.kept_step, result.best_loss, result.best_step, result.seconds, done.timings.capture_s
    );
    let fit = &done.fit;
    out += &format!(
        "   rows {:?}: {} moved, {} kept; gap left on the moved rows {:.4}; ||dW||/||W|| {:.4}\n",
        settings.rows, fit.moved_rows, fit.kept_rows, fit.remaining_gap, fit.relative_change
    );
    out
}

/// The completions before the edit, clean first.
pub fn before_lines(p: &PairOutcome) -> String {
    format!(
        "-- clean prompt completion [{}]:\n{}\n-- perturbed prompt completion [{}]:\n{}\n",
        verdict_label(p.clean.verdict),
        p.clean.completion,
        verdict_label(p.pert.verdict),
        p.pert.completion
    )
}

/// The decision margin's change, as `creme edit` prints it.
pub fn margin_line(m: &MarginChange) -> String {
    format!(
        "-- decision margin at completion token {} (log p clean - log p perturbed token, perturbed prompt): {:.3} before, {:.3} after\n",
        m.index, m.before, m.after
    )
}

/// The completions after the edit, perturbed first.
pub fn after_lines(p: &PairOutcome) -> String {
    format!(
        "-- perturbed prompt completion after the edit [{}]:\n{}\n-- clean prompt completion after the edit [{}]:\n{}\n",
        verdict_label(p.pert.verdict),
        p.pert.completion,
        verdict_label(p.clean.verdict),
        p.clean.completion
    )
}

/// `edit.json`: the pair, layer, settings, edit, trace, outcomes and timings.
pub fn edit_document(r: &EditRun, total_s: f64, adapter: &str, patch: &str) -> serde_json::Value {
    let (done, result) = (r.done, &r.done.result);
    let outcome =
        |o: &Outcome| json!({"completion": o.completion, "verdict": verdict_label(o.verdict)});
    json!({
        "pair": r.label, "layer": done.layer, "settings": r.settings, "edit": result, "trace": done.trace,
        "before": {"clean": outcome(&r.before.clean), "pert": outcome(&r.before.pert)},
        "after": {"clean": outcome(&r.after.clean), "pert": outcome(&r.after.pert)},
        "timings_s": {"target": done.timings.target_s, "trace": done.timings.trace_s, "capture": done.timings.capture_s, "edit": result.seconds, "total": total_s},
        "adapter": adapter, "patch": patch,
    })
}

/// The report's sections: prompts with the perturbation marked, the trace, the loss curve, the
/// completions before and after.
pub fn edit_sections(r: &EditRun) -> Vec<(String, String)> {
    let (done, result) = (r.done, &r.done.result);
    let cell = |o: &Outcome| {
        let class = if o.verdict == Some(Verdict::Pass) {
            "ok"
        } else {
            "bad"
        };
        format!(
            "<td><b class='{class}'>{}</b><pre>{}</pre></td>",
            verdict_label(o.verdict),
            escape(&o.completion)
        )
    };
    let (clean_marked, pert_marked) = diff_marked(r.prompts.0, r.prompts.1);
    let mut sections = vec![(
        "Prompts (the characters that differ are marked)".to_string(),
        format!("<table class='cols'><tr><th>clean</th><th>perturbed</th></tr><tr><td><pre class='prompt'>{clean_marked}</pre></td><td><pre class='prompt'>{pert_marked}</pre></td></tr></table>"),
    )];
    if let Some(t) = &done.trace {
        let title = format!("{}: restoration by layer", r.label);
        sections.push(("Causal trace".to_string(), layer_curve_svg(t, &title)));
    }
    let s = r.settings;
    let title = format!("layer {} W_down, {:?}", done.layer, s.solver);
    let curve = loss_curve_svg(&result.losses, s.lambda, result.kept_step, &title);
    sections.push(("Edit loss".to_string(), curve));
    sections.push((
        "Completions before and after the edit".to_string(),
        format!(
            "<table class='cols'><tr><th style='width:5em'></th><th>before</th><th>after</th></tr><tr><th>perturbed</th>{}{}</tr><tr><th>clean</th>{}{}</tr></table>",
            cell(&r.before.pert),
            cell(&r.after.pert),
            cell(&r.before.clean),
            cell(&r.after.clean)
        ),
    ));
    sections
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_margin_line_shows_both_margins() {
        let m = MarginChange {
            index: 3,
            before: -1.25,
            after: 0.5,
        };
        let line = margin_line(&m);
        assert!(line.starts_with("-- decision margin at completion token 3 "));
        assert!(line.ends_with(": -1.250 before, 0.500 after\n"), "{line}");
    }
}
