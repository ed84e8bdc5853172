//! `creme experiment` and `creme report` on a tiny random model: the protocol runs end to end
//! (baseline -> edit-worthy tasks -> trace -> edit -> evaluate -> revert), a run killed with
//! SIGKILL resumes without losing or repeating a finished record, and shards merge in the report.
//! The baseline comes from a file (a random model passes no test), as a user's earlier
//! `creme eval` would provide it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

fn creme() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_creme"));
    c.env(
        "XDG_RUNTIME_DIR",
        std::env::var_os("XDG_RUNTIME_DIR").unwrap_or("/tmp".into()),
    );
    c
}

/// A dataset of `n` tiny tasks, a tiny model, and a baseline where every clean prompt passes and
/// every perturbed (C3, E1) prompt fails: all 2n pairs are edit-worthy. The baseline is a real
/// `creme eval` of the tiny model (so its manifest fits the experiment) whose verdicts are then
/// set to that pattern: a random model passes no test.
fn setup(name: &str, n: usize) -> (PathBuf, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("creme-exp-test-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("data")).unwrap();
    let mut text = String::new();
    for i in 0..n {
        let id = format!("Tiny/{i}");
        let prompt = format!("def value_{i}():\n    \"\"\"Return the number {i} and check that the result is an integer.\"\"\"\n");
        text.push_str(&json!({"task_id": id, "prompt": prompt, "entry_point": format!("value_{i}"), "test": format!("def check(f):\n    assert f() == {i}\n")}).to_string());
        text.push('\n');
    }
    std::fs::write(dir.join("data/HumanEval.jsonl"), text).unwrap();
    std::fs::write(dir.join("tiny.gguf"), creme_tests::tiny::tiny_gguf()).unwrap();
    let st = creme()
        .args([
            "eval",
            "--types",
            "clean,C3,E1",
            "--max-tokens",
            "4",
            "--workers",
            "2",
        ])
        .arg("--dataset")
        .arg(dir.join("data"))
        .arg("--model")
        .arg(dir.join("tiny.gguf"))
        .arg("--out")
        .arg(dir.join("baseline"))
        .status()
        .unwrap();
    assert!(st.success(), "the baseline eval failed");
    set_baseline(&dir, |set, _| set == "clean");
    (dir.join("data"), dir.join("tiny.gguf"), dir)
}

/// Set every baseline verdict to `passes(set, task)`.
fn set_baseline(root: &Path, passes: impl Fn(&str, &str) -> bool) {
    let path = root.join("baseline/samples.jsonl");
    let mut out = String::new();
    for line in lines(&path) {
        let mut r: Value = serde_json::from_str(&line).unwrap();
        let p = passes(r["set"].as_str().unwrap(), r["task_id"].as_str().unwrap());
        r["passed"] = p.into();
        r["verdict"] = if p { "Pass" } else { "Fail" }.into();
        out.push_str(&format!("{r}\n"));
    }
    std::fs::write(&path, out).unwrap();
}

fn experiment(data: &Path, model: &Path, root: &Path, out: &Path, extra: &[&str]) -> Command {
    let mut c = creme();
    c.args([
        "experiment",
        "--types",
        "C3,E1",
        "--max-tokens",
        "4",
        "--target-tokens",
        "8",
        "--workers",
        "2",
    ])
    .arg("--dataset")
    .arg(data)
    .arg("--model")
    .arg(model)
    .arg("--baseline")
    .arg(root.join("baseline"))
    .arg("--out")
    .arg(out)
    .args(extra);
    c
}

/// Make Tiny/0's C3 prompt pass in the baseline of `setup` (so it is not edit-worthy).
fn c3_passes_for_tiny_0(root: &Path) {
    set_baseline(root, |set, task| {
        set == "clean" || (set == "C3" && task == "Tiny/0")
    });
}

fn lines(p: &Path) -> Vec<String> {
    std::fs::read_to_string(p)
        .map(|t| t.lines().map(String::from).collect())
        .unwrap_or_default()
}

#[test]
fn a_killed_experiment_resumes_without_losing_or_repeating_records() {
    let (data, model, root) = setup("kill", 5);
    let out = root.join("run");
    let log = out.join("edits.jsonl");
    let mut child = experiment(&data, &model, &root, &out, &[])
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while lines(&log).len() < 2 && t0.elapsed() < Duration::from_secs(600) {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let before = lines(&log);
    assert!(before.len() >= 2, "no records before the kill");
    let killed_mid_run = before.len() < 10;
    eprintln!(
        "killed after {} of 10 records{}",
        before.len(),
        if killed_mid_run {
            ""
        } else {
            " (the run had already finished)"
        }
    );

    let st = experiment(&data, &model, &root, &out, &[])
        .status()
        .unwrap();
    assert!(st.success());
    let after = lines(&log);
    assert_eq!(
        &after[..before.len()],
        &before[..],
        "finished records changed on resume"
    );
    let mut keys: Vec<(String, String)> = after
        .iter()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .map(|v| {
            (
                v["type"].as_str().unwrap().to_string(),
                v["task"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(keys.len(), 10, "every edit-worthy pair once");
    keys.sort();
    keys.dedup();
    assert_eq!(keys.len(), 10, "a record was repeated");
    let r: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("report.json")).unwrap()).unwrap();
    assert_eq!(r["edits"], 10);
    let v: Value = serde_json::from_str(&after[0]).unwrap();
    assert!(
        v["layer"].as_u64().unwrap() < 2 && v["steps"].as_u64().unwrap() >= 1,
        "{v}"
    );
    assert_eq!(v["l_rir"], 0.0, "a random model fixes nothing: {v}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn shards_split_the_edits_and_merge_in_the_report() {
    let (data, model, root) = setup("shards", 3);
    let out = root.join("run");
    for s in ["0/2", "1/2"] {
        let st = experiment(
            &data,
            &model,
            &root,
            &out,
            &["--shard", s, "--layer", "1", "--eval-types", "E1"],
        )
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap();
        assert!(st.success());
    }
    let a = lines(&out.join("edits-shard-0-of-2.jsonl"));
    let b = lines(&out.join("edits-shard-1-of-2.jsonl"));
    assert_eq!((a.len(), b.len()), (3, 3));
    let o = creme().arg("report").arg(&out).output().unwrap();
    assert!(o.status.success());
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.contains("mean L-RIR: 0.000") && text.contains("mean G-RIR: 0.000"),
        "{text}"
    );
    assert!(text.contains("edits: 6"), "{text}");
    // Every edit used the fixed layer.
    assert!(a
        .iter()
        .chain(&b)
        .all(|l| serde_json::from_str::<Value>(l).unwrap()["layer"] == 1));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn edit_worthy_scope_layers_from_a_calibration_and_the_efficacy_document() {
    let (data, model, root) = setup("scope", 4);
    // Tiny/0's C3 prompt passes in this baseline: it is not edit-worthy.
    c3_passes_for_tiny_0(&root);
    // A calibrate-layer output naming each task's pass-metric layer.
    let calib = root.join("calib");
    std::fs::create_dir_all(&calib).unwrap();
    let rows: Vec<Value> = (1..4).map(|i| json!({"task": format!("Tiny/{i}"), "pass_layer": 1, "threshold_fit_on_others": 0.9, "argmax_layer": 0, "predicted": 0, "reference_layer": null})).collect();
    let cal = json!({"type": "C3", "threshold": 0.9, "rows": rows, "argmax_same": 0, "fit": {"same": 0, "within_2": 3}, "loo": {"same": 0, "within_2": 3, "tasks": 3}, "reference": {"tasks": 0, "same": 0, "within_2": 0, "pass_metric_same": 0}});
    std::fs::write(calib.join("calibration.json"), cal.to_string()).unwrap();

    let out = root.join("run");
    let layer = format!("from:{}", calib.join("calibration.json").display());
    let mut c = creme();
    c.args([
        "experiment",
        "--types",
        "C3",
        "--max-tokens",
        "4",
        "--target-tokens",
        "8",
        "--workers",
        "2",
        "--eval-scope",
        "edit-worthy",
        "--layer",
        &layer,
    ]);
    c.arg("--dataset")
        .arg(&data)
        .arg("--model")
        .arg(&model)
        .arg("--baseline")
        .arg(root.join("baseline"))
        .arg("--out")
        .arg(&out);
    assert!(c
        .stderr(std::process::Stdio::null())
        .status()
        .unwrap()
        .success());
    let recs: Vec<Value> = lines(&out.join("edits.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 3, "Tiny/1..3 are edit-worthy");
    for r in &recs {
        assert_eq!(
            (
                r["layer"].as_u64(),
                r["eval_scope"].as_str(),
                r["tasks_per_set"].as_u64()
            ),
            (Some(1), Some("edit-worthy"), Some(3)),
            "{r}"
        );
        assert!(
            r["after"]["C3"].get("Tiny/0").is_none() && r["after"]["clean"].get("Tiny/0").is_none(),
            "only edit-worthy tasks are evaluated: {r}"
        );
        assert_eq!(r["clean"]["passes_before"], 3);
    }
    assert!(std::fs::read_to_string(out.join("command.txt"))
        .unwrap()
        .starts_with("creme experiment "));

    let doc = root.join("efficacy.md");
    let o = creme()
        .arg("report")
        .arg("--setting")
        .arg(format!("pass layer={}", out.display()))
        .arg("--baseline")
        .arg(root.join("baseline"))
        .arg("--calibration")
        .arg(&calib)
        .arg("--doc")
        .arg(&doc)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(&doc).unwrap();
    for want in [
        "## Baseline",
        "| C3 | 1 | 4 | Tiny/1, Tiny/2, Tiny/3 |",
        "| pass layer | 3 | edit-worthy (3 per set)",
        "## Edits: pass layer",
        "| C3 | Tiny/2 | 1 |",
        "## Key layer",
        "| Tiny/3 | 1 | - | 0 | 0 | 1 |",
        "## How to repeat",
        "creme experiment --types C3 ",
    ] {
        assert!(md.contains(want), "missing {want:?} in:\n{md}");
    }
    // A directory holding records that do not parse, or of a version this build does not know,
    // is refused with a message naming the version.
    std::fs::write(
        out.join("edits-old.jsonl"),
        "{\"type\":\"C3\",\"task\":\"Tiny/1\"}\n",
    )
    .unwrap();
    let o = creme().arg("report").arg(&out).output().unwrap();
    assert!(
        !o.status.success()
            && String::from_utf8_lossy(&o.stderr)
                .contains("an edit record of version 0 that does not parse")
    );
    std::fs::write(
        out.join("edits-old.jsonl"),
        "{\"version\":2,\"type\":\"C3\",\"task\":\"Tiny/1\"}\n",
    )
    .unwrap();
    let o = creme().arg("report").arg(&out).output().unwrap();
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && e.contains("an edit record of version 2"),
        "{e}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn long_operations_report_progress_on_stderr_unless_quiet() {
    let (_, model, root) = setup("progress", 1);
    let (clean, pert) = (root.join("clean.txt"), root.join("pert.txt"));
    std::fs::write(&clean, "def f(x):\n    \"\"\"Return x plus one.\"\"\"\n").unwrap();
    std::fs::write(&pert, "def f(x):\n    \"\"\"Retrn x plus one.\"\"\"\n").unwrap();
    let run = |quiet: bool| {
        let mut c = creme();
        c.args(["edit", "--model"])
            .arg(&model)
            .arg("--clean-file")
            .arg(&clean)
            .arg("--pert-file")
            .arg(&pert)
            .arg("--out")
            .arg(root.join("p.safetensors"))
            .arg("--no-eval");
        if quiet {
            c.arg("--quiet");
        }
        let o = c.output().unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    // stderr is a pipe here: plain lines, one per stage start and end at least.
    let err = run(false);
    for want in [
        " target: 0/1",
        " trace: 0/2",
        " trace: 2/2",
        " capture: 1/1",
        " edit: 1/20  loss ",
    ] {
        assert!(err.contains(want), "no {want:?} in:\n{err}");
    }
    let quiet = run(true);
    assert!(
        !quiet.contains(" trace: ") && !quiet.contains(" edit: "),
        "--quiet still reports progress:\n{quiet}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn calibrate_layer_takes_the_edit_worthy_tasks_and_the_given_ones() {
    let (data, model, root) = setup("calib", 3);
    // Tiny/0's C3 prompt passes: not edit-worthy, but asked for by --tasks.
    c3_passes_for_tiny_0(&root);
    let out = root.join("calib");
    let o = creme()
        .args([
            "calibrate-layer",
            "--type",
            "C3",
            "--target-tokens",
            "4",
            "--tasks",
            "Tiny/0,Tiny/1",
            "--model",
        ])
        .arg(&model)
        .arg("--dataset")
        .arg(&data)
        .arg("--baseline")
        .arg(root.join("baseline"))
        .arg("--out")
        .arg(&out)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cal: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("calibration.json")).unwrap())
            .unwrap();
    let tasks: Vec<&str> = cal["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["task"].as_str().unwrap())
        .collect();
    assert_eq!(
        tasks,
        ["Tiny/1", "Tiny/2", "Tiny/0"],
        "edit-worthy first, then the extra task once"
    );
    assert_eq!(cal["type"], "C3");
    let _ = std::fs::remove_dir_all(&root);
}

/// Prompt rows, the aligned trace, the target past the divergence, a near-exact ridge fit, each
/// edit evaluated on the edit-worthy tasks.
const PROMPT_ROWS_SETTING: [&str; 10] = [
    "--rows",
    "prompt",
    "--solver",
    "ridge",
    "--ridge",
    "0.001",
    "--past-divergence",
    "2",
    "--eval-scope",
    "edit-worthy",
];

/// The controls: the setting (prompt rows, the aligned trace, the target past the divergence),
/// then the same pairs with --control sham / matched; `creme compare` pairs them by task and
/// refuses a "control" run that holds real edits.
#[test]
fn control_runs_pair_with_the_setting_in_compare() {
    let (data, model, root) = setup("controls", 3);
    let setting = PROMPT_ROWS_SETTING;
    let run = |name: &str, control: &[&str]| {
        let out = root.join(name);
        let args: Vec<&str> = setting.iter().chain(control).copied().collect();
        let o = experiment(&data, &model, &root, &out, &args)
            .output()
            .unwrap();
        let tail = String::from_utf8_lossy(&o.stderr);
        let tail: Vec<&str> = tail.lines().filter(|l| !l.contains("\r")).collect();
        assert!(o.status.success(), "{name}: {}", tail.join("\n"));
        out
    };
    let (main, sham, matched) = (
        run("setting", &[]),
        run("sham", &["--control", "sham"]),
        run("matched", &["--control", "matched"]),
    );
    let records = |dir: &Path| -> Vec<Value> {
        lines(&dir.join("edits.jsonl"))
            .iter()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    assert!(records(&main).iter().all(|r| r.get("control").is_none()));
    assert!(records(&sham).iter().all(|r| r["control"] == "sham"));
    // Each matched edit is made from the next edit-worthy task of its type, cyclically.
    for r in records(&matched) {
        let i: usize = r["task"].as_str().unwrap()["Tiny/".len()..]
            .parse()
            .unwrap();
        assert_eq!(r["edited_from"], format!("Tiny/{}", (i + 1) % 3), "{r}");
    }
    let json = root.join("compare.json");
    let o = creme()
        .arg("compare")
        .arg(&main)
        .arg("--control")
        .arg(format!("sham={}", sham.display()))
        .arg("--control")
        .arg(format!("matched={}", matched.display()))
        .arg("--json")
        .arg(&json)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let c: Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(c["setting"]["edits"], 6);
    for v in c["controls"].as_array().unwrap() {
        assert_eq!(v["paired"], 6, "{v}");
        assert!(v["p_holm"].as_f64().unwrap() >= v["mcnemar"]["p_value"].as_f64().unwrap());
    }
    let o = creme()
        .arg("compare")
        .arg(&main)
        .arg("--control")
        .arg(format!("sham={}", main.display()))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("without --control"));
    // The efficacy document puts the same comparison beside the setting's tables.
    let doc = root.join("efficacy.md");
    let tsv = |name: &str, after: &str| {
        let p = root.join(name);
        std::fs::write(&p, format!("C3\tTiny/1\t1\t0.1\t0.1\tFAIL\t{after}\n")).unwrap();
        p
    };
    let (os_setting, os_sham) = (tsv("os-setting.tsv", "PASS"), tsv("os-sham.tsv", "FAIL"));
    let o = creme()
        .arg("report")
        .arg("--setting")
        .arg(format!("setting={}", main.display()))
        .arg("--other-seed")
        .arg(format!("setting={}", os_setting.display()))
        .arg("--other-seed")
        .arg(format!("sham={}", os_sham.display()))
        .arg("--control")
        .arg(format!("sham={}", sham.display()))
        .arg("--control")
        .arg(format!("matched={}", matched.display()))
        .arg("--baseline")
        .arg(root.join("baseline"))
        .arg("--doc")
        .arg(&doc)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let md = std::fs::read_to_string(&doc).unwrap();
    for want in [
        "## Against the controls",
        "| sham | 6 |",
        "| matched | 6 |",
        "on 6 pairs",
        "| setting | 1 | 1/1 = 1.00",
        "| sham | 1 | 0/1 = 0.00",
    ] {
        assert!(md.contains(want), "missing {want:?} in:\n{md}");
    }
    assert!(
        !md.contains("## Edits: sham"),
        "controls get no per-edit table"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn a_multi_pair_edit_stacks_the_next_pairs_and_leaves_them_out_of_its_scores() {
    let (data, model, root) = setup("pairs", 3);
    let setting = PROMPT_ROWS_SETTING;
    let out = root.join("pairs2");
    let args: Vec<&str> = setting.iter().chain(&["--pairs", "2"]).copied().collect();
    let o = experiment(&data, &model, &root, &out, &args)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let records: Vec<Value> = lines(&out.join("edits.jsonl"))
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(records.len(), 6, "3 edit-worthy tasks of C3 and of E1");
    for r in &records {
        let i: usize = r["task"].as_str().unwrap()["Tiny/".len()..]
            .parse()
            .unwrap();
        let (next, other) = (
            format!("Tiny/{}", (i + 1) % 3),
            format!("Tiny/{}", (i + 2) % 3),
        );
        assert_eq!(r["stacked_with"], json!([next]), "{r}");
        // G-RIR is over the type's other edit-worthy tasks less the stacked one: `other` alone.
        let fixed = r["after"][r["type"].as_str().unwrap()][&other]
            .as_bool()
            .unwrap();
        assert_eq!(r["g_rir"].as_f64(), Some(fixed as u8 as f64), "{r}");
    }
    let manifest: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["experiment"]["pairs"], 2);
    // The same directory with one pair per edit is another experiment: refused.
    let o = experiment(&data, &model, &root, &out, &setting)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("pairs"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}
