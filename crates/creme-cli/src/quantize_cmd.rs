//! `creme quantize`: re-encode a GGUF model's weights as Q8_0 / Q4_0 (or F16/F32) so the web app
//! can stream other small code models, and check what the quantization cost: greedy agreement and
//! the perplexity of the source model's greedy continuations, source vs quantized.

use std::path::PathBuf;
use std::time::Instant;

use creme_core::model::GgmlType;
use creme_core::quant_check::check_prompt;
use creme_core::sets::SetName;
use creme_core::Device;

use crate::common::{self, Res};

#[derive(clap::Args, Clone)]
pub struct QuantizeArgs {
    /// Source model (GGUF: F32/F16/BF16 or any quantized type this runtime reads)
    #[arg(long)]
    pub input: PathBuf,
    /// Where to write the quantized GGUF
    #[arg(long)]
    pub out: PathBuf,
    /// q8_0, q4_0, f16 or f32
    #[arg(long = "type", default_value = "q8_0")]
    pub qtype: String,
    /// Compare source and result on this many HumanEval prompts (0 = no check)
    #[arg(long, default_value_t = 4)]
    pub check: usize,
    /// Tokens generated per prompt for the check
    #[arg(long, default_value_t = 32)]
    pub check_tokens: usize,
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Keep only the first N transformer layers (a smaller, faster model with the same tokenizer:
    /// for quick experiments and tests; its outputs are not the full model's)
    #[arg(long)]
    pub keep_layers: Option<usize>,
}

pub fn run(gpu_opts: &creme_core::GpuOptions, a: QuantizeArgs) -> Res {
    let target = match a.qtype.to_lowercase().as_str() {
        "q8_0" => GgmlType::Q8_0,
        "q4_0" => GgmlType::Q4_0,
        "f16" => GgmlType::F16,
        "f32" => GgmlType::F32,
        t => return Err(format!("--type {t}: q8_0, q4_0, f16 or f32").into()),
    };
    let src = std::fs::read(&a.input).map_err(|e| format!("reading {}: {e}", a.input.display()))?;
    let t0 = Instant::now();
    let out = creme_core::model::gguf_write::requantize_layers(&src, target, a.keep_layers)
        .map_err(|e| format!("{}: {e}", a.input.display()))?;
    let tmp = a.out.with_extension("tmp");
    std::fs::write(&tmp, &out).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &a.out)?;
    println!(
        "wrote {} ({:.1} MiB, from {:.1} MiB) in {:.1} s",
        a.out.display(),
        out.len() as f64 / 1048576.0,
        src.len() as f64 / 1048576.0,
        t0.elapsed().as_secs_f64()
    );
    if a.check == 0 || a.keep_layers.is_some() {
        return Ok(()); // a truncated model is a different model: nothing to compare
    }
    check(gpu_opts, &a)
}

/// Greedy agreement and perplexity of the source's continuations, source vs quantized.
fn check(gpu_opts: &creme_core::GpuOptions, a: &QuantizeArgs) -> Res {
    let dev = Device::open(gpu_opts)?;
    let source = common::load_model(&dev, Some(&a.input), 0)?;
    let quant = common::load_model(&dev, Some(&a.out), 0)?;
    let (problems, _) =
        common::problem_set(&common::dataset_dir(a.dataset.as_deref())?, SetName::Clean)?;
    println!("| prompt | greedy tokens agreeing (before the first difference) | mean logprob source | quantized |\n|---|---:|---:|---:|");
    let (mut agree_total, mut n_total, mut lp_s, mut lp_q) = (0usize, 0usize, 0.0, 0.0);
    for p in problems.iter().take(a.check) {
        let c = pollster::block_on(check_prompt(
            &dev,
            &source,
            &quant,
            &p.prompt,
            a.check_tokens,
        ))?;
        println!(
            "| {} | {} / {} | {:.4} | {:.4} |",
            p.task_id, c.agree, c.tokens, c.lp_source, c.lp_quant
        );
        agree_total += c.agree;
        n_total += c.tokens;
        lp_s += c.lp_source;
        lp_q += c.lp_quant;
    }
    let k = a.check.min(problems.len()).max(1) as f64;
    println!(
        "greedy agreement {agree_total}/{n_total} tokens; perplexity of the source's continuations: source {:.3}, quantized {:.3}",
        (-lp_s / k).exp(),
        (-lp_q / k).exp()
    );
    Ok(())
}
