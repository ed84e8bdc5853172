//! Docstring perturbations (the CREME paper's NLPerturbator taxonomy), deterministic for a seed,
//! touching only the natural-language words of the docstring: never code, the signature, names
//! or `>>>` examples and their outputs.
//!
//! All 20 types. The word lists (prepositions, determiners, verb inflections, synonyms,
//! derivations, phrasings) are data: `data/perturb-words.txt`. The linguistic types are
//! rule-based and change one or a few words: E3 third person <-> base form of a verb, E4 a verb to
//! its past tense, E5 a word to another class of the same stem, E6 a synonym. P1 paraphrases by
//! rewording: an imperative first sentence gets a subject ("Return x." -> "This function returns
//! x."), and listed phrasings are replaced by equivalent ones ("for example" -> "for instance");
//! P2 turns the first sentence into a question ("Return x." -> "Can you return x?", otherwise
//! "Is it true that ...?"). Both keep the meaning; neither touches code or examples.

use crate::cpu::SplitMix64;
use crate::error::ModelError;

/// Share of eligible words (or word pairs) a type edits, at least one: calibrated so that the
/// character edit distance per prompt is close to the released sets' (see `creme perturb
/// --validate`; HumanEval docstrings have ~45 eligible words).
fn edit_rate(ptype: &str) -> f64 {
    match ptype {
        "A3" | "D1" | "E1" => 0.1,
        "D4" => 0.16,
        "S2" => 0.05,
        "C1" | "C2" | "C3" => 0.05,
        _ => 0.08,
    }
}

/// The word lists of `data/perturb-words.txt`.
struct Words {
    prepositions: Vec<&'static str>,
    determiners: Vec<&'static str>,
    /// base, third person, past, -ing
    verbs: Vec<[&'static str; 4]>,
    synonyms: Vec<(&'static str, &'static str)>,
    derivations: Vec<(&'static str, &'static str)>,
    phrases: Vec<(&'static str, &'static str)>,
}

fn words_data() -> &'static Words {
    static W: std::sync::OnceLock<Words> = std::sync::OnceLock::new();
    W.get_or_init(|| {
        let text: &'static str = include_str!("../data/perturb-words.txt");
        let mut w = Words {
            prepositions: vec![],
            determiners: vec![],
            verbs: vec![],
            synonyms: vec![],
            derivations: vec![],
            phrases: vec![],
        };
        let mut section = "";
        for line in text.lines() {
            let line = line.split('#').next().unwrap().trim();
            if line.is_empty() {
                continue;
            }
            if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
                section = name;
                continue;
            }
            let f: Vec<&'static str> = line.split_whitespace().collect();
            match section {
                "prepositions" => w.prepositions.extend(f),
                "determiners" => w.determiners.extend(f),
                "verbs" if f.len() == 4 => w.verbs.push([f[0], f[1], f[2], f[3]]),
                "synonyms" if f.len() == 2 => w.synonyms.push((f[0], f[1])),
                "derivations" if f.len() == 2 => w.derivations.push((f[0], f[1])),
                "phrases" => {
                    let (a, b) = line
                        .split_once("=>")
                        .expect("phrases lines are 'from => to'");
                    w.phrases.push((a.trim(), b.trim()));
                }
                _ => panic!("perturb-words.txt: bad line in [{section}]: {line}"),
            }
        }
        w
    })
}

/// `repl` with the capitalisation of `src`'s first letter.
fn recase(src: &str, repl: &str) -> String {
    if src.chars().next().is_some_and(|c| c.is_uppercase()) {
        let mut c = repl.chars();
        c.next()
            .map(|f| f.to_uppercase().collect::<String>() + c.as_str())
            .unwrap_or_default()
    } else {
        repl.to_string()
    }
}

/// Neighbouring keys on a QWERTY keyboard.
fn keyboard_neighbours(c: char) -> &'static str {
    match c.to_ascii_lowercase() {
        'q' => "wa",
        'w' => "qeas",
        'e' => "wrsd",
        'r' => "etdf",
        't' => "ryfg",
        'y' => "tugh",
        'u' => "yihj",
        'i' => "uojk",
        'o' => "ipkl",
        'p' => "ol",
        'a' => "qwsz",
        's' => "awedxz",
        'd' => "serfcx",
        'f' => "drtgvc",
        'g' => "ftyhbv",
        'h' => "gyujnb",
        'j' => "huikmn",
        'k' => "jiolm",
        'l' => "kop",
        'z' => "asx",
        'x' => "zsdc",
        'c' => "xdfv",
        'v' => "cfgb",
        'b' => "vghn",
        'n' => "bhjm",
        'm' => "njk",
        _ => "",
    }
}

/// A word of the docstring's natural language: byte range in the prompt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Word {
    start: usize,
    end: usize,
}

/// Byte ranges of the docstring lines that are prose (not `>>>` examples, not their outputs).
fn prose_lines(prompt: &str) -> Vec<(usize, usize)> {
    // The last function's docstring: the last triple-quoted block.
    let q = if prompt.contains("\"\"\"") {
        "\"\"\""
    } else {
        "'''"
    };
    let Some(close) = prompt.rfind(q) else {
        return Vec::new();
    };
    let Some(open) = prompt[..close].rfind(q) else {
        return Vec::new();
    };
    let (body_start, body_end) = (open + 3, close);
    let mut out = Vec::new();
    let mut in_example = false;
    let mut pos = body_start;
    for line in prompt[body_start..body_end].split_inclusive('\n') {
        let t = line.trim();
        let (s, e) = (pos, pos + line.len());
        pos = e;
        if t.starts_with(">>>") {
            in_example = true;
            continue;
        }
        if t.is_empty() {
            in_example = false;
            continue;
        }
        if in_example {
            continue; // output lines of an example
        }
        out.push((s, e));
    }
    out
}

/// Names used in the code (signature, imports): never perturbed.
fn code_names(prompt: &str, prose: &[(usize, usize)]) -> std::collections::HashSet<String> {
    let mut code = String::new();
    let mut last = 0;
    for &(s, e) in prose {
        code.push_str(&prompt[last..s]);
        last = e;
    }
    code.push_str(&prompt[last..]);
    code.split(|c: char| !(c.is_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty())
        .map(String::from)
        .collect()
}

/// Prose words (runs of ASCII letters) that are not code names and not inside `backticks`/quotes.
fn words(prompt: &str) -> Vec<Word> {
    let prose = prose_lines(prompt);
    let names = code_names(prompt, &prose);
    let mut out = Vec::new();
    for &(s, e) in &prose {
        let line = &prompt[s..e];
        let b = line.as_bytes();
        let mut i = 0;
        while i < b.len() {
            if b[i].is_ascii_alphabetic() {
                let j = (i..b.len())
                    .find(|&j| !b[j].is_ascii_alphabetic())
                    .unwrap_or(b.len());
                let prev = if i > 0 { b[i - 1] } else { b' ' };
                let next = if j < b.len() { b[j] } else { b' ' };
                let w = &line[i..j];
                let codeish = prev == b'_'
                    || next == b'_'
                    || prev == b'`'
                    || next == b'('
                    || prev.is_ascii_digit()
                    || next.is_ascii_digit()
                    || prev == b'.' && i > 1 && b[i - 2] != b' ';
                if !codeish && !names.contains(w) {
                    out.push(Word {
                        start: s + i,
                        end: s + j,
                    });
                }
                i = j;
            } else {
                i += 1;
            }
        }
    }
    out
}

/// One edit: replace bytes [start, end) by `with`.
struct Edit {
    start: usize,
    end: usize,
    with: String,
}

fn apply(prompt: &str, mut edits: Vec<Edit>) -> String {
    edits.sort_by_key(|e| std::cmp::Reverse(e.start));
    let mut s = prompt.to_string();
    for e in edits {
        s.replace_range(e.start..e.end, &e.with);
    }
    s
}

/// Pick `n` distinct indices of `items` satisfying `ok`, in a seeded order.
fn pick<T>(items: &[T], n: usize, rng: &mut SplitMix64, ok: impl Fn(&T) -> bool) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..items.len()).filter(|&i| ok(&items[i])).collect();
    for i in (1..idx.len()).rev() {
        idx.swap(i, rng.below(i as u64 + 1) as usize);
    }
    idx.truncate(n);
    idx.sort();
    idx
}

fn count(ptype: &str, eligible: usize) -> usize {
    // Types whose released sets edit about one word per prompt.
    if matches!(ptype, "A2" | "E2" | "E3" | "E4") {
        return 1.min(eligible);
    }
    ((eligible as f64 * edit_rate(ptype)).round() as usize)
        .max(1)
        .min(eligible)
}

/// One character-level edit inside a word of type `kind` (A1 A3 D1 E1 S1), or None if the word is
/// too short for it.
fn char_edit(prompt: &str, w: Word, kind: &str, rng: &mut SplitMix64) -> Option<Edit> {
    let text = &prompt[w.start..w.end];
    let n = text.len();
    let at = |k: usize| w.start + k;
    match kind {
        "A1" if n >= 2 => {
            let k = 1 + rng.below(n as u64 - 1) as usize;
            Some(Edit {
                start: at(k),
                end: at(k),
                with: " ".into(),
            })
        }
        "A3" if n >= 1 => {
            let k = rng.below(n as u64) as usize;
            Some(Edit {
                start: at(k),
                end: at(k),
                with: text[k..k + 1].into(),
            })
        }
        "D1" if n >= 3 => {
            let k = rng.below(n as u64) as usize;
            Some(Edit {
                start: at(k),
                end: at(k + 1),
                with: String::new(),
            })
        }
        "E1" if n >= 2 => {
            let k = rng.below(n as u64) as usize;
            let c = text.as_bytes()[k] as char;
            let nb = keyboard_neighbours(c);
            if nb.is_empty() {
                return None;
            }
            let mut r = nb.as_bytes()[rng.below(nb.len() as u64) as usize] as char;
            if c.is_ascii_uppercase() {
                r = r.to_ascii_uppercase();
            }
            Some(Edit {
                start: at(k),
                end: at(k + 1),
                with: r.to_string(),
            })
        }
        "S1" if n >= 2 => {
            let k = rng.below(n as u64 - 1) as usize;
            let b = text.as_bytes();
            if b[k] == b[k + 1] {
                return None;
            }
            Some(Edit {
                start: at(k),
                end: at(k + 2),
                with: format!("{}{}", b[k + 1] as char, b[k] as char),
            })
        }
        _ => None,
    }
}

/// The seed of a task's perturbation: its number (`HumanEval/12` -> 12), else 0.
pub fn task_seed(task_id: &str) -> u64 {
    task_id
        .rsplit('/')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// The seed of a task's perturbation in the set drawn with `set_seed`: the task's number for
/// set seed 0 (the sets creme has always written), another draw of the same task per set seed.
pub fn set_task_seed(task_id: &str, set_seed: u64) -> u64 {
    task_seed(task_id) ^ set_seed.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The `t` set made from the clean problems by creme's perturbator, each task seeded by
/// [`set_task_seed`]; the clean prompt is kept as `original_prompt`.
pub fn perturb_problems(
    clean: &[crate::dataset::Problem],
    t: crate::sets::PerturbationType,
    set_seed: u64,
) -> Result<Vec<crate::dataset::Problem>, ModelError> {
    clean
        .iter()
        .map(|c| {
            Ok(crate::dataset::Problem {
                prompt: perturb(&c.prompt, t.name(), set_task_seed(&c.task_id, set_seed))?,
                original_prompt: Some(c.prompt.clone()),
                ..c.clone()
            })
        })
        .collect()
}

/// Perturb `prompt` with type `ptype` (A1..S2), deterministically for `seed`.
pub fn perturb(prompt: &str, ptype: &str, seed: u64) -> Result<String, ModelError> {
    let mut rng = SplitMix64(seed ^ 0x5eed_c3e3_0000_0000 ^ fnv(ptype));
    let ws = words(prompt);
    if ws.is_empty() {
        return Ok(prompt.to_string());
    }
    let char_pass = |kind: &str, rng: &mut SplitMix64, skip: &[usize]| -> Vec<Edit> {
        let chosen = pick(&ws, count(kind, ws.len()), rng, |w| w.end - w.start >= 3);
        chosen
            .into_iter()
            .filter(|i| !skip.contains(i))
            .filter_map(|i| char_edit(prompt, ws[i], kind, rng).map(|e| (i, e)))
            .map(|(_, e)| e)
            .collect()
    };
    let lower = |w: &Word| prompt[w.start..w.end].to_ascii_lowercase();
    let edits: Vec<Edit> = match ptype {
        "A1" | "A3" | "D1" | "E1" | "S1" => char_pass(ptype, &mut rng, &[]),
        "C1" | "C2" | "C3" => {
            // E1 on some words, then the second kind on other words.
            let second = match ptype {
                "C1" => "SPACE",
                "C2" => "A3",
                _ => "D1",
            };
            let n = count(ptype, ws.len());
            let chosen = pick(&ws, 2 * n, &mut rng, |w| w.end - w.start >= 3);
            let (first, rest) = chosen.split_at(chosen.len().min(n.max(1)).min(chosen.len()));
            let mut e: Vec<Edit> = first
                .iter()
                .filter_map(|&i| char_edit(prompt, ws[i], "E1", &mut rng))
                .collect();
            for &i in rest {
                if second == "SPACE" {
                    // An extra space before the word.
                    e.push(Edit {
                        start: ws[i].start,
                        end: ws[i].start,
                        with: " ".into(),
                    });
                } else if let Some(x) = char_edit(prompt, ws[i], second, &mut rng) {
                    e.push(x);
                }
            }
            e
        }
        "A2" => pick(&ws, count(ptype, ws.len()), &mut rng, |_| true)
            .into_iter()
            .map(|i| Edit {
                start: ws[i].end,
                end: ws[i].end,
                with: format!(" {}", &prompt[ws[i].start..ws[i].end]),
            })
            .collect(),
        "E2" => pick(&ws, count(ptype, ws.len()), &mut rng, |w| {
            prompt.as_bytes()[w.start].is_ascii_lowercase()
        })
        .into_iter()
        .map(|i| Edit {
            start: ws[i].start,
            end: ws[i].start + 1,
            with: prompt[ws[i].start..ws[i].start + 1].to_ascii_uppercase(),
        })
        .collect(),
        "D2" | "D3" => {
            let list = if ptype == "D2" {
                &words_data().prepositions
            } else {
                &words_data().determiners
            };
            let cands: Vec<usize> = (0..ws.len())
                .filter(|&i| {
                    list.contains(&lower(&ws[i]).as_str())
                        && prompt.as_bytes().get(ws[i].end) == Some(&b' ')
                })
                .collect();
            let chosen = pick(&cands, count(ptype, cands.len()), &mut rng, |_| true);
            // Delete the word and the space after it.
            chosen
                .into_iter()
                .map(|c| ws[cands[c]])
                .map(|w| Edit {
                    start: w.start,
                    end: w.end + 1,
                    with: String::new(),
                })
                .collect()
        }
        "D4" | "S2" => {
            // Pairs of words separated by exactly one space.
            let pairs: Vec<usize> = (0..ws.len().saturating_sub(1))
                .filter(|&i| {
                    ws[i].end + 1 == ws[i + 1].start && prompt.as_bytes()[ws[i].end] == b' '
                })
                .collect();
            let n = count(ptype, pairs.len());
            let mut chosen = pick(&pairs, n * 2, &mut rng, |_| true);
            // No two chosen pairs may share a word.
            let mut used = Vec::new();
            chosen.retain(|&c| {
                let i = pairs[c];
                if used.contains(&i) || used.contains(&(i + 1)) {
                    return false;
                }
                used.extend([i, i + 1]);
                true
            });
            chosen.truncate(n);
            chosen
                .into_iter()
                .map(|c| {
                    let (a, b) = (ws[pairs[c]], ws[pairs[c] + 1]);
                    if ptype == "D4" {
                        Edit {
                            start: a.end,
                            end: b.start,
                            with: String::new(),
                        }
                    } else {
                        Edit {
                            start: a.start,
                            end: b.end,
                            with: format!(
                                "{} {}",
                                &prompt[b.start..b.end],
                                &prompt[a.start..a.end]
                            ),
                        }
                    }
                })
                .collect()
        }
        "E3" | "E4" | "E5" | "E6" => {
            // One word (E3, E4) or a few (E5, E6) replaced by the listed form.
            let wd = words_data();
            let replacement = |w: &str| -> Option<&'static str> {
                match ptype {
                    "E3" => wd.verbs.iter().find_map(|v| {
                        if v[0] == w {
                            Some(v[1])
                        } else if v[1] == w {
                            Some(v[0])
                        } else {
                            None
                        }
                    }),
                    "E4" => wd
                        .verbs
                        .iter()
                        .find(|v| (v[0] == w || v[1] == w) && v[2] != w)
                        .map(|v| v[2]),
                    "E5" => wd
                        .derivations
                        .iter()
                        .find(|d| d.0 == w)
                        .map(|d| d.1)
                        .or_else(|| wd.verbs.iter().find(|v| v[3] == w).map(|v| v[0])),
                    _ => wd.synonyms.iter().find(|s| s.0 == w).map(|s| s.1),
                }
            };
            let cands: Vec<(usize, &'static str)> = (0..ws.len())
                .filter_map(|i| replacement(&lower(&ws[i])).map(|r| (i, r)))
                .collect();
            let n = count(ptype, cands.len());
            pick(&cands, n, &mut rng, |_| true)
                .into_iter()
                .map(|c| cands[c])
                .map(|(i, r)| Edit {
                    start: ws[i].start,
                    end: ws[i].end,
                    with: recase(&prompt[ws[i].start..ws[i].end], r),
                })
                .collect()
        }
        "P1" => paraphrase(prompt, &ws, rng.next_u64()),
        "P2" => question(prompt).into_iter().collect(),
        other => {
            return Err(ModelError::Format(format!(
                "unknown perturbation type '{other}'"
            )))
        }
    };
    Ok(apply(prompt, edits))
}

/// The first sentence of the docstring's prose: (start, end) where `end` is its final '.' (or
/// the end of its last word when it has none). None when it does not start with a letter.
fn first_sentence(prompt: &str) -> Option<(usize, usize)> {
    let prose = prose_lines(prompt);
    let &(s0, e0) = prose.first()?;
    let start = s0 + prompt[s0..e0].find(|c: char| !c.is_whitespace())?;
    if !prompt.as_bytes()[start].is_ascii_alphabetic() {
        return None;
    }
    // The first paragraph: prose lines that follow one another.
    let mut end_para = e0;
    for &(s, e) in &prose[1..] {
        if s != end_para {
            break;
        }
        end_para = e;
    }
    let b = prompt.as_bytes();
    for i in start..end_para {
        if b[i] == b'.'
            && (i + 1 == b.len() || b[i + 1].is_ascii_whitespace())
            && i > 0
            && b[i - 1].is_ascii_alphabetic()
        {
            return Some((start, i));
        }
    }
    let last = prompt[start..end_para].trim_end().len();
    Some((start, start + last))
}

/// The sentence's first word, lower-cased unless it is "I" or an acronym.
fn lower_first_word(sentence: &str) -> String {
    let word_len = sentence
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(sentence.len());
    let w = &sentence[..word_len];
    if w == "I" || (w.len() > 1 && w.chars().all(|c| c.is_ascii_uppercase())) {
        sentence.to_string()
    } else {
        sentence[..1].to_ascii_lowercase() + &sentence[1..]
    }
}

/// P2: the first sentence as a question: "Can you <verb> ...?" when it is imperative (also after
/// a leading clause: "Given x, return y." -> "Given x, can you return y?"), else "Is it true that
/// ...?".
fn question(prompt: &str) -> Option<Edit> {
    let (start, end) = first_sentence(prompt)?;
    let body = prompt[start..end].trim_end_matches('.');
    let is_verb = |w: &str| {
        words_data()
            .verbs
            .iter()
            .any(|v| v[0] == w.to_ascii_lowercase())
    };
    let first = body
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    let end_incl = if prompt.as_bytes()[end] == b'.' {
        end + 1
    } else {
        end
    };
    let with = if is_verb(first) && prompt.as_bytes()[start].is_ascii_uppercase() {
        format!("Can you {}?", lower_first_word(body))
    } else if let Some(k) = body.find(", ").filter(|&k| {
        is_verb(
            body[k + 2..]
                .split(|c: char| !c.is_ascii_alphabetic())
                .next()
                .unwrap_or(""),
        )
    }) {
        format!(
            "{}, can you {}?",
            &body[..k],
            lower_first_word(&body[k + 2..])
        )
    } else {
        format!("Is it true that {}?", lower_first_word(body))
    };
    Some(Edit {
        start,
        end: end_incl,
        with,
    })
}

/// P1: an imperative first sentence gets a subject, and listed phrasings are reworded.
fn paraphrase(prompt: &str, ws: &[Word], seed: u64) -> Vec<Edit> {
    let wd = words_data();
    let mut edits: Vec<Edit> = Vec::new();
    let mut sentence_start = None;
    if let Some((start, _)) = first_sentence(prompt) {
        let first_end = start
            + prompt[start..]
                .find(|c: char| !c.is_ascii_alphabetic())
                .unwrap_or(0);
        let first = &prompt[start..first_end];
        if let Some(v) = wd.verbs.iter().find(|v| v[0] == first.to_ascii_lowercase()) {
            if first.chars().next().is_some_and(|c| c.is_uppercase()) {
                edits.push(Edit {
                    start,
                    end: first_end,
                    with: format!("This function {}", v[1]),
                });
                sentence_start = Some(start);
            }
        }
    }
    // Phrasings: whole words, on one prose line, case-insensitive on the first letter.
    for &(s, e) in &prose_lines(prompt) {
        let line = prompt[s..e].to_ascii_lowercase();
        for (from, to) in &wd.phrases {
            let mut at = 0;
            while let Some(k) = line[at..].find(from) {
                let (a, b) = (s + at + k, s + at + k + from.len());
                at += k + from.len();
                let bounded = |i: usize| {
                    i == 0 || i >= prompt.len() || !prompt.as_bytes()[i].is_ascii_alphanumeric()
                };
                let words_only = ws.iter().any(|w| w.start == a)
                    && bounded(a.wrapping_sub(1).min(prompt.len()))
                    && bounded(b);
                let overlaps = edits
                    .iter()
                    .any(|x| a < x.end.max(x.start + 1) && x.start < b)
                    || sentence_start.is_some_and(|ss| ss >= a && ss < b);
                if words_only && !overlaps {
                    edits.push(Edit {
                        start: a,
                        end: b,
                        with: recase(&prompt[a..b], to),
                    });
                }
            }
        }
    }
    // And a couple of words replaced by synonyms, where the sentence gave room.
    let syn: Vec<(usize, &'static str)> = ws
        .iter()
        .enumerate()
        .filter_map(|(i, w)| {
            wd.synonyms
                .iter()
                .find(|s| s.0 == prompt[w.start..w.end].to_ascii_lowercase())
                .map(|s| (i, s.1))
        })
        .collect();
    let mut rng = SplitMix64(seed);
    for c in pick(&syn, 2, &mut rng, |_| true) {
        let (i, r) = syn[c];
        let w = ws[i];
        if !edits
            .iter()
            .any(|x| w.start < x.end.max(x.start + 1) && x.start < w.end)
            && sentence_start.map_or(true, |ss| w.start > ss + 20)
        {
            edits.push(Edit {
                start: w.start,
                end: w.end,
                with: recase(&prompt[w.start..w.end], r),
            });
        }
    }
    edits
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

#[cfg(test)]
mod set_seed_tests {
    use super::*;
    use crate::dataset::Problem;
    use crate::sets::PerturbationType;

    #[test]
    fn set_seed_zero_is_the_task_number_and_other_seeds_draw_other_typos() {
        assert_eq!(set_task_seed("HumanEval/12", 0), 12);
        let clean: Vec<Problem> = (0..8)
            .map(|i| Problem {
                task_id: format!("HumanEval/{i}"),
                prompt: format!(
                    "def f{i}(numbers):\n    \"\"\"Return the largest element of the given list of numbers, or None when the list is empty.\"\"\"\n"
                ),
                entry_point: format!("f{i}"),
                test: String::new(),
                original_prompt: None,
            })
            .collect();
        let (a, b) = (
            perturb_problems(&clean, PerturbationType::C3, 0).unwrap(),
            perturb_problems(&clean, PerturbationType::C3, 1).unwrap(),
        );
        for (p, c) in a.iter().zip(&clean) {
            assert_eq!(
                p.prompt,
                perturb(&c.prompt, "C3", task_seed(&c.task_id)).unwrap()
            );
        }
        let differ = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.prompt != y.prompt)
            .count();
        assert!(differ >= 6, "seed 1 redrew {differ} of 8");
        assert_eq!(
            b[3].original_prompt.as_deref(),
            Some(clean[3].prompt.as_str())
        );
    }
}
