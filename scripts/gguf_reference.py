#!/usr/bin/env python3
"""Reference dequantization by the `gguf` Python package (llama.cpp's own), for the tests.

Writes, under OUT (default $CREME_CACHE_DIR/reference/dequant):
  random_<TYPE>.bin / random_<TYPE>.f32   random blocks of every supported type (with sane f16
                                          scales) and gguf's dequantization of them
  <model>_<tensor>.f32                     gguf's dequantization of the first rows of one real tensor
                                          per type in each model, with <...>.json naming the slice
"""
import json, os, sys
import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf.quants import dequantize

cache = os.environ.get("CREME_CACHE_DIR", os.path.expanduser("~/.cache/creme"))
out = sys.argv[1] if len(sys.argv) > 1 else os.path.join(cache, "reference", "dequant")
os.makedirs(out, exist_ok=True)
rng = np.random.default_rng(1234)

# Byte offsets of the f16 scale fields per block, so random blocks decode to finite values.
F16_FIELDS = {T.Q4_0: [0], T.Q4_1: [0, 2], T.Q5_0: [0], T.Q5_1: [0, 2], T.Q8_0: [0], T.Q4_K: [0, 2], T.Q5_K: [0, 2], T.Q6_K: [208]}
for ty in [T.F32, T.F16, T.BF16, T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.Q4_K, T.Q5_K, T.Q6_K]:
    be, bb = gguf.GGML_QUANT_SIZES[ty]
    nblocks = 64 if be == 1 else 24
    nelem = nblocks * be
    if ty == T.F32:
        raw = rng.standard_normal(nelem).astype(np.float32).tobytes()
    elif ty == T.F16:
        raw = rng.standard_normal(nelem).astype(np.float16).tobytes()
    elif ty == T.BF16:
        raw = (rng.standard_normal(nelem).astype(np.float32).view(np.uint32) >> 16).astype(np.uint16).tobytes()
    else:
        blocks = rng.integers(0, 256, size=(nblocks, bb), dtype=np.uint8)
        for off in F16_FIELDS[ty]:
            scales = (rng.random(nblocks) * 0.05 + 0.001).astype(np.float16)
            blocks[:, off:off + 2] = scales.view(np.uint8).reshape(nblocks, 2)
        raw = blocks.tobytes()
    deq = dequantize(np.frombuffer(raw, dtype=np.uint8).reshape(1, -1), ty).astype(np.float32).reshape(-1)
    assert deq.size == nelem, (ty.name, deq.size, nelem)
    open(os.path.join(out, f"random_{ty.name}.bin"), "wb").write(raw)
    deq.tofile(os.path.join(out, f"random_{ty.name}.f32"))

models = {
    "qwen": os.path.join(cache, "models", "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"),
    "smollm2": os.path.join(cache, "models", "smollm2-135m-instruct-q4_1.gguf"),
}
for key, path in models.items():
    if not os.path.exists(path):
        print(f"skip {key}: {path} missing", file=sys.stderr)
        continue
    r = gguf.GGUFReader(path)
    seen = set()
    for t in r.tensors:
        ty = T(t.tensor_type)
        if ty in seen:
            continue
        seen.add(ty)
        rows = 4
        data = np.asarray(t.data)
        deq = dequantize(data[:rows], ty).astype(np.float32)
        name = f"{key}_{t.name}"
        deq.tofile(os.path.join(out, name + ".f32"))
        json.dump({"tensor": t.name, "type": ty.name, "rows": int(deq.shape[0]), "cols": int(deq.shape[-1])},
                  open(os.path.join(out, name + ".json"), "w"))
        print(f"{key}: {t.name} {ty.name} {deq.shape}")
