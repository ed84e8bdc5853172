//! `creme report`: merge the edit records of one or more `creme experiment` runs (or shards)
//! into the paper's tables: per type L-RIR, G-RIR, fixed/broken tasks, clean deviation, layers;
//! overall means; and the edit-type x eval-type G-RIR matrix where other types were evaluated.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use creme_core::metrics;
use serde_json::{json, Value};

use crate::common::{self, Res};

pub struct Report {
    pub json: Value,
    pub markdown: String,
}

/// Every finished edit record in the directories (edits.jsonl and edits-shard-*.jsonl), one per
/// (type, task): a record repeated across shards or reruns counts once.
pub fn read_records(dirs: &[PathBuf]) -> Res<Vec<Value>> {
    let mut seen = BTreeSet::new();
    let mut out = Vec::new();
    for d in dirs {
        let mut files: Vec<PathBuf> = std::fs::read_dir(d)
            .map_err(|e| format!("reading {}: {e}", d.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("edits") && n.ends_with(".jsonl")))
            .collect();
        files.sort();
        for f in files {
            let text = std::fs::read_to_string(&f)?;
            for line in text.split_inclusive('\n').filter(|l| l.ends_with('\n') && !l.trim().is_empty()) {
                let v: Value = serde_json::from_str(line.trim_end()).map_err(|e| format!("{}: {e}", f.display()))?;
                let key = (v["type"].as_str().unwrap_or("").to_string(), v["task"].as_str().unwrap_or("").to_string());
                if seen.insert(key) {
                    out.push(v);
                }
            }
        }
    }
    Ok(out)
}

fn mean(v: &[f64]) -> Option<f64> {
    if v.is_empty() {
        None
    } else {
        Some(v.iter().sum::<f64>() / v.len() as f64)
    }
}

fn fmt(v: Option<f64>) -> String {
    v.map(|x| format!("{x:.3}")).unwrap_or_else(|| "-".into())
}

pub fn report(dirs: &[PathBuf]) -> Res<Report> {
    let records = read_records(dirs)?;
    let mut by_type: BTreeMap<String, Vec<&Value>> = BTreeMap::new();
    for r in &records {
        by_type.entry(r["type"].as_str().unwrap_or("?").to_string()).or_default().push(r);
    }
    let mut md = String::from("| type | edits | L-RIR | G-RIR | edited task fixed | fixed (mean) | broken (mean) | clean dev (mean) | clean dev (worst) | layers (most frequent) | steps (mean) |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|\n");
    let mut rows = Vec::new();
    let mut type_l = Vec::new();
    let mut type_g: Vec<Vec<Option<f64>>> = Vec::new();
    let num = |r: &Value, k: &str| r[k].as_f64();
    for (t, rs) in &by_type {
        let l: Vec<f64> = rs.iter().filter_map(|r| num(r, "l_rir")).collect();
        let g: Vec<Option<f64>> = rs.iter().map(|r| num(r, "g_rir")).collect();
        let g_mean = metrics::mean_defined(g.iter().cloned());
        let fixed = mean(&rs.iter().filter_map(|r| num(r, "fixed")).collect::<Vec<_>>());
        let broke = mean(&rs.iter().filter_map(|r| num(r, "broke")).collect::<Vec<_>>());
        let devs: Vec<f64> = rs.iter().filter_map(|r| num(r, "clean_dev")).collect();
        let worst = devs.iter().cloned().fold(None, |a: Option<f64>, d| Some(if a.is_some_and(|a| a.abs() >= d.abs()) { a.unwrap() } else { d }));
        let steps = mean(&rs.iter().filter_map(|r| num(r, "steps")).collect::<Vec<_>>());
        let mut layers: BTreeMap<u64, usize> = BTreeMap::new();
        for r in rs {
            if let Some(l) = r["layer"].as_u64() {
                *layers.entry(l).or_default() += 1;
            }
        }
        let mut lv: Vec<(u64, usize)> = layers.into_iter().collect();
        lv.sort_by_key(|&(l, n)| (std::cmp::Reverse(n), l));
        let layer_s = lv.iter().take(3).map(|(l, n)| format!("{l} ({n})")).collect::<Vec<_>>().join(", ");
        let fixed_edited = rs.iter().filter(|r| r["edited_task_passes"] == true).count();
        md.push_str(&format!(
            "| {t} | {} | {} | {} | {fixed_edited} | {} | {} | {} | {} | {layer_s} | {} |\n",
            rs.len(),
            fmt(mean(&l)),
            fmt(g_mean),
            fmt(fixed),
            fmt(broke),
            fmt(mean(&devs)),
            fmt(worst),
            fmt(steps)
        ));
        if let Some(m) = mean(&l) {
            type_l.push(m);
        }
        type_g.push(g.clone());
        rows.push(json!({"type": t, "edits": rs.len(), "l_rir": mean(&l), "g_rir": g_mean, "edited_task_fixed": fixed_edited,
            "fixed_mean": fixed, "broke_mean": broke, "clean_dev_mean": mean(&devs), "clean_dev_worst": worst, "layers": lv, "steps_mean": steps}));
    }
    let mean_l = mean(&type_l);
    let mean_g = metrics::g_rir(&type_g);
    let total_fixed: f64 = records.iter().filter_map(|r| num(r, "fixed")).sum();
    let total_broke: f64 = records.iter().filter_map(|r| num(r, "broke")).sum();
    md.push_str(&format!("\nmean L-RIR: {}\nmean G-RIR: {}\nedits: {}; perturbed tasks fixed {} / broken {} (summed over edits)\n", fmt(mean_l), fmt(mean_g), records.len(), total_fixed, total_broke));

    // Cross-type matrix: edit type x evaluated type, mean G-RIR.
    let eval_types: BTreeSet<String> = records.iter().filter_map(|r| r["eval"].as_object()).flat_map(|m| m.keys().cloned()).collect();
    let mut matrix = serde_json::Map::new();
    if eval_types.len() > 1 {
        md.push_str(&format!("\nG-RIR, edit type (rows) x evaluated type (columns)\n\n| edit \\ eval | {} |\n|---|{}\n", eval_types.iter().cloned().collect::<Vec<_>>().join(" | "), "---:|".repeat(eval_types.len())));
        for (t, rs) in &by_type {
            let mut cells = Vec::new();
            let mut row = serde_json::Map::new();
            for e in &eval_types {
                let m = metrics::mean_defined(rs.iter().map(|r| r["eval"][e]["g_rir"].as_f64()));
                row.insert(e.clone(), json!(m));
                cells.push(fmt(m));
            }
            matrix.insert(t.clone(), Value::Object(row));
            md.push_str(&format!("| {t} | {} |\n", cells.join(" | ")));
        }
    }
    Ok(Report { json: json!({"types": rows, "mean_l_rir": mean_l, "mean_g_rir": mean_g, "edits": records.len(), "fixed": total_fixed, "broke": total_broke, "matrix": matrix}), markdown: md })
}

pub fn run(dirs: &[PathBuf], out: Option<PathBuf>) -> Res {
    if dirs.is_empty() {
        return Err("give one or more experiment directories".into());
    }
    let r = report(dirs)?;
    let out = out.unwrap_or_else(|| dirs[0].clone());
    std::fs::create_dir_all(&out)?;
    common::write(&out.join("report.md"), &r.markdown)?;
    common::write(&out.join("report.json"), &serde_json::to_string_pretty(&r.json)?)?;
    print!("{}", r.markdown);
    println!("report: {}", out.join("report.md").display());
    Ok(())
}
