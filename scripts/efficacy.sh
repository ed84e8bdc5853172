#!/usr/bin/env bash
# The efficacy report (docs/efficacy.md) for one perturbation type, from scratch or resumed:
# the unedited model's greedy baseline, the key-layer calibration (pass metric vs logprob),
# the main setting (the paper's: lr 5e-4, 20 steps, patience 3, lambda 0.1, final weights; layer
# by the logprob trace) evaluated on every task, four ablations evaluated on the edit-worthy
# tasks, then the document. Every step resumes where it stopped, so rerun the script after an
# interruption. On 2 CPU cores expect 4-5 hours in all (baseline ~40 min, calibration
# ~40 min, main ~15 min per edit, each ablation ~1-4 min per edit); `SHARDS=n SHARD=i` splits
# the main setting over machines sharing RUNS.
#
#   scripts/efficacy.sh            # C3, runs/ under the repository, docs/efficacy.md
#   TYPE=E1 RUNS=/data/runs DOC=docs/efficacy-E1.md scripts/efficacy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
TYPE=${TYPE:-C3}
RUNS=${RUNS:-runs}
DOC=${DOC:-docs/efficacy.md}
CREME=${CREME:-$HOME/.cache/creme/target-native/release/creme}
[ -x "$CREME" ] || cargo build --release -p creme-cli
shard=()
[ -n "${SHARDS:-}" ] && shard=(--shard "${SHARD:?set SHARD=i with SHARDS=n}/$SHARDS")

"$CREME" eval --types "clean,$TYPE" --out "$RUNS/base"
# The calibration covers the edit-worthy tasks and, for C3, the four tasks of the CREME reference run.
ref=(); [ "$TYPE" = C3 ] && ref=(--tasks HumanEval/0,HumanEval/16,HumanEval/46,HumanEval/70)
"$CREME" calibrate-layer --type "$TYPE" --baseline "$RUNS/base" "${ref[@]}" --out "$RUNS/calib"
"$CREME" experiment --types "$TYPE" --baseline "$RUNS/base" "${shard[@]}" --out "$RUNS/main"
[ -n "${SHARDS:-}" ] && { echo "shard $SHARD of $SHARDS done; run the script without SHARDS once all are"; exit 0; }

# Ablations: the main setting's layers where the layer is not what is varied.
ablate() { "$CREME" experiment --types "$TYPE" --baseline "$RUNS/base" --eval-scope edit-worthy "$@"; }
ablate --layer "from:$RUNS/main/edits.jsonl" --lr 1e-4 --steps 60 --patience 6 --keep best --out "$RUNS/lr1e-4-best"
ablate --layer "from:$RUNS/calib/calibration.json" --out "$RUNS/pass-layer"
ablate --layer random --out "$RUNS/random-layer"
ablate --layer "from:$RUNS/main/edits.jsonl" --lambda 0 --out "$RUNS/lambda0"

"$CREME" report --baseline "$RUNS/base" --calibration "$RUNS/calib" --doc "$DOC" \
  --setting "main (paper settings, logprob layer)=$RUNS/main" \
  --setting "lr 1e-4, 60 steps, patience 6, best weights=$RUNS/lr1e-4-best" \
  --setting "pass-metric layer=$RUNS/pass-layer" \
  --setting "random layer=$RUNS/random-layer" \
  --setting "lambda 0=$RUNS/lambda0"
