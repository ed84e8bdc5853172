#!/usr/bin/env bash
# The generalisation check of issue 37 that a lookup cannot pass: does an edit made from one
# perturbed prompt also repair *another* typo of the same prompt (the same task and type drawn by
# creme's perturbator with another seed)?
#
#   scripts/other-seed.sh RUN_DIR OTHER_DATASET OTHER_BASELINE OUT_DIR -- EDIT FLAGS...
#
# RUN_DIR: an experiment run (its edits.jsonl: the pairs and the layers its edits chose).
# OTHER_DATASET: a dataset directory with the other seed's sets (`creme perturb --seed S --out`).
# OTHER_BASELINE: the unedited model's `creme eval` of OTHER_DATASET (same build), which says
#   whether the other prompt failed before the edit.
# EDIT FLAGS: the run's edit settings (e.g. --rows prompt --solver covariance --ridge 100
#   --past-divergence 8; add --control sham|random for a control), plus --dataset DIR when the
#   run's pairs came from a dataset other than creme's default.
# For each real edit of the run, its patch is made again with `creme edit --layer L` (the edit is
# deterministic on one build: the script checks the loss against the record) and the other
# seed's prompt of the same task and type is generated and tested under it (`creme eval
# --patch`). OUT_DIR/other-seed.tsv gets one line per edit (resumable): type task layer
# loss_record loss_again other_before other_after. Environment: CREME (the binary: pin it, and
# use the run's own build, or the patches differ).
set -euo pipefail
run=$1 other=$2 other_base=$3 out=$4
shift 4
[ "${1:-}" = "--" ] && shift
creme=${CREME:-creme}
mkdir -p "$out"
tsv=$out/other-seed.tsv
touch "$tsv"
# type, task, layer and final loss of each real edit, in the run's order
python3 - "$run/edits.jsonl" >"$out/edits.tsv" <<'EOF'
import json, sys
for line in open(sys.argv[1]):
    r = json.loads(line)
    if r.get("control") is None:
        print(r["type"], r["task"], r["layer"], r["final_loss"], sep="\t")
EOF
verdict() { # verdict SAMPLES_JSONL TYPE TASK -> PASS | FAIL | -
  python3 - "$1" "$2" "$3" <<'EOF'
import json, sys
path, t, task = sys.argv[1:]
v = "-"
for line in open(path):
    r = json.loads(line)
    if r["set"] == t and r["task_id"] == task:
        v = "PASS" if r["passed"] else "FAIL"
print(v)
EOF
}
while IFS=$'\t' read -r type task layer loss; do
  if grep -q -P "^$type\t$task\t" "$tsv"; then continue; fi
  n=${task##*/}
  patch=$out/$type-$n.safetensors
  log=$out/$type-$n.edit.log
  "$creme" edit -q --task "$task" --type "$type" --layer "$layer" --no-eval "$@" --out "$patch" >"$log" 2>&1 \
    || { echo "$type $task: creme edit failed (see $log)" >&2; continue; }
  again=$(grep -m1 -oP 'loss [0-9.]+ \K[0-9.]+' "$log" || echo "?")
  "$creme" eval -q --dataset "$other" --patch "$patch" --types "$type" --tasks "$task" \
    --out "$out/$type-$n.eval" >/dev/null
  before=$(verdict "$other_base/samples.jsonl" "$type" "$task")
  after=$(verdict "$out/$type-$n.eval/samples.jsonl" "$type" "$task")
  rm -f "$patch"
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$type" "$task" "$layer" "$loss" "$again" "$before" "$after" | tee -a "$tsv"
done <"$out/edits.tsv"
# The fix rate: of the edits whose other-seed prompt failed unedited, how many pass after.
awk -F'\t' '$6=="FAIL"{n++; if($7=="PASS")k++} END{printf "other-seed prompts failing before: %d, passing after the edit: %d\n", n, k}' "$tsv"
