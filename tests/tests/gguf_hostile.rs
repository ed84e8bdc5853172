//! Hostile GGUF metadata: files made of arrays must not cost much more memory than their size
//! (the browser and `creme generate` parse whatever file they are given), and counts beyond the
//! file must be refused before anything is allocated for them.
//!
//! A counting allocator (per thread, so parallel tests don't mix) measures what parsing really
//! allocates, to check `GgufHeader::heap_bytes()` as well as the bound.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use creme_core::error::ModelError;
use creme_core::model::gguf::{ArrayValue, GgufHeader, Value};
use creme_core::model::gguf_write::write_gguf;

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
