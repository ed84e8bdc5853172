//! `creme quantize`: re-encode a GGUF model's weights as Q8_0 / Q4_0 (or F16/F32) so the web app
//! can stream other small code models, and check what the quantization cost: greedy agreement and
//! the perplexity of the source model's greedy continuations, source vs quantized.

use std::path::PathBuf;
use std::time::Instant;

use creme_core::quant_check::{check_prompt, target_type, CheckTotals};
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
    let target = target_type(&a.qtype)?;
    let src = std::fs::read(&a.input).map_err(|e| format!("reading {}: {e}", a.input.display()))?;
    let t0 = Instant::now();
    let out = creme_core::model::gguf_write::requantize_layers(&src, target, a.keep_layers)
        .map_err(|e| format!("{}: {e}", a.input.display()))?;
    common::write(&a.out, &out)?;
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
    let problems = common::dataset(&common::dataset_dir(a.dataset.as_deref())?).clean()?;
    println!("| prompt | greedy tokens agreeing (before the first difference) | mean logprob source | quantized |\n|---|---:|---:|---:|");
    let mut totals = CheckTotals::default();
    for p in problems.iter().take(a.check) {
        let check = check_prompt(&dev, &source, &quant, &p.prompt, a.check_tokens);
        let c = pollster::block_on(check)?;
        println!(
            "| {} | {} / {} | {:.4} | {:.4} |",
            p.task_id, c.agree, c.tokens, c.lp_source, c.lp_quant
        );
        totals.add(&c);
    }
    let (source_ppl, quant_ppl) = totals.perplexities();
    println!(
        "greedy agreement {}/{} tokens; perplexity of the source's continuations: source {source_ppl:.3}, quantized {quant_ppl:.3}",
        totals.agree, totals.tokens
    );
    Ok(())
}
