//! `creme export`: a model with CREME patches applied, written as an HF checkpoint (f32
//! safetensors, config.json, tokenizer.json) or as a GGUF (llama.cpp and other runtimes).

use std::path::PathBuf;
use std::time::Instant;

use crate::common::{self, Res};

#[derive(clap::Args, Clone)]
pub struct ExportArgs {
    /// GGUF model file (default: the cached Qwen2.5-Coder-0.5B-Instruct Q4_K_M)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Patches to apply (repeatable)
    #[arg(long)]
    pub patch: Vec<PathBuf>,
    /// Output directory (an HF checkpoint), or with --gguf the GGUF file to write
    #[arg(long)]
    pub out: PathBuf,
    /// Write a GGUF: the model file with each patched layer's W_down in F32
    #[arg(long)]
    pub gguf: bool,
}

/// The GGUF of `file` with `patches` applied, written whole (a temp file renamed into place).
fn write_gguf(a: &ExportArgs, file: &[u8], patches: &[creme_core::patch::EditPatch]) -> Res {
    let t0 = Instant::now();
    let bytes = creme_core::model::gguf_write::export_gguf(file, patches)?;
    common::write(&a.out, &bytes)?;
    println!(
        "wrote {} ({:.0} MiB; {} patch(es), their layers' W_down in F32) in {:.1} s",
        a.out.display(),
        bytes.len() as f64 / 1048576.0,
        patches.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

pub fn run(a: ExportArgs) -> Res {
    let path = common::model_path(a.model.as_deref());
    let file = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let patches = a
        .patch
        .iter()
        .map(|p| common::read_patch(p))
        .collect::<Res<Vec<_>>>()?;
    if a.gguf {
        return write_gguf(&a, &file, &patches);
    }
    let t0 = Instant::now();
    let (st, config, tokenizer) = creme_core::model::safetensors::export_hf(&file, &patches)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    let out = &a.out;
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    common::write(&out.join("config.json"), &config)?;
    common::write(&out.join("tokenizer.json"), &tokenizer)?;
    common::write(&out.join("model.safetensors"), &st)?;
    println!(
        "wrote {} (model.safetensors {:.0} MiB, config.json, tokenizer.json; {} patch(es)) in {:.1} s",
        out.display(),
        st.len() as f64 / 1048576.0,
        patches.len(),
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
