//! Tokenizer: byte-level BPE built from GGUF metadata (the same structure HF transformers builds
//! from a GGUF), or loaded from an HF tokenizer.json. The `tokenizers` crate does the work, with
//! the fancy-regex backend natively and in wasm, so both give the same ids.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::{NormalizerWrapper, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior};

use super::gguf::{ArrayValue, GgufHeader, StrArray};
use crate::error::ModelError;

/// Qwen2's pre-tokenizer split (HF `Qwen2Converter`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// Most special (control or user-defined) tokens a GGUF tokenizer may have: the tokenizers crate
/// finds them in text with automata that cost about 65 bytes per byte of them. Real models have
/// tens to a few hundred.
pub const MAX_SPECIAL_TOKENS: usize = 1 << 12;

/// What building a tokenizer may take whatever the file's size: tiny test models' files are
/// smaller than the 1.5 MB a 256-token vocabulary takes (see `cost::FIXED`).
const TOKENIZER_FLOOR_BYTES: u64 = 16 << 20;

/// Memory of building a tokenizer from GGUF metadata, as the tokenizers crate (0.22) lays it out:
/// bytes per vocabulary entry, merge and special token beyond their strings, each an upper bound
/// of the crate's structures (hash tables at their worst load), and strings rounded up as the
/// system allocator does. The hostile GGUF tests (tests/tests/gguf_hostile.rs) measure real
/// builds against [`Tokenizer::gguf_build_bytes`]: 100,000 tokens and merges were estimated at
/// 40.8 MB and allocated 20.2 MB at their peak (the count leaves out the allocator's rounding).
mod cost {
    /// The vocabulary map (String, u32) and the reverse map (u32, String): 32-byte slots and a
    /// control byte, at most 2 x 8/7 slots per entry after a power-of-two rounding, each map once.
    pub const TOKEN: u64 = 2 * (33 * 16 / 7 + 1);
    /// The merge list handed to the crate ((String, String): 48 bytes), then the merge map
    /// ((u32, u32) -> (u32, u32): 16-byte slots and a control byte, 2 x 8/7 slots per entry,
    /// 1.5 times that while it grows); the list is freed as the map fills, so both are counted.
    pub const MERGE: u64 = 48 + 17 * 16 / 7 * 3 / 2 + 1;
    /// Added-vocabulary maps, lists and sets (the token three times, its id twice), beyond four
    /// copies of the string ...
    pub const SPECIAL: u64 = 256;
    /// ... and the two automata that find special tokens in text, per byte of the token: about
    /// 65 measured (4,096 tokens of 11 bytes took 2.8 MB in all, of 211 bytes 60 MB).
    pub const SPECIAL_BYTE: u64 = 96;
    /// Whatever the vocabulary: the pre-tokenizer's compiled regex and the encode cache the crate
    /// reserves (10,000 entries); 1.5 MB measured for a 256-token vocabulary.
    pub const FIXED: u64 = 2 << 20;
    /// Each string's own allocation: its bytes rounded to the allocator's 16-byte granule,
    /// with a 32-byte minimum chunk.
    pub fn string(len: u64) -> u64 {
        (len + 8).div_ceil(16).max(2) * 16
    }
}

pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// Ids of special (control) tokens: left out of decoded text.
    special: Vec<u32>,
    /// Ids in the vocabulary, added tokens included, counted once: the tokenizers crate counts
    /// them by building the whole vocabulary as a map on every call.
    vocab: usize,
}

/// The `tokenizer.ggml.*` arrays of a GGUF header, checked for their types and lengths.
struct GgufVocab<'h> {
    pre: &'h str,
    tokens: &'h StrArray,
    merges: &'h StrArray,
    /// ggml token types: 1 normal, 2 unknown, 3 control, 4 user-defined, 5 unused, 6 byte.
    types: Option<&'h ArrayValue>,
}

impl<'h> GgufVocab<'h> {
    fn read(h: &'h GgufHeader) -> Result<GgufVocab<'h>, ModelError> {
        let get = |k: &str| {
            h.get(k)
                .ok_or_else(|| ModelError::Missing(format!("GGUF metadata {k}")))
        };
        let model = get("tokenizer.ggml.model")?.as_str().unwrap_or("");
        if model != "gpt2" {
            return Err(ModelError::Tokenizer(format!(
                "tokenizer model '{model}' is not supported (byte-level BPE 'gpt2' is)"
            )));
        }
        let strings = |k: &str| match get(k)?.as_array() {
            Some(ArrayValue::Str(a)) => Ok(a),
            _ => Err(ModelError::Tokenizer(format!(
                "{k} is not an array of strings"
            ))),
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        if u32::try_from(tokens.len()).is_err() {
            return Err(ModelError::Tokenizer(format!(
                "{} tokens: ids are 32-bit",
                tokens.len()
            )));
        }
        let types = match h.get("tokenizer.ggml.token_type").map(|v| v.as_array()) {
            None => None,
            Some(Some(a)) if a.len() == tokens.len() => Some(a),
            Some(Some(a)) => {
                return Err(ModelError::Tokenizer(format!(
                    "tokenizer.ggml.token_type has {} entries for {} tokens",
                    a.len(),
                    tokens.len()
                )))
            }
            Some(None) => {
                return Err(ModelError::Tokenizer(
                    "tokenizer.ggml.token_type is not an array".into(),
                ))
            }
        };
        Ok(GgufVocab {
            pre: h
                .get("tokenizer.ggml.pre")
                .and_then(|v| v.as_str())
                .unwrap_or("default"),
            tokens,
            merges: strings("tokenizer.ggml.merges")?,
            types,
        })
    }

    /// The ids of control and user-defined tokens: HF adds them as special tokens.
    fn special_ids(&self) -> Result<Vec<u32>, ModelError> {
        let Some(types) = self.types else {
            return Ok(Vec::new());
        };
        let mut out = Vec::new();
        for (i, t) in types.iter().enumerate() {
            if matches!(t.as_u64(), Some(3 | 4)) {
                if out.len() == MAX_SPECIAL_TOKENS {
                    return Err(ModelError::Tokenizer(format!(
                        "more than {MAX_SPECIAL_TOKENS} control or user-defined tokens"
                    )));
                }
                out.push(i as u32);
            }
        }
        Ok(out)
    }

    /// An upper bound of the memory building the tokenizer takes (see [`cost`]).
    fn build_bytes(&self, special: &[u32]) -> u64 {
        let strings = |a: &StrArray| a.iter().map(|s| cost::string(s.len() as u64)).sum::<u64>();
        let tokens = self.tokens.len() as u64 * cost::TOKEN + 2 * strings(self.tokens);
        // A merge's two halves are two strings, one byte shorter together than the merge.
        let merges =
            self.merges.len() as u64 * (cost::MERGE + cost::string(0)) + strings(self.merges);
        let special: u64 = special
            .iter()
            .filter_map(|&i| self.tokens.get(i as usize))
            .map(|s| {
                let len = s.len() as u64;
                cost::SPECIAL + len * cost::SPECIAL_BYTE + 4 * cost::string(len)
            })
            .sum();
        cost::FIXED + tokens + merges + special
    }
}

impl Tokenizer {
    /// What building the tokenizer of a GGUF header may take: at most the size of the file the
    /// header describes (its tensor table's extent, which the callers check against the file
    /// before they build a tokenizer), and 16 MB (`TOKENIZER_FLOOR_BYTES`) for any file.
    pub fn gguf_budget(h: &GgufHeader) -> u64 {
        h.required_len().max(TOKENIZER_FLOOR_BYTES)
    }

    /// An upper bound of the memory building the tokenizer of `h` takes, checked before
    /// anything is built: the metadata's types, its counts, and its special tokens.
    pub fn gguf_build_bytes(h: &GgufHeader) -> Result<u64, ModelError> {
        let v = GgufVocab::read(h)?;
        Ok(v.build_bytes(&v.special_ids()?))
    }

    /// Build from `tokenizer.ggml.*` metadata (model `gpt2`: byte-level BPE), the structure HF
    /// transformers builds from a GGUF. Refused before anything is built when building would take
    /// more than [`Tokenizer::gguf_budget`]: a file of tiny tokens or repeated merges would
    /// otherwise cost many times its size.
    pub fn from_gguf(h: &GgufHeader) -> Result<Tokenizer, ModelError> {
        let v = GgufVocab::read(h)?;
        let special = v.special_ids()?;
        let need = v.build_bytes(&special);
        let budget = Self::gguf_budget(h);
        if need > budget {
            return Err(ModelError::Tokenizer(format!(
                "building the tokenizer ({} tokens, {} merges) would take about {} MB, more than \
                 the {} MB a model file of {} MB allows",
                v.tokens.len(),
                v.merges.len(),
                need >> 20,
                budget >> 20,
                h.required_len() >> 20
            )));
        }
        let mut inner = tokenizers::Tokenizer::new(bpe(&v)?);
        let (normalizer, pre_tokenizer) = pre_tokenization(v.pre)?;
        inner
            .with_normalizer(normalizer)
            .with_pre_tokenizer(Some(pre_tokenizer))
            .with_post_processor(Some(ByteLevel::new(false, false, false)))
            .with_decoder(Some(ByteLevel::new(false, false, false)));
        let added: Vec<AddedToken> = special
            .iter()
            .filter_map(|&i| v.tokens.get(i as usize))
            .map(|s| AddedToken::from(s.to_string(), true))
            .collect();
        inner.add_tokens(&added);
        Ok(Tokenizer {
            inner,
            special,
            vocab: v.tokens.len(),
        })
    }

    fn new(inner: tokenizers::Tokenizer, special: Vec<u32>) -> Tokenizer {
        let vocab = inner.get_vocab_size(true);
        Tokenizer {
            inner,
            special,
            vocab,
        }
    }

    /// Load an HF tokenizer.json.
    pub fn from_json(bytes: &[u8]) -> Result<Tokenizer, ModelError> {
        let inner = tokenizers::Tokenizer::from_bytes(bytes)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
        let special = inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(i, _)| *i)
            .collect();
        Ok(Tokenizer::new(inner, special))
    }

    /// Token ids of `text`; no BOS is added (these models' `add_bos_token` is false).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, ModelError> {
        Ok(self
            .inner
            .encode(text, false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?
            .get_ids()
            .to_vec())
    }

    /// Text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String, ModelError> {
        self.inner
            .decode(ids, true)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains(&id)
    }

    /// The tokenizer as HF tokenizer.json text.
    pub fn to_json(&self) -> Result<String, ModelError> {
        self.inner
            .to_string(false)
            .map_err(|e| ModelError::Tokenizer(e.to_string()))
    }

    pub fn vocab_size(&self) -> usize {
        self.vocab
    }
}

/// The BPE model: every token at its index, the merges in rank order. The builder checks that
/// each merge's halves and their join are tokens.
fn bpe(v: &GgufVocab) -> Result<BPE, ModelError> {
    let mut vocab = Vocab::with_capacity(v.tokens.len());
    vocab.extend(
        v.tokens
            .iter()
            .enumerate()
            .map(|(i, s)| (s.to_string(), i as u32)),
    );
    // Sized up front: collecting through a `Result` would grow it by doubling.
    let mut merges = Vec::with_capacity(v.merges.len());
    for (i, m) in v.merges.iter().enumerate() {
        let (a, b) = m
            .split_once(' ')
            .ok_or_else(|| ModelError::Tokenizer(format!("merge #{i} '{m}' has no space")))?;
        merges.push((a.to_string(), b.to_string()));
    }
    // What HF's GGUF converter sets: no unknown token, no dropout, empty affixes.
    BPE::builder()
        .vocab_and_merges(vocab, merges)
        .continuing_subword_prefix(String::new())
        .end_of_word_suffix(String::new())
        .build()
        .map_err(|e| ModelError::Tokenizer(e.to_string()))
}

/// Normalizer and pre-tokenizer for `tokenizer.ggml.pre`.
fn pre_tokenization(
    pre: &str,
) -> Result<(Option<NormalizerWrapper>, PreTokenizerWrapper), ModelError> {
    Ok(match pre {
        "qwen2" => {
            let split = Split::new(
                SplitPattern::Regex(QWEN2_SPLIT.into()),
                SplitDelimiterBehavior::Isolated,
                false,
            )
            .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
            (
                Some(NFC.into()),
                Sequence::new(vec![
                    split.into(),
                    ByteLevel::new(false, false, false).into(),
                ])
                .into(),
            )
        }
        // GPT-2 style regex inside ByteLevel: what HF builds for llama-arch GGUFs with a gpt2 vocab.
        _ => (None, ByteLevel::new(false, false, true).into()),
    })
}
