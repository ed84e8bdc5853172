//! The run manifest: everything a run directory's results depend on, so that a resume, or a
//! baseline reused by another run, is refused when any of it differs, with a message that names
//! the difference. Written once as `manifest.json` when a run starts, never overwritten.
//!
//! Pure data: the caller hashes the files (model, completions, patches, the binary) and fills
//! [`BuildId`]; [`dataset_digests`] hashes the loaded problems.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataset::Problem;
use crate::edit::EditSettings;
use crate::eval::GenSpec;
use crate::sets::SetName;
use crate::{Device, GpuOptions};

/// The newest manifest version this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Hex digits kept of each task's content hash (64 bits: ample to tell two datasets apart, and
/// the manifest of all 21 sets stays around 100 KB).
const TASK_DIGEST_HEX: usize = 16;

/// Which command's run this is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunKind {
    Eval,
    Experiment,
}

/// The binary that produced the results: any change of it can move near-tied greedy tokens.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildId {
    /// The crate version.
    pub version: String,
    /// The git commit it was built from, "-dirty" appended for uncommitted changes ("unknown"
    /// outside a checkout).
    pub commit: String,
    /// SHA-256 of the executable.
    pub binary_sha256: String,
}

/// A file an input came from: its name (for messages), size and content hash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

impl FileDigest {
    pub fn of(name: &str, bytes: &[u8]) -> FileDigest {
        FileDigest {
            name: name.to_string(),
            bytes: bytes.len() as u64,
            sha256: sha256_hex(bytes),
        }
    }

    /// The digest of everything `reader` gives, read in pieces (a model file need not fit in
    /// memory twice); `name` is the file's name, never its directory (manifests carry no machine
    /// paths).
    pub fn read(name: &str, mut reader: impl std::io::Read) -> std::io::Result<FileDigest> {
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            bytes += n as u64;
        }
        Ok(FileDigest {
            name: name.to_string(),
            bytes,
            sha256: format!("{:x}", h.finalize()),
        })
    }
}

/// How samples were generated (greedy: temperature 0, top-p 1).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Generation {
    pub n: usize,
    pub temperature: f32,
    pub top_p: f32,
    pub max_tokens: usize,
}

impl From<&GenSpec> for Generation {
    fn from(g: &GenSpec) -> Self {
        let sampled = g.n > 1;
        Generation {
            n: g.n,
            temperature: g.effective_temperature(),
            top_p: if sampled { g.top_p } else { 1.0 },
            max_tokens: g.max_tokens,
        }
    }
}

/// What an experiment adds: how edits are made and evaluated.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ExperimentPlan {
    pub edit: EditSettings,
    pub target_tokens: usize,
    /// The layer rule as given (logprob, pass, random, a number, mode:FILE, from:FILE).
    pub layer: String,
    /// The file a mode:/from: rule reads, hashed.
    pub layer_source: Option<FileDigest>,
    pub restored_at: String,
    /// Target extension past the divergence, and a control in place of the edit (absent in
    /// manifests of the paper's target and of real edits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub past_divergence: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<crate::edit::Control>,
    /// The covariance solver's prompt set and model ([`crate::covariance::Store::key`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub covariance: Option<String>,
    /// Pairs fitted in one solve per edit (absent in manifests of one-pair edits).
    #[serde(default = "one_pair", skip_serializing_if = "is_one_pair")]
    pub pairs: usize,
    pub eval_scope: String,
    /// The types edited for, and the further types every edit is evaluated on.
    pub types: Vec<SetName>,
    pub eval_types: Vec<SetName>,
}

fn one_pair() -> usize {
    1
}

fn is_one_pair(k: &usize) -> bool {
    *k == 1
}

/// Per set, per task id: a hash of the task's content (prompt, tests, entry point).
pub type DatasetDigests = BTreeMap<SetName, BTreeMap<String, String>>;

/// `manifest.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RunManifest {
    pub version: u32,
    pub kind: RunKind,
    pub build: BuildId,
    /// The backend results were computed on, with every setting that moves its numbers (results
    /// differ between backends and wgpu kernel choices, not between thread counts or SIMD ISAs of
    /// the CPU backend, which are bit-identical).
    pub device: Option<String>,
    pub model: Option<FileDigest>,
    /// What judged the programs (interpreter, isolation), as the judge describes itself.
    #[serde(default)]
    pub judge: Option<String>,
    pub dataset: DatasetDigests,
    pub generation: Generation,
    pub timeout_s: u64,
    pub patches: Vec<FileDigest>,
    pub completions: Option<FileDigest>,
    pub experiment: Option<ExperimentPlan>,
}

impl RunManifest {
    /// An eval run's manifest over `sets`, generated as `spec` says; the device, judge, model,
    /// patches and completions are the caller's to fill in.
    pub fn eval(
        build: BuildId,
        sets: &BTreeMap<SetName, Vec<Problem>>,
        spec: &GenSpec,
        timeout_s: u64,
    ) -> RunManifest {
        RunManifest {
            version: MANIFEST_VERSION,
            kind: RunKind::Eval,
            build,
            device: None,
            model: None,
            judge: None,
            dataset: dataset_digests(sets),
            generation: spec.into(),
            timeout_s,
            patches: Vec::new(),
            completions: None,
            experiment: None,
        }
    }
}

/// Per set and task of `sets`, the hash of the task's content.
pub fn dataset_digests(sets: &BTreeMap<SetName, Vec<Problem>>) -> DatasetDigests {
    sets.iter()
        .map(|(s, problems)| {
            let tasks = problems
                .iter()
                .map(|p| (p.task_id.clone(), task_digest(p)))
                .collect();
            (*s, tasks)
        })
        .collect()
}

fn task_digest(p: &Problem) -> String {
    let mut h = Sha256::new();
    for part in [&p.task_id, &p.prompt, &p.test, &p.entry_point] {
        h.update((part.len() as u64).to_le_bytes());
        h.update(part.as_bytes());
    }
    let hex = format!("{:x}", h.finalize());
    hex[..TASK_DIGEST_HEX].to_string()
}

/// The backend as far as results depend on it. The CPU backend gives the same bits whatever its
/// thread count or SIMD ISA (tested), so only cpu / cpu-exact count. On wgpu the adapter counts
/// with every option that moves its numbers (f16 KV cache, f32-only, subgroups, kernel choice,
/// split attention, weight row groups) and the batch size unless its kernels are batch-invariant.
pub fn results_device(dev: &Device, opts: &GpuOptions, batch: usize) -> String {
    use crate::Backend;
    let d = dev.describe();
    if let Some(rest) = d.strip_prefix("cpu:") {
        return if rest.contains("exact") {
            "cpu-exact"
        } else {
            "cpu"
        }
        .into();
    }
    let batch = match dev.batch_invariant() {
        true => "batch-invariant".to_string(),
        false => format!("batch {batch}"),
    };
    format!(
        "{d}; kv_f16 {}, force_f32 {}, no_subgroups {}, qmm {}, split_attention {}, weight_row_group {}, {batch}",
        opts.kv_f16,
        opts.force_f32,
        opts.no_subgroups,
        opts.qmm.as_deref().unwrap_or("auto"),
        opts.split_attention.map_or("auto".into(), |b| b.to_string()),
        opts.weight_row_group.map_or("auto".into(), |g| g.to_string()),
    )
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    format!("{:x}", Sha256::digest(bytes))
}

/// Parse `manifest.json`, refusing versions this build does not know.
pub fn parse_manifest(text: &str) -> Result<RunManifest, String> {
    crate::versioned::parse(text, MANIFEST_VERSION, MANIFEST_VERSION, "a run manifest")
}

/// What [`RunManifest::claim`] decides.
#[derive(Clone, Debug, PartialEq)]
pub enum Claim {
    Continue,
    ReplaceJudge,
    Refuse(Vec<String>),
}

impl RunManifest {
    /// What differs between this manifest and `other`, one line each; empty when a run of one
    /// may continue the other's records.
    pub fn differences(&self, other: &RunManifest) -> Vec<String> {
        let mut d = Vec::new();
        let mut field = |name: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{name}: {a} here, {b} there"));
            }
        };
        field("kind", json(&self.kind), json(&other.kind));
        field(
            "creme build",
            build_text(&self.build),
            build_text(&other.build),
        );
        field("device", json(&self.device), json(&other.device));
        field("model", file_text(&self.model), file_text(&other.model));
        field("judge", json(&self.judge), json(&other.judge));
        field(
            "generation",
            json(&self.generation),
            json(&other.generation),
        );
        field("timeout_s", json(&self.timeout_s), json(&other.timeout_s));
        field("patches", json(&self.patches), json(&other.patches));
        field(
            "completions",
            file_text(&self.completions),
            file_text(&other.completions),
        );
        field(
            "experiment",
            json(&self.experiment),
            json(&other.experiment),
        );
        d.extend(dataset_differences(&self.dataset, &other.dataset, true));
        d
    }

    /// What taking a run directory whose manifest is `old` does for this run: continue it,
    /// replace its judge (only the judge differs and `unjudged`: every record so far is a judge
    /// error, so no verdict exists yet and a run whose interpreter was missing can be redone with
    /// one), or refuse it, naming what differs.
    pub fn claim(&self, old: &RunManifest, unjudged: bool) -> Claim {
        let d = self.differences(old);
        if d.is_empty() {
            Claim::Continue
        } else if unjudged && d.iter().all(|l| l.starts_with("judge:")) {
            Claim::ReplaceJudge
        } else {
            Claim::Refuse(d)
        }
    }

    /// Why drafts from the eval run `base` do not fit this run: they are another model's.
    /// Drafts never change results (verification is exact), but that is a mistake worth naming.
    pub fn drafts_misfit(&self, base: &RunManifest) -> Option<String> {
        let name = base.model.as_ref().map(|f| &f.name);
        (base.model != self.model).then(|| format!("drafts of another model ({name:?})"))
    }

    /// Why this run may not take `baseline`'s greedy outcomes and drafts: the baseline must come
    /// from the same build, device, model and generation budget, unpatched, greedy, and hold
    /// every task of this run with the same content.
    pub fn baseline_differences(&self, baseline: &RunManifest) -> Vec<String> {
        let mut d = Vec::new();
        let mut field = |name: &str, a: String, b: String| {
            if a != b {
                d.push(format!("{name}: {a} here, {b} in the baseline"));
            }
        };
        field(
            "creme build",
            build_text(&self.build),
            build_text(&baseline.build),
        );
        field("device", json(&self.device), json(&baseline.device));
        field("model", file_text(&self.model), file_text(&baseline.model));
        field("judge", json(&self.judge), json(&baseline.judge));
        field(
            "generation",
            json(&self.generation),
            json(&baseline.generation),
        );
        field(
            "timeout_s",
            json(&self.timeout_s),
            json(&baseline.timeout_s),
        );
        field("patches", json(&self.patches), json(&baseline.patches));
        field(
            "completions",
            file_text(&self.completions),
            file_text(&baseline.completions),
        );
        d.extend(dataset_differences(&self.dataset, &baseline.dataset, false));
        d
    }
}

/// Tasks whose content differs, and (when `exact`) tasks or sets present on one side only;
/// otherwise only those `ours` has and `theirs` lacks.
fn dataset_differences(ours: &DatasetDigests, theirs: &DatasetDigests, exact: bool) -> Vec<String> {
    let mut d = Vec::new();
    for (set, tasks) in ours {
        let Some(other) = theirs.get(set) else {
            d.push(format!("dataset: set {set} is not in the other run"));
            continue;
        };
        let changed: Vec<&String> = tasks
            .iter()
            .filter(|(t, h)| other.get(*t).is_some_and(|o| o != *h))
            .map(|(t, _)| t)
            .collect();
        let missing: Vec<&String> = tasks.keys().filter(|t| !other.contains_key(*t)).collect();
        let extra: Vec<&String> = if exact {
            other.keys().filter(|t| !tasks.contains_key(*t)).collect()
        } else {
            Vec::new()
        };
        for (what, list) in [
            ("other content", changed),
            ("only here", missing),
            ("only there", extra),
        ] {
            if !list.is_empty() {
                d.push(format!(
                    "dataset {set}: {} tasks with {what} ({})",
                    list.len(),
                    first_few(&list)
                ));
            }
        }
    }
    if exact {
        for set in theirs.keys().filter(|s| !ours.contains_key(*s)) {
            d.push(format!("dataset: set {set} is only in the other run"));
        }
    }
    d
}

fn first_few(list: &[&String]) -> String {
    let shown: Vec<&str> = list.iter().take(3).map(|s| s.as_str()).collect();
    let more = if list.len() > 3 { ", ..." } else { "" };
    format!("{}{more}", shown.join(", "))
}

fn json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

fn build_text(b: &BuildId) -> String {
    format!(
        "{} {} (binary {})",
        b.version,
        b.commit,
        short(&b.binary_sha256)
    )
}

fn file_text(f: &Option<FileDigest>) -> String {
    match f {
        Some(f) => format!(
            "{} ({} bytes, sha256 {})",
            f.name,
            f.bytes,
            short(&f.sha256)
        ),
        None => "none".into(),
    }
}

fn short(hex: &str) -> String {
    hex.chars().take(12).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sets::PerturbationType;

    /// A reader that gives at most 3 bytes a call, as a pipe or a slow file may.
    struct Trickle<'a>(&'a [u8]);

    impl std::io::Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            let n = self.0.len().min(buf.len()).min(3);
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn a_digest_read_in_pieces_equals_the_digest_of_the_bytes() {
        let bytes: Vec<u8> = (0..1000u32).map(|i| (i * 7) as u8).collect();
        let read = FileDigest::read("m.gguf", Trickle(&bytes)).unwrap();
        assert_eq!(read, FileDigest::of("m.gguf", &bytes));
        assert_eq!(read.bytes, 1000);
        let empty = FileDigest::read("e", std::io::empty()).unwrap();
        assert_eq!(
            empty.sha256,
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    fn problem(id: &str, prompt: &str) -> Problem {
        Problem {
            task_id: id.into(),
            prompt: prompt.into(),
            entry_point: "f".into(),
            test: "def check(c): pass".into(),
            original_prompt: None,
        }
    }

    fn manifest(prompt_b: &str) -> RunManifest {
        let sets = [(
            SetName::Clean,
            vec![problem("T/0", "def f():"), problem("T/1", prompt_b)],
        )]
        .into();
        RunManifest {
            version: MANIFEST_VERSION,
            kind: RunKind::Eval,
            build: BuildId {
                version: "0.1.0".into(),
                commit: "abc".into(),
                binary_sha256: "00".repeat(32),
            },
            device: Some("cpu".into()),
            model: Some(FileDigest::of("m.gguf", b"model bytes")),
            judge: Some("python3 in the root sandbox".into()),
            dataset: dataset_digests(&sets),
            generation: Generation::from(&GenSpec::default()),
            timeout_s: 10,
            patches: vec![],
            completions: None,
            experiment: None,
        }
    }

    #[test]
    fn equal_runs_have_no_differences_and_each_change_is_named() {
        let a = manifest("def g():");
        assert!(a.differences(&a.clone()).is_empty());
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(parse_manifest(&text).unwrap(), a);

        let mut b = manifest("def g(): # edited");
        b.model = Some(FileDigest::of("m.gguf", b"other bytes"));
        b.timeout_s = 20;
        let d = a.differences(&b);
        assert_eq!(d.len(), 3, "{d:?}");
        assert!(d.iter().any(|l| l.starts_with("model:")), "{d:?}");
        assert!(
            d.iter()
                .any(|l| l.starts_with("timeout_s: 10 here, 20 there")),
            "{d:?}"
        );
        assert!(
            d.iter()
                .any(|l| l.contains("dataset clean: 1 tasks with other content (T/1)")),
            "{d:?}"
        );
    }

    #[test]
    fn a_baseline_may_hold_more_tasks_but_not_fewer() {
        let run = manifest("def g():");
        let mut bigger = run.clone();
        bigger.kind = RunKind::Experiment;
        let c3 = SetName::Perturbed(PerturbationType::C3);
        bigger
            .dataset
            .insert(c3, [("T/0".to_string(), "ff".to_string())].into());
        assert!(run.baseline_differences(&bigger).is_empty());
        let d = bigger.baseline_differences(&run);
        assert!(d.iter().any(|l| l.contains("set C3")), "{d:?}");
    }

    #[test]
    fn other_versions_are_refused_by_name() {
        let mut v = serde_json::to_value(manifest("x")).unwrap();
        v["version"] = 9.into();
        let e = parse_manifest(&v.to_string()).unwrap_err();
        assert!(e.contains("version 9"), "{e}");
    }

    #[test]
    fn a_claim_replaces_only_the_judge_of_a_run_without_verdicts() {
        let a = manifest("def g():");
        assert_eq!(a.claim(&a.clone(), false), Claim::Continue);
        let mut b = a.clone();
        b.judge = Some("python3 with rlimits".into());
        assert_eq!(b.claim(&a, true), Claim::ReplaceJudge);
        assert!(matches!(b.claim(&a, false), Claim::Refuse(d) if d.len() == 1));
        b.timeout_s = 20;
        assert!(matches!(b.claim(&a, true), Claim::Refuse(d) if d.len() == 2));
        assert_eq!(a.drafts_misfit(&b), None);
        b.model = Some(FileDigest::of("m.gguf", b"other bytes"));
        assert!(a.drafts_misfit(&b).unwrap().contains("another model"));
    }
}
