"""Write the small seed corpus for the fuzz targets (committed under fuzz/corpus/).

python3 fuzz/make_seeds.py   (needs the `gguf` package: pip install gguf)
"""
import json, os, struct, tempfile
import numpy as np
import gguf

here = os.path.dirname(os.path.abspath(__file__))

def out(target, name, data):
    with open(os.path.join(here, "corpus", target, name), "wb") as f:
        f.write(data)

# A qwen2-shaped micro model: 1 layer, d 8, 2 heads (1 kv), ff 32, 6 tokens; one Q8_0 tensor.
# GGUFWriter writes to a file: one in a private temporary directory, removed once read, so no
# fixed path is shared with other users or runs.
scratch = tempfile.TemporaryDirectory(prefix="creme-seeds-")
path = os.path.join(scratch.name, "seed.gguf")
w = gguf.GGUFWriter(path, "qwen2")
w.add_name("seed")
w.add_block_count(1); w.add_embedding_length(8); w.add_feed_forward_length(32)
w.add_head_count(2); w.add_head_count_kv(1); w.add_context_length(64)
w.add_rope_freq_base(10000.0); w.add_layer_norm_rms_eps(1e-6)
w.add_tokenizer_model("gpt2"); w.add_tokenizer_pre("qwen2")
tokens = ["a", "b", "d", "Ġ", "ab", "<|endoftext|>"]
w.add_token_list(tokens); w.add_token_types([1, 1, 1, 1, 1, 3]); w.add_token_merges(["a b"])
w.add_eos_token_id(5)
rng = np.random.default_rng(0)
def t(name, shape):
    w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))
t("token_embd.weight", (6, 8)); t("output_norm.weight", (8,))
t("blk.0.attn_norm.weight", (8,)); t("blk.0.ffn_norm.weight", (8,))
t("blk.0.attn_q.weight", (8, 8)); t("blk.0.attn_k.weight", (4, 8)); t("blk.0.attn_v.weight", (4, 8))
t("blk.0.attn_q.bias", (8,)); t("blk.0.attn_k.bias", (4,)); t("blk.0.attn_v.bias", (4,))
t("blk.0.attn_output.weight", (8, 8)); t("blk.0.ffn_gate.weight", (32, 8)); t("blk.0.ffn_up.weight", (32, 8))
down = rng.standard_normal((8, 32)).astype(np.float32)
w.add_tensor("blk.0.ffn_down.weight", gguf.quantize(down, gguf.GGMLQuantizationType.Q8_0), raw_dtype=gguf.GGMLQuantizationType.Q8_0)
w.write_header_to_file(); w.write_kv_data_to_file(); w.write_tensors_to_file(); w.close()
with open(path, "rb") as f:
    seed = f.read()
scratch.cleanup()
out("gguf", "micro-qwen2.gguf", seed)
out("tokenizer_gguf", "micro-qwen2.gguf", seed)

# safetensors: [config length / 8][config.json padded][safetensors file]
def st(tensors):
    header, data = {}, b""
    for name, arr in tensors:
        b = arr.astype(np.float32).tobytes()
        header[name] = {"dtype": "F32", "shape": list(arr.shape), "data_offsets": [len(data), len(data) + len(b)]}
        data += b
    header["__metadata__"] = {"layer": "0"}
    h = json.dumps(header).encode()
    h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data
config = json.dumps({"model_type": "qwen2", "hidden_size": 8, "intermediate_size": 32, "num_attention_heads": 2,
                     "num_key_value_heads": 1, "num_hidden_layers": 1, "vocab_size": 6, "rope_theta": 10000.0}).encode()
config += b" " * (-len(config) % 8)
shard = st([("model.layers.0.mlp.down_proj.weight", rng.standard_normal((8, 32))), ("model.norm.weight", np.ones(8))])
out("safetensors", "config-and-shard.bin", bytes([len(config) // 8]) + config + shard)

# dataset: HumanEval-style lines (one with a bare NaN) and MBPP-style lines.
he = {"task_id": "Seed/0", "prompt": "def f(x):\n    \"\"\" Return x plus one, for example:\n    >>> f(1)\n    2\n    \"\"\"\n", "entry_point": "f",
      "test": "def check(c):\n    assert c(1) == 2\n"}
line = json.dumps(dict(he, original_prompt=None)).replace("null", "NaN")
mbpp = {"task_id": 7, "text": "Write a function to add two numbers.", "code": "def add(a, b):\n    return a + b",
        "test_list": ["assert add(1, 2) == 3"], "test_imports": []}
out("dataset", "humaneval-style-seed.jsonl", (json.dumps(he) + "\n" + line + "\n").encode())
out("dataset", "mbpp-style-seed.jsonl", (json.dumps(mbpp) + "\n").encode())
print("seeds written")
