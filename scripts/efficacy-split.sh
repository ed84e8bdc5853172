#!/usr/bin/env bash
# The efficacy runs of issue 37 on one half of the committed split (`creme split`), resumable:
# each step resumes what its output directory already holds, so a stopped run is started again
# with the same command.
#   scripts/efficacy-split.sh development|confirmation RUNS_DIR [TYPES]
# TYPES (comma list) defaults to every type of the half; it must be a subset of the half's.
# Steps:
#   1. RUNS_DIR/baseline: `creme eval` of clean + TYPES on the half's tasks, with the HF oracle's
#      greedy completions (../shared/oracle) as drafts where it kept them (exact on the CPU backend);
#   2. RUNS_DIR/setting: `creme experiment` with the setting (SETTING, below) on those tasks;
#   3. RUNS_DIR/<control>: the controls of CONTROLS, with the setting's layers (no trace again);
#   4. RUNS_DIR/compare.md and compare.json: `creme compare` of the setting against the controls.
# Environment: CREME (the binary; pin it for measured runs), SCOPE (edit-worthy | collateral;
# default collateral), SAMPLE (the collateral sample), CONTROLS (default "sham random matched";
# empty: the setting alone), SHARED (default ../shared), DATASET (a dataset directory, e.g. one
# with perturbed sets of another seed from `creme perturb --seed S`; default: creme's lookup),
# DRAFTS (further baseline drafts: earlier `creme eval` directories, space-separated; a new
# build's baseline then only verifies them).
set -euo pipefail
half=$1 runs=$2
creme=${CREME:-creme}
shared=${SHARED:-../shared}
scope=${SCOPE:-collateral}
sample=${SAMPLE:-24}
controls=${CONTROLS-sham random matched}
# The confirmation setting, chosen on the development half by the rule in docs/efficacy-dev.md
# (before any confirmation run): prompt rows, the aligned trace, the target 8 tokens past the
# divergence, the covariance-preserving solver at ridge 1000. SETTING_FLAGS (space-separated)
# replaces it for development runs of other settings.
SETTING=(--rows prompt --solver covariance --ridge 1000 --past-divergence 8)
[ -n "${SETTING_FLAGS:-}" ] && read -r -a SETTING <<<"$SETTING_FLAGS"

half_types=$("$creme" split "$half" --part types)
types=${3:-$half_types}
for t in ${types//,/ }; do
  case ",$half_types," in *",$t,"*) ;; *) echo "$t is not a $half type ($half_types)" >&2; exit 2 ;; esac
done
tasks=$("$creme" split "$half" --part tasks)
data=()
[ -n "${DATASET:-}" ] && data=(--dataset "$DATASET")
mkdir -p "$runs"

oracle=$shared/oracle/qwen2.5-coder-0.5b-instruct-q4km
drafts=()
for f in hf_greedy_clean_completions.json hf_greedy_perturbed_completions.json; do
  [ -f "$oracle/$f" ] && drafts+=(--baseline "$oracle/$f")
done
for d in ${DRAFTS:-}; do drafts+=(--baseline "$d"); done
echo "== baseline: clean,$types on the $half half's tasks"
"$creme" eval -q "${data[@]}" --types "clean,$types" --tasks "$tasks" "${drafts[@]}" --out "$runs/baseline"

experiment() {
  "$creme" experiment "${data[@]}" --types "$types" --tasks "$tasks" --baseline "$runs/baseline" \
    --eval-scope "$scope" --sample "$sample" "${SETTING[@]}" "$@"
}
echo "== setting: ${SETTING[*]} ($scope)"
experiment --out "$runs/setting" >"$runs/setting.log"
compare=()
for c in $controls; do
  echo "== control: $c"
  experiment --control "$c" --layer "from:$runs/setting/edits.jsonl" --out "$runs/$c" >"$runs/$c.log"
  compare+=(--control "$c=$runs/$c")
done
if [ ${#compare[@]} -gt 0 ]; then
  "$creme" compare "$runs/setting" "${compare[@]}" --json "$runs/compare.json" | tee "$runs/compare.md"
fi
