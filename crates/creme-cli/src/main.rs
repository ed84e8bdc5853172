//! `creme`: the command-line front end. Each subcommand prints one clear line and exits non-zero
//! on error.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
mod bench_cmd;
mod calibrate_cmd;
mod common;
mod compare_cmd;
mod diverge_cmd;
mod edit_cmd;
mod eval_cmd;
mod experiment_cmd;
mod export_cmd;
mod generate_cmd;
mod info_cmd;
mod perturb_cmd;
mod progress;
mod quantize_cmd;
mod report_cmd;
mod run_dir;
mod sandbox;
mod serve_cmd;
mod split_cmd;
mod trace_cmd;

use creme_core::{Device, GpuOptions};

#[derive(Parser)]
#[command(
    name = "creme",
    version,
    about = "CREME: trace and edit code LLMs on any GPU (wgpu) or natively on the CPU"
)]
struct Cli {
    /// No progress output on stderr (results and errors still print)
    #[arg(long, short, global = true)]
    quiet: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

/// Backend and adapter selection, shared by every subcommand that runs a model. Flags override the
/// CREME_BACKEND / CREME_ADAPTER / CREME_FORCE_F32 / CREME_NO_SUBGROUPS / CREME_KV_F16
/// environment variables.
#[derive(Args, Clone)]
struct GpuFlags {
    /// auto (a real GPU if there is one, else the CPU), cpu, or wgpu backends to consider:
    /// vulkan, gl, metal, dx12 (comma list)
    #[arg(long)]
    backend: Option<String>,
    /// Require an adapter whose name contains this text (e.g. llvmpipe, nvidia)
    #[arg(long)]
    adapter: Option<String>,
    /// Never use shader-f16
    #[arg(long)]
    force_f32: bool,
    /// Keep the KV cache in f16 where the adapter has shader-f16 (half the memory and attention
    /// reads; causal-trace scores move by up to a few hundredths)
    #[arg(long)]
    kv_f16: bool,
    /// Never use subgroup operations
    #[arg(long)]
    no_subgroups: bool,
}

impl GpuFlags {
    fn options(&self) -> GpuOptions {
        let mut o = GpuOptions::from_env();
        if self.backend.is_some() {
            o.backends = self.backend.clone();
        }
        if self.adapter.is_some() {
            o.adapter = self.adapter.clone();
        }
        o.force_f32 |= self.force_f32;
        o.no_subgroups |= self.no_subgroups;
        o.kv_f16 |= self.kv_f16;
        o
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the GPU adapter, its features and limits
    Info {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        args: info_cmd::InfoArgs,
    },
    /// Generate a completion for a prompt (greedy unless --temperature > 0)
    Generate {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        args: generate_cmd::GenerateArgs,
    },
    /// Whole-run figures on this adapter: load, prefill, decode, trace, edit, HumanEval generation
    Bench {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        args: bench_cmd::BenchArgs,
    },
    /// Time the quantized matvec/matmul kernels (decode and prompt shapes) on this adapter
    BenchKernels {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        args: bench_cmd::KernelArgs,
    },
    /// Causal trace: which layer restores the clean behaviour when patched into the perturbed run
    Trace {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        args: trace_cmd::TraceArgs,
    },
    /// CREME edit: trace (or --layer), edit that layer's W_down from one prompt pair, write a patch
    Edit {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        args: edit_cmd::EditArgs,
    },
    /// Fit the saturating logprob key-layer rule to the pass metric's layers (leave-one-out)
    CalibrateLayer {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        args: calibrate_cmd::CalibrateArgs,
    },
    /// Evaluate on HumanEval (clean and perturbed sets): generate, run the tests sandboxed, pass@k
    Eval {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        args: eval_cmd::EvalArgs,
    },
    /// The paper's experiment: for every edit-worthy task of each type, locate, edit, evaluate
    Experiment {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        args: experiment_cmd::ExperimentArgs,
    },
    /// An experiment run beside control runs of the same pairs (experiment --control): L-RIR
    /// with intervals, exact McNemar tests (Holm), fixed/broken, clean deviation
    Compare {
        #[command(flatten)]
        args: compare_cmd::CompareArgs,
    },
    /// Where two runs' completions of the same prompts part (e.g. creme's and llama.cpp's), and
    /// the model's margin there (near-ties)
    Diverge {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        args: diverge_cmd::DivergeArgs,
    },
    /// Merge experiment runs (or shards) into the tables: L-RIR, G-RIR, fixed/broken, clean
    /// deviation; with --setting, write the efficacy document comparing several runs
    Report {
        #[command(flatten)]
        args: report_cmd::ReportArgs,
    },
    /// The committed development/confirmation split of the efficacy work (types and tasks)
    Split {
        #[command(flatten)]
        args: split_cmd::SplitArgs,
    },
    /// Serve the web app (web/), the model cache (/models/) and the dataset (/datasets/) on 127.0.0.1
    Serve {
        #[command(flatten)]
        args: serve_cmd::ServeArgs,
    },
    /// Re-encode a GGUF model's weights (q8_0, q4_0) for the web app, and check the quality cost
    Quantize {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        args: quantize_cmd::QuantizeArgs,
    },
    /// Write a model with CREME patches applied as an HF checkpoint (f32 safetensors, config.json,
    /// tokenizer.json) for other tools, e.g. transformers' from_pretrained(DIR)
    Export {
        #[command(flatten)]
        args: export_cmd::ExportArgs,
    },
    /// Perturb a prompt's docstring, write perturbed sets, or validate against released sets
    Perturb {
        #[command(flatten)]
        args: perturb_cmd::PerturbArgs,
    },
    /// Check the f32 matmul kernel against the CPU reference on random shapes
    CheckMatmul {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        args: info_cmd::CheckArgs,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    progress::set_quiet(cli.quiet);
    sandbox::install_interrupt_handler();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("creme: error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> common::Res {
    match cli.cmd {
        Cmd::Info { gpu, args } => info_cmd::info(&gpu.options(), args),
        Cmd::CheckMatmul { gpu, args } => info_cmd::check_matmul(&gpu.options(), args),
        Cmd::Experiment { gpu, args } => {
            experiment_cmd::run(&gpu.options().invariant_by_default(), args)
        }
        Cmd::Report { args } => report_cmd::main(args),
        Cmd::Compare { args } => compare_cmd::run(args),
        Cmd::Diverge { gpu, args } => diverge_cmd::run(&Device::open(&gpu.options())?, args),
        Cmd::Split { args } => split_cmd::run(args),
        Cmd::Serve { args } => serve_cmd::main(args),
        Cmd::Quantize { gpu, args } => quantize_cmd::run(&gpu.options(), args),
        Cmd::Export { args } => export_cmd::run(args),
        Cmd::Perturb { args } => perturb_cmd::run(args),
        Cmd::Eval { gpu, args } => eval_cmd::run(&gpu.options().invariant_by_default(), args),
        Cmd::CalibrateLayer { gpu, args } => {
            calibrate_cmd::run(&Device::open(&gpu.options())?, args)
        }
        Cmd::Bench { gpu, args } => bench_cmd::run(&gpu.options(), args),
        Cmd::BenchKernels { gpu, args } => bench_cmd::kernels(&gpu.options(), args),
        Cmd::Edit { gpu, args } => edit_cmd::run(&Device::open(&gpu.options())?, args),
        Cmd::Trace { gpu, args } => trace_cmd::run(&Device::open(&gpu.options())?, args),
        Cmd::Generate { gpu, args } => generate_cmd::run(&gpu.options(), args),
    }
}
