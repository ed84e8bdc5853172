//! Entry points that feed untrusted bytes through every reader, for the fuzz targets in `fuzz/`
//! and for the regression tests that replay their corpora (`tests/tests/fuzz_corpus.rs`). Each
//! must return normally on any input: errors are fine, panics and huge allocations are not.

use crate::dataset;
use crate::model::config::ModelConfig;
use crate::model::gguf::GgufHeader;
use crate::model::tokenizer::Tokenizer;
use crate::model::transformer::{check_tensor_table, ModelLoader};
use crate::quant::dequantize;

/// The GGUF reader: header, tensor ranges, dequantization of small tensors, config and table
/// checks, and the model loader's start (tokenizer included) on a file that holds its tensors.
pub fn gguf(data: &[u8]) {
    let Ok(h) = GgufHeader::parse(data) else {
        return;
    };
    let _ = h.check_len(data.len() as u64);
    for t in h.tensors.iter().take(64) {
        if let Ok(b) = h.tensor_bytes(data, t) {
            if t.elems() <= 1 << 16 {
                let _ = dequantize(t.dtype, b, t.elems() as usize);
            }
        }
    }
    if let Ok(cfg) = ModelConfig::from_gguf(&h) {
        let _ = check_tensor_table(&cfg, &h.tensors);
    }
    // What a model load does before any tensor arrives: config, table, then the tokenizer.
    if h.check_len(data.len() as u64).is_ok() {
        let _ = ModelLoader::new(&h);
    }
}

/// The tokenizer built from GGUF metadata, then a round trip through it.
pub fn tokenizer_gguf(data: &[u8]) {
    let Ok(h) = GgufHeader::parse(data) else {
        return;
    };
    let Ok(t) = Tokenizer::from_gguf(&h) else {
        return;
    };
    if let Ok(ids) =
        t.encode("def add(a, b):\n    \"\"\"Add two numbers.\"\"\"\n    return a + b\n")
    {
        let _ = t.decode(&ids);
    }
    let _ = t.decode(&[0, 1, u32::MAX]);
}

/// The HF loader's GPU-free half (config.json, safetensors shards, the tensor table) and the
/// CREME patch reader. The first byte says how many bytes (x 8) of config.json come first.
pub fn safetensors(data: &[u8]) {
    let Some((&n, rest)) = data.split_first() else {
        return;
    };
    let k = (n as usize * 8).min(rest.len());
    let (config, shard) = rest.split_at(k);
    let cfg = crate::model::safetensors::config_from_json(config, false);
    if let Ok(st) = safetensors::SafeTensors::deserialize(shard) {
        let parsed = [st];
        if let (Ok((table, _)), Ok(cfg)) =
            (crate::model::safetensors::hf_tensor_table(&parsed), cfg)
        {
            let _ = check_tensor_table(&cfg, &table);
        }
    }
    let _ = crate::patch::EditPatch::from_safetensors(shard);
}

/// The dataset readers (HumanEval/ReCode and MBPP JSONL) and the perturbator on what they read.
pub fn dataset(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let ptype = dataset::PERTURBATION_TYPES
        [data.first().copied().unwrap_or(0) as usize % dataset::PERTURBATION_TYPES.len()];
    if let Ok(problems) = dataset::parse_jsonl(&text, "fuzz") {
        for p in problems.iter().take(4) {
            let _ = crate::perturb::perturb(&p.prompt, ptype, 7);
            let _ = p.program(&p.prompt, "    pass\n");
        }
    }
    let _ = crate::perturb::perturb(&text, ptype, 1);
}
