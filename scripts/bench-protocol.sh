#!/usr/bin/env bash
# The protocol's own timing (issue 38, part 3): the same edits evaluated by several creme builds,
# one after the other on this machine, and what each build spends per edit.
#   scripts/bench-protocol.sh OUT_DIR NAME=BINARY [NAME=BINARY ...]
# The fixed list: C3's edit-worthy tasks of docs/efficacy.md, each edited at the layer the main
# setting (the paper's: continuation rows, Adam) chose for it there, one `creme experiment` per
# layer; every edit is evaluated on its layer group's tasks plus a fixed sample of 8 tasks that
# are not edit-worthy in the HF oracle (6 whose clean and C3 prompts pass, 2 where both fail), clean
# and C3 prompts, draft-verified against the build's own baseline. Only flags every build since
# 4f14782 knows are used. A task edit-worthy on one build's baseline and not on another's (a
# near-tie moved) is edited by one build only; the summary says so.
# Prints, per build: edits, seconds per edit (trace + edit, evaluation), edits per hour, and the
# ratio of evaluation seconds to the first build's; then the verdicts that differ between builds
# on the edits both made. Each build's directory is resumable (rerun the same command).
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: scripts/bench-protocol.sh OUT_DIR NAME=BINARY [NAME=BINARY ...]" >&2
  exit 2
fi
out=$1
shift
shared=${SHARED:-../shared}
data=$shared/datasets/humaneval-nlpert
oracle=$shared/oracle/qwen2.5-coder-0.5b-instruct-q4km
he() { local ids=() i; for i in "$@"; do ids+=("HumanEval/$i"); done; (IFS=,; echo "${ids[*]}"); }
# layer:tasks of the main setting (docs/efficacy.md, "Edits: main").
LAYER_GROUPS=("11:$(he 16 46 70 117 128 157)" "2:$(he 88 159)" "9:$(he 110 146)" "7:$(he 113)")
SAMPLE=$(he 1 2 3 4 5 6 7 8)
all=$SAMPLE
for g in "${LAYER_GROUPS[@]}"; do all="$all,${g#*:}"; done
drafts=()
for f in hf_greedy_clean_completions.json hf_greedy_perturbed_completions.json; do
  [ -f "$oracle/$f" ] && drafts+=(--baseline "$oracle/$f")
done
names=()
for spec in "$@"; do
  name=${spec%%=*} bin=${spec#*=}
  names+=("$name")
  dir=$out/$name
  mkdir -p "$dir"
  echo "== $name: baseline" >&2
  "$bin" eval -q --dataset "$data" --types clean,C3 --tasks "$all" "${drafts[@]}" --out "$dir/baseline" >"$dir/baseline.log" 2>&1
  for g in "${LAYER_GROUPS[@]}"; do
    layer=${g%%:*} tasks=${g#*:}
    echo "== $name: layer $layer ($tasks)" >&2
    "$bin" experiment -q --dataset "$data" --types C3 --tasks "$tasks,$SAMPLE" --layer "$layer" \
      --eval-scope all --baseline "$dir/baseline" --out "$dir/L$layer" >"$dir/L$layer.log" 2>&1
  done
done
python3 - "$out" "${names[@]}" <<'EOF'
import json, sys, pathlib
out, names = pathlib.Path(sys.argv[1]), sys.argv[2:]
runs = {}
for n in names:
    recs = {}
    # By (layer group, task): a sample task edit-worthy on a build's baseline is edited in
    # every group, at each group's layer.
    for f in sorted((out / n).glob("L*/edits.jsonl")):
        for line in f.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                recs[(f.parent.name, r["task"])] = r
    runs[n] = recs
first = names[0]
base_eval = sum(r["t_eval"] for r in runs[first].values()) / max(len(runs[first]), 1) or float("nan")
print("| build | edits | trace + edit s / edit | evaluation s / edit | edits per hour | evaluation vs " + first + " |")
print("|---|---:|---:|---:|---:|---:|")
for n in names:
    rs = list(runs[n].values())
    k = max(len(rs), 1)
    made = sum(r["t_trace"] + r["t_edit"] for r in rs) / k
    ev = sum(r["t_eval"] for r in rs) / k
    per_hour = 3600 / (made + ev) if rs else 0
    print(f"| {n} | {len(rs)} | {made:.1f} | {ev:.1f} | {per_hour:.1f} | {ev / base_eval:.2f}x |")
for n in names[1:]:
    common = sorted(set(runs[first]) & set(runs[n]))
    only = sorted(set(runs[first]) ^ set(runs[n]))
    moved = 0
    for t in common:
        a, b = runs[first][t]["after"], runs[n][t]["after"]
        moved += sum(a[s][task] != b.get(s, {}).get(task) for s in a for task in a[s])
    print(f"\n{n} against {first}: {len(common)} edits made by both, verdicts that differ among their "
          f"evaluations: {moved}; edited by one build only: {', '.join(f'{t} ({g})' for g, t in only) or 'none'}")
EOF
