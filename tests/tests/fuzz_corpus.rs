//! Replays the fuzz corpora and every saved crash input (fuzz/corpus/<target>/,
//! fuzz/regressions/<target>/) through the same entry points the fuzz targets call, on stable:
//! none may panic. Also checks that the seeds are meaningful (they parse and load as a model).

use std::path::PathBuf;

use creme_core::untrusted;
use creme_tests::repo_root;

fn inputs(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for dir in ["corpus", "regressions"] {
        let d = repo_root().join("fuzz").join(dir).join(target);
        for e in std::fs::read_dir(&d).unwrap_or_else(|e| panic!("{}: {e}", d.display())) {
            let p = e.unwrap().path();
            if p.file_name().unwrap().to_string_lossy().starts_with('.') {
                continue;
            }
            out.push((p.clone(), std::fs::read(&p).unwrap()));
        }
    }
    out
}

fn replay(target: &str, f: fn(&[u8])) {
    let all = inputs(target);
    assert!(!all.is_empty(), "no inputs for {target}");
    for (path, data) in &all {
        eprintln!("{target}: {}", path.display());
        f(data);
        // Truncations of each input too: the readers' commonest hostile case.
        for cut in [0, 1, 7, 8, 24, data.len() / 2, data.len().saturating_sub(1)] {
            f(&data[..cut.min(data.len())]);
        }
    }
}

#[test]
fn gguf_inputs() {
    replay("gguf", untrusted::gguf);
}

#[test]
fn tokenizer_gguf_inputs() {
    replay("tokenizer_gguf", untrusted::tokenizer_gguf);
}

#[test]
fn safetensors_inputs() {
    replay("safetensors", untrusted::safetensors);
}

#[test]
fn dataset_inputs() {
    replay("dataset", untrusted::dataset);
}

#[test]
fn the_gguf_seed_is_a_valid_model_header() {
    use creme_core::model::{GgufHeader, ModelConfig, Tokenizer};
    let data = std::fs::read(repo_root().join("fuzz/corpus/gguf/micro-qwen2.gguf")).unwrap();
    let h = GgufHeader::parse(&data).unwrap();
    h.check_len(data.len() as u64).unwrap();
    let cfg = ModelConfig::from_gguf(&h).unwrap();
    creme_core::model::transformer::check_tensor_table(&cfg, &h.tensors).unwrap();
    let t = Tokenizer::from_gguf(&h).unwrap();
    assert_eq!(t.decode(&t.encode("ab a").unwrap()).unwrap(), "ab a");
    // A lying header is refused with the tensor's name.
    let mut bad = h.tensors.clone();
    bad.iter_mut()
        .find(|t| t.name == "blk.0.ffn_up.weight")
        .unwrap()
        .dims = vec![8, 31];
    let err = creme_core::model::transformer::check_tensor_table(&cfg, &bad)
        .unwrap_err()
        .to_string();
    assert!(err.contains("blk.0.ffn_up.weight"), "{err}");
}
