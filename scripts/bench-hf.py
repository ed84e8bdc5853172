#!/usr/bin/env python3
"""The HF transformers side of `creme bench`, for ratios on one GPU machine (issue 8).

Runs the same work as `creme bench` with transformers + torch on CUDA: model load (GGUF
dequantized to f32, as ../shared/oracle was made), prefill at batch 1 (150 and 512 tokens) and
batch 24 at 150, greedy decode of 128 and 256 tokens at batch 1, and HumanEval greedy generation
(164 tasks, batch 16, left padding, max 320 new tokens). Prints a table in `creme bench`'s shape.

    python3 scripts/bench-hf.py --gguf MODEL.gguf --dataset ../shared/datasets/humaneval-nlpert [--dtype float32]

Needs torch, transformers and gguf (the GPU machine has torch + transformers; carry the gguf wheel).
Written for the GPU machine; it was not run on the CPU-only machines this repository is built on.
"""
import argparse, json, os, time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ap = argparse.ArgumentParser()
ap.add_argument("--gguf", required=True)
ap.add_argument("--dataset", default="../shared/datasets/humaneval-nlpert")
ap.add_argument("--dtype", default="float32")
ap.add_argument("--humaneval", type=int, default=164)
a = ap.parse_args()
dev = "cuda"
sync = torch.cuda.synchronize
d, f = os.path.dirname(os.path.abspath(a.gguf)), os.path.basename(a.gguf)

t0 = time.time()
tok = AutoTokenizer.from_pretrained(d, gguf_file=f)
model = AutoModelForCausalLM.from_pretrained(d, gguf_file=f, dtype=getattr(torch, a.dtype)).to(dev).eval()
sync()
rows = [("model load", f"{time.time() - t0:.2f} s")]
probs = [json.loads(l) for l in open(os.path.join(a.dataset, "HumanEval.jsonl"))]
base = tok(probs[0]["prompt"], add_special_tokens=False)["input_ids"]

def prefill(n, batch):
    ids = torch.tensor([(base * (n // len(base) + 1))[:n]] * batch, device=dev)
    with torch.no_grad():
        model(ids)  # warm-up
        sync(); t = time.time(); model(ids); sync()
    return time.time() - t

for n in (150, 512):
    s = prefill(n, 1)
    rows.append((f"prefill batch 1, {n} tokens", f"{n / s:.1f} tok/s ({s:.3f} s)"))
s = prefill(150, 24)
rows.append(("prefill batch 24, 150 tokens", f"{150 * 24 / s:.1f} tok/s ({s:.3f} s)"))

ids = torch.tensor([base], device=dev)
for n in (128, 256):
    with torch.no_grad():
        sync(); t = time.time()
        out = model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
        sync(); s = time.time() - t
    pf = prefill(len(base), 1)
    rows.append((f"decode batch 1, {n} tokens", f"{(n - 1) / max(s - pf, 1e-9):.1f} tok/s ({s:.2f} s with the prompt pass)"))

tok.padding_side = "left"
if tok.pad_token is None:
    tok.pad_token = "<|endoftext|>"
t = time.time(); ntok = 0
for i in range(0, min(a.humaneval, len(probs)), 16):
    chunk = [p["prompt"] for p in probs[i:i + 16]]
    enc = tok(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(dev)
    with torch.no_grad():
        out = model.generate(**enc, max_new_tokens=320, do_sample=False, pad_token_id=tok.pad_token_id)
    ntok += int((out[:, enc["input_ids"].shape[1]:] != tok.pad_token_id).sum())
sync()
rows.append((f"HumanEval greedy generation, {min(a.humaneval, len(probs))} tasks (batch 16)", f"{time.time() - t:.1f} s ({ntok} tokens)"))
rows.append(("GPU memory", f"peak {torch.cuda.max_memory_allocated() / 2**20:.0f} MiB allocated"))
print(f"HF transformers {__import__('transformers').__version__}, torch {torch.__version__}, {torch.cuda.get_device_name()}, {a.dtype}")
print("| what | figure |\n|---|---|")
for k, v in rows:
    print(f"| {k} | {v} |")
