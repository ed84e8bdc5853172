//! Run directories and their manifests: what a run's results depend on is written once as
//! `manifest.json`; a later run into the same directory, or one that takes it as a baseline, is
//! refused when anything differs (creme_core::manifest names the difference).

use std::io::Read;
use std::path::Path;

use creme_core::manifest::{self, BuildId, FileDigest, RunManifest};
use creme_core::{Backend, Device};

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

/// A file's name (never its directory: manifests carry no machine paths), size and SHA-256,
/// read in pieces.
pub fn file_digest(path: &Path) -> Res<FileDigest> {
    use sha2::Digest;
    let mut f =
        std::fs::File::open(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut bytes = 0u64;
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
        bytes += n as u64;
    }
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok(FileDigest {
        name,
        bytes,
        sha256: format!("{:x}", h.finalize()),
    })
}

/// The backend as far as results depend on it: the CPU backend gives the same bits whatever its
/// thread count or SIMD ISA, so only cpu / cpu-exact count; a wgpu adapter counts whole.
pub fn results_device(dev: &Device) -> String {
    let d = dev.describe();
    match d.strip_prefix("cpu:") {
        Some(rest) if rest.contains("exact") => "cpu-exact".into(),
        Some(_) => "cpu".into(),
        None => d,
    }
}

/// Take `dir` for a run described by `m`: a new directory gets the manifest; one holding a
/// manifest must hold an equal one; one holding records but no manifest (written before
/// manifests) is refused. Nothing already there is overwritten.
pub fn claim(dir: &Path, m: &RunManifest, records: &[&str]) -> Res {
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join(MANIFEST_FILE);
    if path.exists() {
        let old = read_manifest(dir)?;
        let d = m.differences(&old);
        if !d.is_empty() {
            return Err(format!(
                "{} holds a run with other inputs, so its results cannot be continued:\n  {}\nuse another --out (or the inputs it was made with)",
                dir.display(),
                d.join("\n  ")
            )
            .into());
        }
        return Ok(());
    }
    if let Some(f) = records
        .iter()
        .map(|r| dir.join(r))
        .find(|p| p.metadata().is_ok_and(|m| m.len() > 0))
    {
        return Err(format!(
            "{} holds results ({}) but no {MANIFEST_FILE}: they were written by a creme before run manifests, so what they depend on is unknown; use another --out",
            dir.display(),
            f.display()
        )
        .into());
    }
    common::write(&path, &serde_json::to_string_pretty(m)?)
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

/// Every finished record of a `samples.jsonl` file, typed (versions this build does not know are
/// refused by name).
pub fn parse_samples(
    values: Vec<serde_json::Value>,
    path: &Path,
) -> Res<Vec<creme_core::eval::SampleRecord>> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            creme_core::eval::parse_sample_line(&v.to_string())
                .map_err(|e| format!("{}: record {}: {e}", path.display(), i + 1).into())
        })
        .collect()
}

/// `samples.jsonl`, typed: every finished record on opening, then one fsynced line per record.
pub struct SampleLog(common::JsonlLog);

impl SampleLog {
    pub fn open(path: &Path) -> Res<(SampleLog, Vec<creme_core::eval::SampleRecord>)> {
        let (log, values) = common::JsonlLog::open(path)?;
        Ok((SampleLog(log), parse_samples(values, path)?))
    }

    pub fn append(&mut self, r: &creme_core::eval::SampleRecord) -> Res {
        self.0.append(&serde_json::to_value(r)?)
    }
}

/// The finished records of a `samples.jsonl` file (read only).
pub fn read_samples(path: &Path) -> Res<Vec<creme_core::eval::SampleRecord>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    text.split_inclusive('\n')
        .filter(|l| l.ends_with('\n') && !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            creme_core::eval::parse_sample_line(l.trim_end())
                .map_err(|e| format!("{}:{}: {e}", path.display(), i + 1).into())
        })
        .collect()
}
