#!/usr/bin/env bash
# The main job: set up what the demo needs (the model, HumanEval, a GPU driver only where there
# is a GPU), show the backend it runs on and check its matmul there, then the CREME demo.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
export CREME_CACHE_DIR="${CREME_CACHE_DIR:-$HOME/.cache/creme}"
export CARGO_TARGET_DIR="$CREME_CACHE_DIR/target-native"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
scripts/setup.sh --demo
echo "demo: building creme (release)"
cargo build --release -q -p creme-cli
creme="$CARGO_TARGET_DIR/release/creme"
"$creme" info
"$creme" check-matmul

# The CREME demo on the real code model (Qwen2.5-Coder-0.5B-Instruct Q4_K_M): find a HumanEval
# task whose perturbed prompt breaks the model *on this machine*, show both completions and their
# test results, trace the layer, edit its W_down, and show the completions after the edit, with a
# patch and an HTML report.
# Whether a perturbed prompt breaks the model depends on near-tied greedy tokens (the machine's
# kernels) and on the prompt: the released ReCode prompt where ../shared has it, else creme's own
# perturbator (seeded by the task number), which draws other typos. So the demo tries the pairs of
# scripts/demo-candidates.txt in order and edits the first whose clean prompt passes and whose
# perturbed prompt fails; if none does, it says so.
# The edit is the best development setting of docs/efficacy-dev.md: the target runs 8 tokens past
# the first token where the clean and perturbed completions part, the aligned trace (scored by the
# decision margin there) picks the layer, and a ridge fit moves the prompt rows after the typo to
# the clean prompt's states (--rows prompt --solver ridge --ridge 100 --past-divergence 8).
# DEMO_TASK + DEMO_TYPE (one pair instead of the list), DEMO_OUT and DEMO_EDIT_FLAGS override.
out="${DEMO_OUT:-$root/creme-demo}"
mkdir -p "$out"
if [ -n "${DEMO_TASK:-}" ]; then
  candidates="${DEMO_TASK} ${DEMO_TYPE:-C3}"
else
  candidates=$(grep -v '^#' scripts/demo-candidates.txt | grep -v '^ *$')
fi
total=$(echo "$candidates" | wc -l)
tried=0
chosen=""
check=$(mktemp -d)
trap 'rm -rf "$check"' EXIT
while read -r task type; do
  tried=$((tried + 1))
  "$creme" eval -q --types "clean,$type" --tasks "$task" --out "$check/$tried" 2>"$check/$tried.log" >/dev/null </dev/null \
    || { echo "demo: evaluating $task $type failed:" >&2; tail -3 "$check/$tried.log" >&2; exit 1; }
  source="released prompt"
  grep -q "creme's perturbator" "$check/$tried.log" && source="creme's perturbator"
  verdicts=$(python3 -c '
import json, sys
v = {r["set"]: "PASS" if r["passed"] else "FAIL" for r in map(json.loads, open(sys.argv[1]))}
print(v["clean"], v[sys.argv[2]])' "$check/$tried/samples.jsonl" "$type")
  read -r clean pert <<<"$verdicts"
  echo "demo: candidate $tried of $total: $task $type ($source): clean $clean, perturbed $pert"
  if [ "$clean" = PASS ] && [ "$pert" = FAIL ]; then chosen="$task $type"; break; fi
done <<<"$candidates"
if [ -z "$chosen" ]; then
  echo "demo: none of the $tried candidates breaks the model on this machine (clean PASS and"
  echo "demo: perturbed FAIL): there is nothing to repair here, so no edit is made."
  exit 0
fi
read -r task type <<<"$chosen"
echo "demo: editing $task $type, the first candidate the perturbation breaks here ($tried tried)"
# shellcheck disable=SC2086 # DEMO_EDIT_FLAGS is a list of flags
"$creme" edit --task "$task" --type "$type" \
  ${DEMO_EDIT_FLAGS:---rows prompt --solver ridge --ridge 100 --past-divergence 8} \
  --out "$out/patch.safetensors" --report "$out"
python3 - "$out/edit.json" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))
b, a = e["before"], e["after"]
pert = b["pert"]["verdict"] + " -> " + a["pert"]["verdict"]
clean = b["clean"]["verdict"] + " -> " + a["clean"]["verdict"]
print("demo: %s, layer %d: perturbed %s, clean %s" % (e["pair"], e["layer"], pert, clean))
PY
echo "open $out/report.html"
