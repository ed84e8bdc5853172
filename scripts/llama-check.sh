#!/usr/bin/env bash
# Greedy completions of an independent implementation, llama.cpp, on creme's prompts, written as
# records that `creme eval --completions` scores in creme's sandbox: does a GGUF (e.g. one that
# `creme export --patch P --gguf` wrote) do in llama.cpp what it does in creme?
#
#   scripts/llama-check.sh --model M.gguf --out FILE.jsonl [--dataset DIR] [--types clean,C3]
#                          [--tasks HumanEval/88,...] [--max-tokens 320]
#   scripts/llama-check.sh --build-only        (only build llama-simple; prints its path)
#
# E.g. the demo's pair, before and after its edit (then score each file in creme's sandbox):
#   creme export --patch C3-88.safetensors --gguf --out edited.gguf
#   scripts/llama-check.sh --model edited.gguf --types clean,C3 --tasks HumanEval/88 --out edited.jsonl
#   creme eval --completions edited.jsonl --types clean,C3 --tasks HumanEval/88 --out score-edited
#
# Each record is {"set", "task_id", "completion"}: llama.cpp's `llama-simple` (built once into
# $CREME_CACHE_DIR/llama.cpp/<version>/build-cpu, CPU only) on the raw prompt, byte for byte, with
# no chat template and no BOS, as creme runs it (llama-simple adds a BOS only where the GGUF's
# add_bos_token asks; Qwen2.5's does not, and where one does the run stops with an error), greedy,
# at most --max-tokens new tokens or up to an end-of-generation token, cut at the first of the
# HumanEval stop strings as creme and the oracle cut (../shared/oracle/*/README.md). --dataset is
# creme's layout (HumanEval.jsonl or MBPP.jsonl, perturbed/<TYPE>.jsonl; default
# ../shared/datasets/humaneval-nlpert beside the repository); --types and --tasks default to clean
# and every task. Records already in FILE are kept and not generated again, so a stopped run
# resumes. llama-simple runs at its fixed 4 threads (it has no flag for it).
set -euo pipefail
caller=$PWD
root=$(cd "$(dirname "$0")/.." && pwd)
export CREME_CACHE_DIR="${CREME_CACHE_DIR:-$HOME/.cache/creme}"
usage="usage: $0 --model M.gguf --out FILE.jsonl [--dataset DIR] [--types clean,C3] [--tasks ID,..] [--max-tokens N] | --build-only"
model=""
out=""
dataset="$root/../shared/datasets/humaneval-nlpert"
types=clean
tasks=""
max_tokens=320
build_only=0
while [ $# -gt 0 ]; do
  case "$1" in
    --model) model="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    --dataset) dataset="$2"; shift 2 ;;
    --types) types="$2"; shift 2 ;;
    --tasks) tasks="$2"; shift 2 ;;
    --max-tokens) max_tokens="$2"; shift 2 ;;
    --build-only) build_only=1; shift ;;
    *) echo "$usage" >&2; exit 2 ;;
  esac
done

# Paths given are the caller's; the script works from the repository root.
abs() { case "$1" in /*|"") echo "$1" ;; *) echo "$caller/$1" ;; esac; }
model=$(abs "$model"); out=$(abs "$out"); dataset=$(abs "$dataset")
cd "$root"

. scripts/lib/llama-cpp.sh
llama_build cpu llama-simple
[ "$build_only" = 1 ] && { echo "$LLAMA_BIN"; exit 0; }

[ -n "$model" ] && [ -n "$out" ] || { echo "$usage" >&2; exit 2; }
[ -f "$model" ] || { echo "llama-check: no model file $model" >&2; exit 1; }
[ -d "$dataset" ] || { echo "llama-check: no dataset directory $dataset (--dataset)" >&2; exit 1; }

python3 - "$LLAMA_BIN" "$model" "$dataset" "$types" "$tasks" "$max_tokens" "$out" <<'PY'
import json, os, subprocess, sys, tempfile

simple, model, dataset, types, tasks, max_tokens, out = sys.argv[1:]
# The stop strings of the HumanEval protocol, as creme_core::generate::humaneval_stops.
STOPS = ["\ndef ", "\nclass ", "\nif __name__", "\nprint(", "\n#", "\n```", "\nassert"]

def load(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]

def set_file(name):
    if name == "clean":
        for base in ("HumanEval.jsonl", "MBPP.jsonl"):
            if os.path.exists(os.path.join(dataset, base)):
                return os.path.join(dataset, base)
        sys.exit(f"llama-check: {dataset} holds neither HumanEval.jsonl nor MBPP.jsonl")
    path = os.path.join(dataset, "perturbed", f"{name}.jsonl")
    if not os.path.exists(path):
        sys.exit(f"llama-check: no perturbed set {path}")
    return path

def cut(text):
    ends = [i for i in (text.find(s) for s in STOPS) if i >= 0]
    return text[: min(ends)] if ends else text

wanted = [t for t in tasks.split(",") if t] if tasks else None
done = set()
if os.path.exists(out):
    for r in load(out):
        done.add((r["set"], r["task_id"]))

with open(out, "a", encoding="utf-8") as sink:
    for name in [t for t in types.split(",") if t]:
        problems = {p["task_id"]: p for p in load(set_file(name))}
        ids = wanted if wanted is not None else list(problems)
        missing = [i for i in ids if i not in problems]
        if missing:
            sys.exit(f"llama-check: set {name} has no task {', '.join(missing)}")
        for tid in ids:
            if (name, tid) in done:
                continue
            prompt = problems[tid]["prompt"]
            # One argv element reaches llama-simple unchanged (it joins several with spaces).
            # It echoes the prompt as the pieces of its tokens, then the completion, then "\n";
            # logs go to stderr.
            with tempfile.TemporaryFile() as err:
                run = subprocess.run([simple, "-m", model, "-n", max_tokens, prompt],
                                     stdout=subprocess.PIPE, stderr=err)
                if run.returncode != 0:
                    err.seek(0)
                    sys.stderr.write(err.read().decode("utf-8", "replace")[-3000:])
                    sys.exit(f"llama-check: llama-simple failed on {name} {tid} (exit {run.returncode})")
            raw = run.stdout
            head = prompt.encode("utf-8")
            # The echo equals the prompt exactly only when the tokens round-trip and no BOS or
            # other special token was put in front; anything else means llama.cpp saw another input.
            if not raw.startswith(head) or not raw.endswith(b"\n"):
                sys.exit(f"llama-check: {name} {tid}: llama-simple's echo is not the prompt "
                         f"(first bytes {raw[:80]!r}); a BOS or template was added, or tokenization lost bytes")
            text = raw[len(head):-1].decode("utf-8", "replace")
            rec = {"set": name, "task_id": tid, "completion": cut(text)}
            sink.write(json.dumps(rec, ensure_ascii=False) + "\n")
            sink.flush()
            print(f"{name} {tid}: {len(rec['completion'])} chars", file=sys.stderr)
PY
