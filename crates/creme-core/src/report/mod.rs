//! SVG charts and self-contained HTML reports (pure string building, so the browser build can
//! draw the same pictures); the experiment's tables (`tables`) and the efficacy document
//! (`efficacy`) in markdown.

pub mod edit;
pub mod efficacy;
pub mod tables;
pub mod trace;

use crate::trace::{GridTrace, LayerTrace};

pub fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The two texts as HTML with the characters that differ marked (`<mark>`), from a
/// character-level diff (the `similar` crate's Myers diff): a typo shows where it is in both.
pub fn diff_marked(a: &str, b: &str) -> (String, String) {
    use similar::{ChangeTag, TextDiff};
    let diff = TextDiff::from_chars(a, b);
    let (mut left, mut right) = (String::new(), String::new());
    for op in diff.ops() {
        let (mut old, mut new, mut same) = (String::new(), String::new(), String::new());
        for c in diff.iter_changes(op) {
            match c.tag() {
                ChangeTag::Equal => same.push_str(c.value()),
                ChangeTag::Delete => old.push_str(c.value()),
                ChangeTag::Insert => new.push_str(c.value()),
            }
        }
        left += &escape(&same);
        right += &escape(&same);
        if !old.is_empty() {
            left += &format!("<mark>{}</mark>", escape(&old));
        }
        if !new.is_empty() {
            right += &format!("<mark>{}</mark>", escape(&new));
        }
    }
    (left, right)
}

/// Per-layer restoration (line) over the clean-vs-perturbed distance (bars), key layer marked.
/// The dashed lines are no restoration and full restoration (0 and 1), or, for a pair too close
/// to normalise, the perturbed and the clean run's log-probabilities, with a note saying so.
pub fn layer_curve_svg(t: &LayerTrace, title: &str) -> String {
    let (w, h, ml, mr, mt, mb) = (720.0, 300.0, 56.0, 56.0, 34.0, 40.0);
    let n = t.scores.len().max(1);
    let pw = (w - ml - mr) / n as f64;
    let (none, full, unit) = match t.too_close {
        Some(c) => (
            c.lp_pert,
            c.lp_clean,
            "patched log-probability (nats)".to_string(),
        ),
        None => (0.0, 1.0, format!("restoration ({})", t.metric)),
    };
    let smin = t.scores.iter().cloned().fold(none.min(full), f64::min);
    let smax = t.scores.iter().cloned().fold(none.max(full), f64::max);
    let dmax = t.distances.iter().cloned().fold(1e-12f64, f64::max);
    let y_of = |v: f64| mt + (h - mt - mb) * (1.0 - (v - smin) / (smax - smin).max(1e-12));
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {w} {h}' width='{w}' height='{h}' font-family='sans-serif' font-size='11'>\
         <rect width='100%' height='100%' fill='#fff'/><text x='{ml}' y='18' font-size='13' font-weight='bold'>{}</text>",
        escape(title)
    );
    for (l, d) in t.distances.iter().enumerate() {
        let bh = (h - mt - mb) * d / dmax;
        let x = ml + l as f64 * pw;
        let fill = if l == t.key_layer {
            "#f6c667"
        } else {
            "#dbe4f3"
        };
        s += &format!("<rect x='{:.1}' y='{:.1}' width='{:.1}' height='{:.1}' fill='{fill}'><title>layer {l}: |h_clean - h_pert| = {d:.2}</title></rect>", x + 1.0, h - mb - bh, pw - 2.0, bh);
    }
    for (v, what) in [(none, "perturbed run"), (full, "clean run")] {
        let y = y_of(v);
        s += &format!("<line x1='{ml}' x2='{}' y1='{y:.1}' y2='{y:.1}' stroke='#999' stroke-dasharray='3 3'><title>{what}: {v:.3}</title></line>", w - mr);
    }
    if let Some(c) = &t.too_close {
        s += &format!(
            "<text x='{ml}' y='30' font-size='10' fill='#b45309'>{}</text>",
            escape(&format!(
                "Not a ratio: log p(target) clean {:.2} vs perturbed {:.2}, too close to normalise",
                c.lp_clean, c.lp_pert
            ))
        );
    }
    let pts: Vec<String> = t
        .scores
        .iter()
        .enumerate()
        .map(|(l, v)| format!("{:.1},{:.1}", ml + (l as f64 + 0.5) * pw, y_of(*v)))
        .collect();
    s += &format!(
        "<polyline points='{}' fill='none' stroke='#2456c8' stroke-width='2'/>",
        pts.join(" ")
    );
    for (l, v) in t.scores.iter().enumerate() {
        s += &format!("<circle cx='{:.1}' cy='{:.1}' r='3' fill='#2456c8'><title>layer {l}: {unit} {v:.3}</title></circle>", ml + (l as f64 + 0.5) * pw, y_of(*v));
        if l % 2 == 0 || n <= 16 {
            s += &format!(
                "<text x='{:.1}' y='{}' text-anchor='middle'>{l}</text>",
                ml + (l as f64 + 0.5) * pw,
                h - mb + 14.0
            );
        }
    }
    s += &format!(
        "<text x='{:.1}' y='{}' text-anchor='middle'>layer (key layer {} highlighted)</text>\
         <text x='12' y='{:.1}' transform='rotate(-90 12 {:.1})' text-anchor='middle' fill='#2456c8'>{}</text>\
         <text x='{:.1}' y='{:.1}' transform='rotate(90 {:.1} {:.1})' text-anchor='middle' fill='#8a9bb8'>L2 distance clean vs perturbed</text>\
         <text x='{}' y='{:.1}' text-anchor='end'>{smax:.2}</text><text x='{}' y='{:.1}' text-anchor='end'>{smin:.2}</text></svg>",
        ml + (w - ml - mr) / 2.0,
        h - 8.0,
        t.key_layer,
        h / 2.0,
        h / 2.0,
        unit,
        w - 14.0,
        h / 2.0,
        w - 14.0,
        h / 2.0,
        ml - 4.0,
        mt + 4.0,
        ml - 4.0,
        h - mb
    );
    s
}

/// Layer x position heatmap of a grid trace; `labels` are the token texts of the positions.
pub fn grid_heatmap_svg(g: &GridTrace, labels: &[String], title: &str) -> String {
    let rows = g.scores.len();
    let cols = g.positions.len().max(1);
    let (cw, ch, ml, mt) = (18.0f64, 14.0f64, 44.0f64, 34.0f64);
    let w = ml + cw * cols as f64 + 20.0;
    let h = mt + ch * rows as f64 + 90.0;
    // The colour scale spans no restoration to the best cell; for a pair too close to normalise
    // the cells are log-probabilities, spanning the perturbed run's to the best.
    let floor = g.too_close.map_or(0.0, |c| c.lp_pert.min(c.lp_clean));
    let vmax = g
        .scores
        .iter()
        .flatten()
        .cloned()
        .fold(floor + 1e-9, f64::max);
    let vmin = g.scores.iter().flatten().cloned().fold(floor, f64::min);
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {w} {h}' width='{w}' height='{h}' font-family='sans-serif' font-size='10'>\
         <rect width='100%' height='100%' fill='#fff'/><text x='{ml}' y='18' font-size='13' font-weight='bold'>{}</text>",
        escape(title)
    );
    for (l, row) in g.scores.iter().enumerate() {
        s += &format!(
            "<text x='{}' y='{:.1}' text-anchor='end'>{l}</text>",
            ml - 4.0,
            mt + ch * (l as f64 + 0.8)
        );
        for (i, v) in row.iter().enumerate() {
            let a = ((v - vmin) / (vmax - vmin).max(1e-12)).clamp(0.0, 1.0);
            let (r, gg, b) = (255.0 - 220.0 * a, 255.0 - 170.0 * a, 255.0 - 40.0 * a);
            let label = labels.get(i).map(|x| escape(x)).unwrap_or_default();
            s += &format!(
                "<rect x='{:.1}' y='{:.1}' width='{cw}' height='{ch}' fill='rgb({:.0},{:.0},{:.0})' data-layer='{l}' data-pos='{}'><title>layer {l}, position {} '{label}': {v:.3}</title></rect>",
                ml + cw * i as f64,
                mt + ch * l as f64,
                r,
                gg,
                b,
                g.positions[i],
                g.positions[i]
            );
        }
    }
    for (i, lab) in labels.iter().enumerate().take(cols) {
        let x = ml + cw * (i as f64 + 0.6);
        let y = mt + ch * rows as f64 + 6.0;
        s += &format!(
            "<text x='{x:.1}' y='{y:.1}' transform='rotate(60 {x:.1} {y:.1})'>{}</text>",
            escape(&lab.replace('\n', "⏎"))
        );
    }
    s += "</svg>";
    s
}

/// A self-contained HTML page: a title, sections of (heading, html) and the raw JSON.
pub fn html_page(title: &str, sections: &[(String, String)], json: &str) -> String {
    let mut body = String::new();
    for (h, content) in sections {
        body += &format!("<section><h2>{}</h2>{content}</section>", escape(h));
    }
    format!(
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>{t}</title><style>\
         body{{font:14px/1.5 system-ui,sans-serif;max-width:1000px;margin:24px auto;padding:0 16px;color:#1b2430}}\
         h1{{font-size:22px}} h2{{font-size:16px;color:#2456c8;margin-top:28px}} pre{{background:#f4f6fa;padding:10px;border-radius:6px;white-space:pre-wrap;overflow-wrap:anywhere;margin:4px 0}} mark{{background:#ffd43b;color:inherit;border-radius:2px}} table.cols{{width:100%;table-layout:fixed}}\
         table{{border-collapse:collapse}} td,th{{padding:3px 10px;border-bottom:1px solid #e3e7ef;text-align:left;vertical-align:top}}\
         .ok{{color:#15803d}} .bad{{color:#b91c1c}} details{{margin-top:24px}}</style></head><body><h1>{t}</h1>{body}\
         <details><summary>raw JSON</summary><pre>{j}</pre></details></body></html>",
        t = escape(title),
        j = escape(json)
    )
}

/// Loss per optimizer evaluation: total, perturbed part and lambda-weighted clean part (log scale).
pub fn loss_curve_svg(
    losses: &[crate::edit::LossParts],
    lambda: f64,
    kept: usize,
    title: &str,
) -> String {
    // The legend has its own row above the plot, and every line is clipped to the plot area, so
    // neither covers the other whatever the values.
    let (w, h, ml, mr, mt, mb) = (720.0f64, 272.0f64, 64.0f64, 20.0f64, 46.0f64, 40.0f64);
    let n = losses.len().max(2);
    let vals: Vec<f64> = losses
        .iter()
        .flat_map(|l| [l.total, l.pert, lambda * l.orig])
        .filter(|v| *v > 0.0)
        .collect();
    let lo = vals
        .iter()
        .cloned()
        .fold(f64::INFINITY, f64::min)
        .max(1e-12)
        .log10()
        .floor();
    let hi = vals
        .iter()
        .cloned()
        .fold(f64::NEG_INFINITY, f64::max)
        .max(1e-12)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let x_of = |i: usize| ml + (w - ml - mr) * i as f64 / (n - 1) as f64;
    let y_of = |v: f64| mt + (h - mt - mb) * (1.0 - (v.max(1e-12).log10() - lo) / (hi - lo));
    let mut s = format!(
        "<svg xmlns='http://www.w3.org/2000/svg' viewBox='0 0 {w} {h}' width='{w}' height='{h}' font-family='sans-serif' font-size='11' style='max-width:100%;height:auto'>\
         <defs><clipPath id='loss-plot'><rect x='{ml}' y='{mt}' width='{}' height='{}'/></clipPath></defs>\
         <rect width='100%' height='100%' fill='#fff'/><text x='{ml}' y='16' font-size='13' font-weight='bold'>{}</text>",
        w - ml - mr,
        h - mt - mb,
        escape(title)
    );
    let mut e = lo as i32;
    while e as f64 <= hi {
        let y = y_of(10f64.powi(e));
        s += &format!("<line x1='{ml}' x2='{}' y1='{y:.1}' y2='{y:.1}' stroke='#eee'/><text x='{}' y='{:.1}' text-anchor='end'>1e{e}</text>", w - mr, ml - 4.0, y + 4.0);
        e += 1;
    }
    let mut legend_x = ml;
    for (name, color, f) in [
        ("total", "#2456c8", 0usize),
        ("MSE(h_pert, h_orig)", "#d9480f", 1),
        ("λ·MSE(h_orig', h_orig)", "#2b8a3e", 2),
    ] {
        let pts: Vec<String> = losses
            .iter()
            .enumerate()
            .map(|(i, l)| {
                format!(
                    "{:.1},{:.1}",
                    x_of(i),
                    y_of([l.total, l.pert, lambda * l.orig][f])
                )
            })
            .collect();
        s += &format!("<polyline points='{}' fill='none' stroke='{color}' stroke-width='2' clip-path='url(#loss-plot)'/>", pts.join(" "));
        s += &format!("<line x1='{legend_x}' x2='{}' y1='31' y2='31' stroke='{color}' stroke-width='2'/><text x='{}' y='35' fill='{color}'>{}</text>", legend_x + 18.0, legend_x + 22.0, escape(name));
        legend_x += 40.0 + 6.5 * name.chars().count() as f64;
    }
    if kept < losses.len() {
        let x = x_of(kept);
        // The label goes on the side of the line that has room for it.
        let (lx, anchor) = if x + 30.0 > w - mr {
            (x - 3.0, "end")
        } else {
            (x + 3.0, "start")
        };
        s += &format!("<line x1='{x:.1}' x2='{x:.1}' y1='{mt}' y2='{}' stroke='#f59f00' stroke-dasharray='4 3'/><text x='{lx:.1}' y='{}' fill='#b07000' text-anchor='{anchor}'>kept</text>", h - mb, mt + 10.0);
    }
    for i in 0..losses.len() {
        s += &format!(
            "<text x='{:.1}' y='{}' text-anchor='middle'>{i}</text>",
            x_of(i),
            h - mb + 14.0
        );
    }
    s += &format!(
        "<text x='{:.1}' y='{}' text-anchor='middle'>optimizer evaluation</text></svg>",
        ml + (w - ml - mr) / 2.0,
        h - 8.0
    );
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_typo_is_marked_in_both_prompts_and_text_stays_escaped() {
        let (a, b) = diff_marked(
            "Check if <x> is given threshold.",
            "Check ig <x> is given thrshold.",
        );
        assert_eq!(
            a,
            "Check i<mark>f</mark> &lt;x&gt; is given thr<mark>e</mark>shold."
        );
        assert_eq!(b, "Check i<mark>g</mark> &lt;x&gt; is given thrshold.");
        let (a, b) = diff_marked("same", "same");
        assert_eq!((a.as_str(), b.as_str()), ("same", "same"));
    }

    #[test]
    fn loss_lines_are_clipped_to_the_plot_and_the_legend_sits_above_it() {
        let losses = [
            crate::edit::LossParts {
                total: 1.0,
                pert: 1.0,
                orig: 0.0,
            },
            crate::edit::LossParts {
                total: 0.1,
                pert: 0.05,
                orig: 0.5,
            },
        ];
        let svg = loss_curve_svg(&losses, 0.1, 1, "t");
        assert_eq!(
            svg.matches("clip-path='url(#loss-plot)'").count(),
            3,
            "every curve is clipped"
        );
        // Legend labels sit in the row above the plot area (y = 35 < mt = 46).
        assert!(svg.contains("y='35' fill='#2456c8'>total</text>"));
    }
}
