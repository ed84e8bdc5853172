//! `creme bench`: the figures of a whole run on this adapter — model load, prefill and decode
//! throughput, logprob trace, edit, and HumanEval generation time — as a table or JSON (core's
//! `creme_core::bench` measures); and `creme bench-kernels`, the quantized matmul kernels alone.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use creme_core::bench::{self, BenchPlan, BenchReport};
use creme_core::sets::PerturbationType;
use creme_core::{Device, GpuOptions};

use crate::common::{self, Res};

#[derive(clap::Args, Clone)]
pub struct BenchArgs {
    /// GGUF model file (default: the cached Qwen2.5-Coder-0.5B-Instruct Q4_K_M)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Prompt lengths for batch-1 prefill (comma list)
    #[arg(long, default_value = "150,512")]
    pub prefill: String,
    /// Batch size of the batched prefill at the first length (0 = skip)
    #[arg(long, default_value_t = 24)]
    pub prefill_batch: usize,
    /// Decode lengths at batch 1 (comma list; as llama-bench's tg128)
    #[arg(long, default_value = "128,256")]
    pub decode: String,
    /// Decode lengths from an empty context (llama-bench's tg protocol: one start token, then N
    /// greedy steps at batch 1; comma list, empty = skip)
    #[arg(long, default_value = "128")]
    pub tg: String,
    /// Threads of the CPU backend (default: all cores)
    #[arg(long)]
    pub threads: Option<usize>,
    /// Measure each prefill / decode row this many times and report the median
    #[arg(long, default_value_t = 1)]
    pub repetitions: usize,
    /// Time the logprob trace and the edit of one HumanEval pair (default: on unless the adapter is a CPU)
    #[arg(long)]
    pub trace: Option<bool>,
    /// HumanEval tasks to generate greedily (default: 164, or 0 on a CPU adapter)
    #[arg(long)]
    pub humaneval: Option<usize>,
    #[arg(long)]
    pub dataset: Option<PathBuf>,
    /// Print JSON instead of the table
    #[arg(long)]
    pub json: bool,
}

/// Flags of `creme bench-kernels`.
#[derive(clap::Args, Clone)]
pub struct KernelArgs {
    #[arg(long, default_value_t = 10)]
    pub reps: usize,
    /// Rows of x (1 = decode)
    #[arg(long, default_value_t = 1)]
    pub m: usize,
    /// Cycle through this many copies of each weight, so that with enough of them the
    /// weights stream from memory as in a whole model instead of staying in a cache
    #[arg(long, default_value_t = 1)]
    pub copies: usize,
}

/// A table row, printed (and flushed) as soon as it is measured: a CPU adapter takes minutes
/// per row.
fn print_row((what, figure): bench::Row) {
    println!("| {what} | {figure} |");
    let _ = std::io::stdout().flush();
}

pub fn run(gpu_opts: &GpuOptions, a: BenchArgs) -> Res {
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| format!("--threads {n}: {e}"))?;
    }
    let dev = Device::open(gpu_opts)?;
    let path = common::model_path(a.model.as_deref());
    let t0 = Instant::now();
    let model = common::load_model(&dev, Some(&path), 0)?;
    let mut report = BenchReport::new(&dev, path.display().to_string(), t0.elapsed().as_secs_f64());
    let plan = plan(&a, &dev)?;
    let mut on_row = |row| {
        if !a.json {
            print_row(row)
        }
    };
    if !a.json {
        println!("{}\n| what | figure |\n|---|---|", report.title());
    }
    on_row(("model load".into(), format!("{:.2} s", report.load_s)));
    pollster::block_on(bench::run(&dev, &model, &plan, &mut report, &mut on_row))?;
    let weights: u64 = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    on_row(bench::weights_row(weights));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    }
    Ok(())
}

/// What to measure: the flags, with the dataset's first prompt (and HumanEval/0 C3 for the trace,
/// the first tasks for generation) where there is a dataset.
fn plan(a: &BenchArgs, dev: &Device) -> Res<BenchPlan> {
    // Slow devices (a CPU emulation of a GPU) skip the long rows unless asked.
    let cpu_adapter = dev.gpu().is_some_and(|g| g.report.device_type == "Cpu");
    let dir = common::dataset_dir(a.dataset.as_deref()).ok();
    let clean = match &dir {
        Some(d) => common::dataset(d).clean()?,
        None => Vec::new(),
    };
    let prompt = clean.first().map_or(bench::FALLBACK_PROMPT, |p| &p.prompt);
    let (trace, n_he) = bench::default_rows(cpu_adapter, a.trace, a.humaneval);
    let trace_pair = match &dir {
        Some(d) if trace => {
            let (c, p) = common::task_pair(d, "HumanEval/0", PerturbationType::C3)?;
            Some((c.prompt, p.prompt, "HumanEval/0 C3".to_string()))
        }
        _ => None,
    };
    Ok(BenchPlan {
        prompt: prompt.to_string(),
        prefill: bench::parse_lengths(&a.prefill)?,
        prefill_batch: a.prefill_batch,
        decode: bench::parse_lengths(&a.decode)?,
        tg: bench::parse_lengths(&a.tg)?,
        repetitions: a.repetitions,
        trace_pair,
        humaneval: clean.iter().take(n_he).map(|p| p.prompt.clone()).collect(),
    })
}

/// `creme bench-kernels`.
pub fn kernels(gpu_opts: &GpuOptions, a: KernelArgs) -> Res {
    let dev = Device::open(gpu_opts)?;
    let mut print = |line: String| println!("{line}");
    Ok(pollster::block_on(bench::quantized_kernels(
        &dev, a.reps, a.m, a.copies, &mut print,
    ))?)
}
