//! Run directories and their manifests: what a run's results depend on is written once as
//! `manifest.json`; a later run into the same directory, or one that takes it as a baseline, is
//! refused when anything differs (creme_core::manifest names the difference).

use std::path::Path;

use creme_core::eval::{parse_sample_line, SampleRecord};
use creme_core::jsonl;
use creme_core::manifest::{self, BuildId, Claim, RunManifest};
use creme_core::ModelError;

use crate::common::{self, Res};

pub const MANIFEST_FILE: &str = "manifest.json";

/// This binary: crate version, git commit, executable hash.
pub fn build_id() -> Res<BuildId> {
    let exe = std::env::current_exe().map_err(|e| format!("locating the creme binary: {e}"))?;
    Ok(BuildId {
        version: env!("CARGO_PKG_VERSION").to_string(),
        commit: env!("CREME_GIT_COMMIT").to_string(),
        binary_sha256: file_digest(&exe)?.sha256,
    })
}

pub use crate::common::file_digest;

pub use creme_core::manifest::results_device;

/// Take `dir` for a run described by `m`: a new directory gets the manifest; one holding a
/// manifest must hold an equal one; one holding records (`<prefix>*.jsonl` of `records`) but no
/// manifest (written before manifests) is refused. Nothing recorded is overwritten, except that
/// with `unjudged` a changed judge replaces the recorded one (core's `RunManifest::claim`).
pub fn claim(dir: &Path, m: &RunManifest, records: &[&str], unjudged: bool) -> Res {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(MANIFEST_FILE);
    if !path.exists() {
        if let Some(f) = find_records(dir, records)? {
            return Err(format!(
                "{} holds results ({}) but no {MANIFEST_FILE}: they were written by a creme before run manifests, so what they depend on is unknown; use another --out",
                dir.display(),
                f.display()
            )
            .into());
        }
        if create_new(&path, &serde_json::to_string_pretty(m)?)? {
            return Ok(());
        }
        // Another process made it meanwhile: it must describe the same run.
    }
    let d = match m.claim(&read_manifest(dir)?, unjudged) {
        Claim::Continue => return Ok(()),
        Claim::ReplaceJudge => {
            eprintln!(
                "note: {} had no verdict yet; its judge is now {:?}",
                dir.display(),
                m.judge
            );
            return common::write(&path, &serde_json::to_string_pretty(m)?);
        }
        Claim::Refuse(d) => d,
    };
    Err(format!(
        "{} holds a run with other inputs, so its results cannot be continued:\n  {}\nuse another --out (or the inputs it was made with)",
        dir.display(),
        d.join("\n  ")
    )
    .into())
}

/// A non-empty `<prefix>*.jsonl` file in `dir`, for each prefix of `prefixes`.
fn find_records(dir: &Path, prefixes: &[&str]) -> Res<Option<std::path::PathBuf>> {
    for e in std::fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))? {
        let p = e?.path();
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or_default();
        let ours = prefixes.iter().any(|pre| name.starts_with(pre)) && name.ends_with(".jsonl");
        if ours && p.metadata().is_ok_and(|m| m.len() > 0) {
            return Ok(Some(p));
        }
    }
    Ok(None)
}

/// Write `text` to `path` only if no file is there (a private temp file linked into place, which
/// fails when the name exists): false when another process was first.
fn create_new(path: &Path, text: &str) -> Res<bool> {
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    std::fs::write(&tmp, text).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(format!("writing {}: {e}", path.display()).into()),
    }
}

pub fn read_manifest(dir: &Path) -> Res<RunManifest> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        format!(
            "reading {}: {e} (a run directory of a creme before run manifests?)",
            path.display()
        )
    })?;
    Ok(manifest::parse_manifest(&text).map_err(|e| format!("{}: {e}", path.display()))?)
}

/// Refuse a baseline directory whose results do not fit the run `m`.
pub fn check_baseline(dir: &Path, m: &RunManifest) -> Res {
    let base = read_manifest(dir)?;
    let d = m.baseline_differences(&base);
    if d.is_empty() {
        return Ok(());
    }
    Err(format!(
        "the baseline {} does not fit this run:\n  {}",
        dir.display(),
        d.join("\n  ")
    )
    .into())
}

/// `samples.jsonl`, typed: every finished record on opening (versions this build does not know
/// are refused by name), then one synced line per record.
pub struct SampleLog(common::JsonlLog);

impl SampleLog {
    pub fn open(path: &Path) -> Res<(SampleLog, Vec<SampleRecord>)> {
        let (log, records) = common::JsonlLog::open_with(path, parse_sample_line)?;
        Ok((SampleLog(log), records))
    }

    pub fn append(&mut self, r: &SampleRecord) -> Res {
        self.0.append(r)
    }
}

/// Whether no verdict is recorded in `samples` yet (no file, or only judge errors): then a
/// changed judge may replace the recorded one (see [`claim`]).
pub fn unjudged(samples: &Path) -> Res<bool> {
    Ok(!samples.exists()
        || read_samples(samples)?
            .iter()
            .all(SampleRecord::is_judge_error))
}

/// A write failure inside core's sink: kept in `slot`, to be returned as it is, and reported to
/// core as an error so that the evaluation stops.
pub fn keep_failure(
    r: Res,
    slot: &mut Option<Box<dyn std::error::Error>>,
) -> Result<(), ModelError> {
    r.map_err(|e| {
        let msg = e.to_string();
        *slot = Some(e);
        ModelError::Format(msg)
    })
}

/// The result of a run whose sink may have failed: the kept write failure first (core's error
/// is then only its echo).
pub fn unless_failed<T>(
    failure: Option<Box<dyn std::error::Error>>,
    r: Result<T, ModelError>,
) -> Res<T> {
    match failure {
        Some(e) => Err(e),
        None => Ok(r?),
    }
}

/// The finished records of a `samples.jsonl` file (read only).
pub fn read_samples(path: &Path) -> Res<Vec<SampleRecord>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let log = jsonl::parse_log(&text, parse_sample_line);
    Ok(log.map_err(|e| format!("{}: {e}", path.display()))?.records)
}
