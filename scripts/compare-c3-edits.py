#!/usr/bin/env python3
"""Run `creme edit` on the four C3 tasks of ../shared/oracle/.../creme_reference_C3.json at the
reference's key layers, with both settings recorded there, and print steps and best loss next to
the reference's (HF transformers, fp32, H100).  Usage: scripts/compare-c3-edits.py [--eval]
(--eval also generates and tests before/after, slow on a CPU adapter; --paper-only runs only
the paper's settings; --tasks HumanEval/0,HumanEval/16 limits the tasks)."""
import json, os, subprocess, sys, tempfile

root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
shared = os.environ.get("CREME_DATA_DIR", os.path.join(root, "..", "shared"))
ref = json.load(open(os.path.join(shared, "oracle/qwen2.5-coder-0.5b-instruct-q4km/creme_reference_C3.json")))
cache = os.environ.get("CREME_CACHE_DIR", os.path.expanduser("~/.cache/creme"))
creme = os.environ.get("CREME_BIN", os.path.join(cache, "target-native/release/creme"))
settings = [["--lr", "5e-4", "--steps", "20", "--patience", "3", "--keep", "final"],
            ["--lr", "1e-4", "--steps", "60", "--patience", "6", "--keep", "best"]]
rows = []
only = None
if "--tasks" in sys.argv:
    only = sys.argv[sys.argv.index("--tasks") + 1].split(",")
pairs = list(zip(ref["runs"], settings))
if "--paper-only" in sys.argv:
    pairs = pairs[:1]
for run, args in pairs:
    for r in run["results"]:
        if only and r["task"] not in only:
            continue
        out = tempfile.mkdtemp(prefix="creme-c3-")
        cmd = [creme, "edit", "--task", r["task"], "--type", r["type"], "--layer", str(r["key"]),
               "--out", os.path.join(out, "patch.safetensors"), "--report", out] + args
        if "--eval" not in sys.argv:
            cmd.append("--no-eval")
        subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=root)
        e = json.load(open(os.path.join(out, "edit.json")))["edit"]
        rel = abs(e["best_loss"] - r["loss"]) / r["loss"]
        rows.append((run["settings"][:24], r["task"], r["key"], e["steps"], r["steps"], e["best_loss"], r["loss"], rel, e["seconds"]))
        print(f"{rows[-1][0]:24} {r['task']:13} layer {r['key']:2}  steps {e['steps']:2} (ref {r['steps']:2})  "
              f"best loss {e['best_loss']:.6f} (ref {r['loss']:.6f}, {100 * rel:.2f}% off)  edit {e['seconds']:.2f} s", flush=True)
