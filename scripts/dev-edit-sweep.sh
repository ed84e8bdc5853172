#!/usr/bin/env bash
# Development sweep of one edit setting over prompt pairs, with `creme edit` (no baseline run
# needed: each pair's clean and perturbed prompts are generated and tested before and after).
# One TSV line per pair; pairs already in the output file are skipped, so a stopped sweep resumes.
#   scripts/dev-edit-sweep.sh OUT.tsv TYPE "TASK TASK ..." -- EDIT FLAGS...
# With PATCH_DIR set, each pair's patch is kept there (TYPE-N.safetensors for HumanEval/N).
# Columns: type task clean_before pert_before clean_after pert_after layer margin_before
#          margin_after gap_left dW/W
set -euo pipefail
out=$1 type=$2 tasks=$3
shift 3
[ "${1:-}" = "--" ] && shift
creme=${CREME:-creme}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
touch "$out"
for task in $tasks; do
  if grep -q -P "^$type\t$task\t" "$out"; then continue; fi
  log=$tmp/edit.log
  if ! "$creme" edit -q --task "$task" --type "$type" "$@" --out "$tmp/patch.safetensors" >"$log" 2>&1; then
    echo "$task: creme edit failed:" >&2; tail -3 "$log" >&2; continue
  fi
  v() { grep -m1 -F -- "$1" "$log" | sed -E 's/.*\[([A-Z]+)\].*/\1/'; }
  layer=$(grep -m1 -oP 'edit of layer \K[0-9]+' "$log")
  margins=$(grep -m1 -oP 'perturbed prompt\): \K[-0-9.]+ before, [-0-9.]+' "$log" | sed 's/ before, /\t/')
  fit=$(grep -m1 -oP 'gap left on the moved rows \K[0-9.]+; \|\|dW\|\|/\|\|W\|\| [0-9.]+' "$log" | sed 's/; ||dW||\/||W|| /\t/')
  if [ -n "${PATCH_DIR:-}" ]; then
    mkdir -p "$PATCH_DIR" && cp "$tmp/patch.safetensors" "$PATCH_DIR/$type-${task##*/}.safetensors"
  fi
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$type" "$task" \
    "$(v '-- clean prompt completion [')" "$(v '-- perturbed prompt completion [')" \
    "$(v '-- clean prompt completion after')" "$(v '-- perturbed prompt completion after')" \
    "$layer" "${margins:-NA	NA}" "${fit:-NA	NA}" | tee -a "$out"
done
