//! Hostile GGUF metadata: files made of arrays must not cost much more memory than their size
//! (the browser and `creme generate` parse whatever file they are given), and counts beyond the
//! file must be refused before anything is allocated for them. Loading a model, the tokenizer is
//! built only after the tensor table is checked, and within a budget set by the file's size.
//!
//! A counting allocator (per thread, so parallel tests don't mix) measures what parsing really
//! allocates, to check `GgufHeader::heap_bytes()` as well as the bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use creme_core::error::ModelError;
use creme_core::model::gguf::{ArrayValue, GgufHeader, TensorInfo, Value};
use creme_core::model::gguf_write::{write_gguf, TensorOut};
use creme_core::model::{GgmlType, ModelLoader, Tokenizer};
use creme_tests::tiny::{byte_chars, metadata, tiny_tensors};

struct Counting;

thread_local! {
    static LIVE: Cell<usize> = const { Cell::new(0) };
    static PEAK: Cell<usize> = const { Cell::new(0) };
}

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let _ = LIVE.try_with(|c| {
                c.set(c.get() + l.size());
                PEAK.with(|p| p.set(p.get().max(c.get())));
            });
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        let _ = LIVE.try_with(|c| c.set(c.get().saturating_sub(l.size())));
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Run `f`; return its result, the bytes it left allocated and its peak allocation (this thread).
fn measure<T>(f: impl FnOnce() -> T) -> (T, usize, usize) {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    let out = f();
    let live = LIVE.with(Cell::get).saturating_sub(base);
    let peak = PEAK.with(Cell::get) - base;
    (out, live, peak)
}

// Hand encoders (independent of the crate's writer): an array value is type, count, items.
fn array(ety: u32, n: u64, items: &[u8]) -> Vec<u8> {
    let mut v = ety.to_le_bytes().to_vec();
    v.extend(n.to_le_bytes());
    v.extend(items);
    v
}
fn strings<'a>(items: impl IntoIterator<Item = &'a str>) -> Vec<u8> {
    let (mut body, mut n) = (Vec::new(), 0);
    for s in items {
        body.extend((s.len() as u64).to_le_bytes());
        body.extend(s.as_bytes());
        n += 1;
    }
    array(8, n, &body)
}
fn nested(elems: &[Vec<u8>]) -> Vec<u8> {
    array(9, elems.len() as u64, &elems.concat())
}

/// A GGUF v3 file with no tensors and these (key, array value) entries, and the bytes its
/// metadata occupies (the entries: key, type, value).
fn gguf(kvs: &[(&str, Vec<u8>)]) -> (Vec<u8>, usize) {
    let mut meta = Vec::new();
    for (k, v) in kvs {
        meta.extend((k.len() as u64).to_le_bytes());
        meta.extend(k.as_bytes());
        meta.extend(9u32.to_le_bytes());
        meta.extend(v);
    }
    let mut f = b"GGUF".to_vec();
    f.extend(3u32.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    f.extend((kvs.len() as u64).to_le_bytes());
    f.extend(&meta);
    (f, meta.len())
}

/// Parse, check the bound (estimate and measured), return the header.
fn parse_within_twice(name: &str, file: &[u8], meta_bytes: usize) -> GgufHeader {
    let (h, live, peak) = measure(|| GgufHeader::parse(file).unwrap());
    let heap = h.heap_bytes();
    eprintln!("{name}: {meta_bytes} metadata bytes in the file, heap_bytes {heap}, measured {live} (peak {peak})");
    assert!(
        heap <= 2 * meta_bytes,
        "{name}: heap_bytes {heap} > 2 x {meta_bytes}"
    );
    assert!(
        live <= heap,
        "{name}: heap_bytes {heap} undercounts the {live} bytes parsing left allocated"
    );
    // Transient use: the entry keys' error-context strings and one array of arrays' element.
    assert!(
        peak <= 2 * meta_bytes + (64 << 10),
        "{name}: peak {peak} while parsing > 2 x {meta_bytes}"
    );
    h
}

fn u8_arrays() -> Vec<(String, Vec<u8>)> {
    (0..64)
        .map(|i| {
            (
                format!("hostile.u8.{i}"),
                array(0, 20_000, &vec![i as u8; 20_000]),
            )
        })
        .collect()
}
fn short_strings() -> Vec<u8> {
    let words: Vec<String> = (0..200_000).map(|i| format!("{}", i % 1000)).collect();
    strings(words.iter().map(String::as_str))
}
fn nested_arrays() -> Vec<(String, Vec<u8>)> {
    let triple = array(0, 3, &[1, 2, 3]);
    let empty = array(0, 0, &[]);
    let empty_str = strings([]);
    let one_empty_str = strings([""]);
    let inner: Vec<Vec<u8>> = (0..100)
        .map(|_| nested(&vec![triple.clone(); 100]))
        .collect();
    vec![
        (
            "hostile.nested.triples".into(),
            nested(&vec![triple; 50_000]),
        ),
        ("hostile.nested.empty".into(), nested(&vec![empty; 100_000])),
        (
            "hostile.nested.empty_str".into(),
            nested(&vec![empty_str; 50_000]),
        ),
        (
            "hostile.nested.one_empty_str".into(),
            nested(&vec![one_empty_str; 50_000]),
        ),
        ("hostile.nested.depth3".into(), nested(&inner)),
    ]
}

fn as_kvs(v: &[(String, Vec<u8>)]) -> Vec<(&str, Vec<u8>)> {
    v.iter().map(|(k, b)| (k.as_str(), b.clone())).collect()
}

#[test]
fn array_metadata_costs_at_most_twice_its_file_bytes() {
    let u8s = u8_arrays();
    let (f, m) = gguf(&as_kvs(&u8s));
    let h = parse_within_twice("u8 arrays", &f, m);
    let a = h.get("hostile.u8.7").and_then(Value::as_array).unwrap();
    assert_eq!(
        (a.len(), a.get(19_999).and_then(|v| v.as_u64())),
        (20_000, Some(7))
    );

    let (f, m) = gguf(&[("hostile.words", short_strings())]);
    let h = parse_within_twice("200k short strings", &f, m);
    let a = h.get("hostile.words").and_then(Value::as_array).unwrap();
    assert_eq!(
        (a.len(), a.get(1234).and_then(|v| v.as_str())),
        (200_000, Some("234"))
    );

    let nest = nested_arrays();
    for (k, v) in &nest {
        let (f, m) = gguf(&[(k.as_str(), v.clone())]);
        parse_within_twice(k, &f, m);
    }
    let (f, m) = gguf(&as_kvs(&nest));
    let h = parse_within_twice("nested arrays", &f, m);
    let deep = h
        .get("hostile.nested.depth3")
        .and_then(Value::as_array)
        .unwrap();
    let mid = deep.get(99).unwrap().as_array().unwrap().clone();
    assert_eq!(
        mid.get(42).unwrap().as_array(),
        Some(&ArrayValue::U8(vec![1, 2, 3]))
    );
    let one = h
        .get("hostile.nested.one_empty_str")
        .and_then(Value::as_array)
        .unwrap();
    assert_eq!(
        one.get(49_999)
            .unwrap()
            .as_array()
            .unwrap()
            .get(0)
            .and_then(|s| s.as_str()),
        Some("")
    );

    // Everything in one file; then written back by the crate's writer, it reads the same.
    let mut all = as_kvs(&u8s);
    all.push(("hostile.words", short_strings()));
    all.extend(as_kvs(&nest));
    let (f, m) = gguf(&all);
    let h = parse_within_twice("all of the above", &f, m);
    let meta: Vec<(String, Value)> = h.metadata.clone().into_iter().collect();
    let again = GgufHeader::parse(&write_gguf(&meta, &[])).unwrap();
    assert_eq!(again.metadata, h.metadata);
}

/// Each empty string costs 8 bytes of length in the file: a `Vec<String>` would spend 24.
#[test]
fn a_million_empty_strings_stay_within_twice_their_file_bytes() {
    let (f, m) = gguf(&[("hostile.empty", strings(std::iter::repeat_n("", 1 << 20)))]);
    let h = parse_within_twice("1M empty strings", &f, m);
    let a = h.get("hostile.empty").and_then(Value::as_array).unwrap();
    assert_eq!(
        (a.len(), a.iter().filter(|s| s.as_str() == Some("")).count()),
        (1 << 20, 1 << 20)
    );
}

fn parse_err(file: &[u8]) -> ModelError {
    let (r, _, peak) = measure(|| GgufHeader::parse(file));
    assert!(peak < 1 << 20, "refusing the file allocated {peak} bytes");
    r.err().expect("a hostile file parsed")
}

#[test]
fn counts_beyond_the_file_are_clear_errors_before_any_allocation() {
    let huge = 1u64 << 60;
    for (what, value) in [
        ("u8", array(0, huge, &[])),
        ("f64", array(12, huge, &[])),
        ("string", array(8, huge, &[])),
        ("nested", array(9, huge, &[])),
        ("nested u8", nested(&[array(0, huge, &[])])),
        ("a string's length", array(8, 1, &huge.to_le_bytes())),
    ] {
        let (f, _) = gguf(&[("hostile.count", value)]);
        let e = parse_err(&f);
        let msg = e.to_string();
        eprintln!("{what}: {msg}");
        assert!(matches!(e, ModelError::Format(_)), "{what}: {msg}");
        assert!(
            msg.contains("hostile.count") && msg.contains("more than any GGUF header holds"),
            "{what}: {msg}"
        );
    }
    // A count beyond this file (but not beyond any file): the file is truncated, and says how much it would need.
    let (f, _) = gguf(&[("hostile.count", array(4, 1000, &[0; 400]))]);
    match parse_err(&f) {
        ModelError::Truncated { what, need, have } => {
            assert!(
                what.contains("hostile.count") && what.contains("1000 items"),
                "{what}"
            );
            assert!(
                need > have && have == f.len() as u64,
                "need {need}, have {have}"
            );
        }
        e => panic!("expected a truncation, got {e}"),
    }
    // More metadata entries than any model has.
    let mut f = b"GGUF".to_vec();
    f.extend(3u32.to_le_bytes());
    f.extend(0u64.to_le_bytes());
    f.extend((1u64 << 20).to_le_bytes());
    f.extend(vec![0u8; 13 << 20]);
    let msg = parse_err(&f).to_string();
    assert!(msg.contains("metadata entries"), "{msg}");
}

/// The tiny model's tensors under its metadata with the tokenizer arrays replaced (token types
/// left out when `typed` is false, as a file may).
fn tiny_model_with(tokens: Vec<String>, typed: bool, merges: Vec<String>) -> Vec<u8> {
    let types: Vec<i32> = tokens
        .iter()
        .map(|t| if t.starts_with("<|") { 3 } else { 1 })
        .collect();
    let mut meta = metadata("qwen2");
    if !typed {
        meta.retain(|(k, _)| k != "tokenizer.ggml.token_type");
    }
    for (k, v) in meta.iter_mut() {
        match k.as_str() {
            "tokenizer.ggml.tokens" => *v = Value::Array(tokens.clone().into()),
            "tokenizer.ggml.token_type" => *v = Value::Array(types.clone().into()),
            "tokenizer.ggml.merges" => *v = Value::Array(merges.clone().into()),
            _ => {}
        }
    }
    let tensors: Vec<TensorOut> = tiny_tensors();
    write_gguf(&meta, &tensors)
}

/// The tiny model's byte vocabulary with "ab" as its last token (257, as its embedding has).
fn byte_tokens_and_ab() -> Vec<String> {
    let mut t: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    t.push("ab".into());
    t
}

/// Parse, check the length, and start loading as `creme generate` and the browser do; the
/// result and the peak allocation of it all.
fn load(file: &[u8]) -> (Result<ModelLoader, ModelError>, usize) {
    let (r, _, peak) = measure(|| {
        let h = GgufHeader::parse(file)?;
        h.check_len(file.len() as u64)?;
        ModelLoader::new(&h)
    });
    (r, peak)
}

fn assert_within_four_times(what: &str, peak: usize, file: &[u8]) {
    let mb = |b: usize| b as f64 / (1 << 20) as f64;
    eprintln!(
        "{what}: peak {:.1} MB for a {:.1} MB file",
        mb(peak),
        mb(file.len())
    );
    assert!(
        peak < 4 * file.len(),
        "{what}: peak {peak} bytes, over 4 x the {}-byte file",
        file.len()
    );
}

/// 2,000,000 copies of one valid merge (11 bytes each in the file) once took 80 times the file's
/// 22 MB to build a tokenizer from; now the estimate refuses them before anything is built.
#[test]
fn two_million_merges_are_refused_within_four_times_the_file() {
    let file = tiny_model_with(
        byte_tokens_and_ab(),
        true,
        vec!["a b".to_string(); 2_000_000],
    );
    assert!(file.len() > 22_000_000, "{}", file.len());
    let (r, peak) = load(&file);
    let msg = r.err().expect("the model loaded").to_string();
    assert!(
        msg.contains("2000000 merges")
            && msg.contains(&format!("a model file of {} MB allows", file.len() >> 20)),
        "{msg}"
    );
    assert_within_four_times("2M merges, loading", peak, &file);
    // The tokenizer alone (what the fuzz target calls) refuses them too.
    let h = GgufHeader::parse(&file).unwrap();
    let (r, _, peak) = measure(|| Tokenizer::from_gguf(&h));
    assert!(r.is_err());
    assert!(peak < 1 << 20, "refusing took {peak} bytes");
    // The same vocabulary with its one merge once loads.
    let (r, _) = load(&tiny_model_with(
        byte_tokens_and_ab(),
        true,
        vec!["a b".into()],
    ));
    let loader = r.unwrap();
    drop(loader);
}

/// 2,000,000 short tokens (27 MB): the model's tensor table is checked first and its embedding
/// has 257 rows, so no tokenizer is built; built alone, the estimate refuses it.
#[test]
fn two_million_tokens_are_refused_within_four_times_the_file() {
    let tokens: Vec<String> = (0..2_000_000).map(|i| format!("{i:x}")).collect();
    let file = tiny_model_with(tokens, false, Vec::new());
    assert!(file.len() > 27_000_000, "{}", file.len());
    let (r, peak) = load(&file);
    let msg = r.err().expect("the model loaded").to_string();
    assert!(
        msg.contains("token_embd.weight has 257 rows, fewer than the vocabulary's 2000000"),
        "{msg}"
    );
    assert_within_four_times("2M tokens, loading", peak, &file);
    let (r, _, peak) = measure(|| {
        let h = GgufHeader::parse(&file)?;
        Tokenizer::from_gguf(&h)
    });
    let msg = r.err().expect("the tokenizer was built").to_string();
    assert!(
        msg.contains("2000000 tokens") && msg.contains("MB"),
        "{msg}"
    );
    assert_within_four_times("2M tokens, the tokenizer alone", peak, &file);
}

/// A BPE vocabulary of `n` tokens past the 256 bytes, each an earlier token and a byte joined by
/// a merge: a few bytes long on average, as real vocabularies are.
fn random_bpe(n: usize) -> (Vec<String>, Vec<String>) {
    let mut rng = creme_core::cpu::SplitMix64(5);
    let mut tokens: Vec<String> = byte_chars().into_iter().map(String::from).collect();
    let mut seen: std::collections::HashSet<String> = tokens.iter().cloned().collect();
    let mut merges = Vec::with_capacity(n);
    while merges.len() < n {
        let a = rng.below(tokens.len() as u64) as usize;
        let b = rng.below(256) as usize;
        let joined = format!("{}{}", tokens[a], tokens[b]);
        if joined.len() > 16 || !seen.insert(joined.clone()) {
            continue;
        }
        merges.push(format!("{} {}", tokens[a], tokens[b]));
        tokens.push(joined);
    }
    tokens.push("<|endoftext|>".into());
    (tokens, merges)
}

/// Give a header a tensor table that spans 1 GB, as a model file's does: the tokenizer's budget.
fn spanning_1_gb(h: &mut GgufHeader) {
    h.tensors.push(TensorInfo {
        name: "token_embd.weight".into(),
        dims: vec![1 << 28],
        dtype: GgmlType::F32,
        offset: 0,
    });
}

/// The estimate the budget is checked against bounds what building really takes, and a real-sized
/// vocabulary (Qwen2's is 151,646 tokens and 151,387 merges) is far within a real model file.
#[test]
fn building_a_tokenizer_takes_no_more_than_its_estimate() {
    let (tokens, merges) = random_bpe(100_000);
    let mut meta = metadata("qwen2");
    meta.retain(|(k, _)| !k.starts_with("tokenizer.ggml.t") && k != "tokenizer.ggml.merges");
    let types: Vec<i32> = (0..tokens.len())
        .map(|i| if i + 1 == tokens.len() { 3 } else { 1 })
        .collect();
    meta.push(("tokenizer.ggml.tokens".into(), Value::Array(tokens.into())));
    meta.push((
        "tokenizer.ggml.token_type".into(),
        Value::Array(types.into()),
    ));
    meta.push(("tokenizer.ggml.merges".into(), Value::Array(merges.into())));
    let file = write_gguf(&meta, &[]);
    let mut h = GgufHeader::parse(&file).unwrap();
    let estimate = Tokenizer::gguf_build_bytes(&h).unwrap() as usize;
    // Without tensors the file is its header: too small to build this in.
    let msg = Tokenizer::from_gguf(&h).err().unwrap().to_string();
    assert!(msg.contains("100257 tokens, 100000 merges"), "{msg}");
    // A header whose tensor table spans 1 GB (a model file's size) may.
    spanning_1_gb(&mut h);
    let (t, live, peak) = measure(|| Tokenizer::from_gguf(&h).unwrap());
    eprintln!(
        "100k tokens and merges in {} header bytes: estimate {estimate}, peak {peak}, kept {live}",
        file.len()
    );
    assert!(
        peak <= estimate,
        "building took {peak} bytes, over the estimate of {estimate}"
    );
    let ids = t.encode("def add(a, b):\n    return a + b").unwrap();
    assert_eq!(t.decode(&ids).unwrap(), "def add(a, b):\n    return a + b");
    assert!(t.is_special(100_256) && t.vocab_size() == 100_257);
}

/// Special tokens cost far more than plain ones (the tokenizers crate matches them with automata
/// built for each): their number is capped, and the estimate bounds what the most allowed take.
#[test]
fn special_tokens_are_capped_and_within_the_estimate() {
    let header = |specials: usize, pad: usize| {
        let mut tokens: Vec<String> = byte_chars().into_iter().map(String::from).collect();
        tokens.extend((0..specials).map(|i| format!("<|sp{i:05}{}|>", "x".repeat(pad))));
        let types: Vec<i32> = (0..tokens.len())
            .map(|i| if i < 256 { 1 } else { 3 })
            .collect();
        let mut meta = metadata("qwen2");
        meta.retain(|(k, _)| !k.starts_with("tokenizer.ggml.t"));
        meta.push(("tokenizer.ggml.tokens".into(), Value::Array(tokens.into())));
        meta.push((
            "tokenizer.ggml.token_type".into(),
            Value::Array(types.into()),
        ));
        GgufHeader::parse(&write_gguf(&meta, &[])).unwrap()
    };
    let most = creme_core::model::tokenizer::MAX_SPECIAL_TOKENS;
    for (n, pad) in [(0, 0), (most, 0), (most, 200)] {
        let mut h = header(n, pad);
        spanning_1_gb(&mut h);
        let estimate = Tokenizer::gguf_build_bytes(&h).unwrap() as usize;
        let (t, _, peak) = measure(|| Tokenizer::from_gguf(&h).unwrap());
        eprintln!(
            "{n} special tokens of {} bytes: estimate {estimate}, peak {peak}",
            11 + pad
        );
        assert!(peak <= estimate, "{n} special tokens: {peak} > {estimate}");
        if n > 0 {
            let text = format!("a<|sp00007{}|>b", "x".repeat(pad));
            let (a, b) = (t.encode("a").unwrap()[0], t.encode("b").unwrap()[0]);
            assert_eq!(t.encode(&text).unwrap(), vec![a, 256 + 7, b]);
        }
    }
    let msg = Tokenizer::from_gguf(&header(most + 1, 0))
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("control or user-defined tokens"), "{msg}");
}
