//! `creme`: the command-line front end. Each subcommand prints one clear line and exits non-zero
//! on error.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use creme_core::{cpu, Gpu, GpuOptions};

#[derive(Parser)]
#[command(name = "creme", version, about = "CREME: trace and edit code LLMs on any GPU (wgpu)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// Adapter selection, shared by every subcommand that touches the GPU. Flags override the
/// CREME_BACKEND / CREME_ADAPTER / CREME_FORCE_F32 / CREME_NO_SUBGROUPS environment variables.
#[derive(Args, Clone)]
struct GpuFlags {
    /// Backends to consider: vulkan, gl, metal, dx12 (comma list)
    #[arg(long)]
    backend: Option<String>,
    /// Require an adapter whose name contains this text (e.g. llvmpipe, nvidia)
    #[arg(long)]
    adapter: Option<String>,
    /// Never use shader-f16
    #[arg(long)]
    force_f32: bool,
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
        o
    }
}

#[derive(Subcommand)]
enum Cmd {
    /// Show the GPU adapter, its features and limits
    Info {
        #[command(flatten)]
        gpu: GpuFlags,
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Also list every adapter found
        #[arg(long)]
        all: bool,
    },
    /// Check the f32 matmul kernel against the CPU reference on random shapes
    CheckMatmul {
        #[command(flatten)]
        gpu: GpuFlags,
        #[arg(long, default_value_t = 12)]
        cases: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("creme: error: {e}");
            ExitCode::FAILURE
        }
    }
}

type Res = Result<(), Box<dyn std::error::Error>>;

fn run(cli: Cli) -> Res {
    match cli.cmd {
        Cmd::Info { gpu, json, all } => info(&gpu.options(), json, all),
        Cmd::CheckMatmul { gpu, cases, seed } => check_matmul(&gpu.options(), cases, seed),
    }
}

fn info(opts: &GpuOptions, json: bool, all: bool) -> Res {
    if all {
        let names = pollster::block_on(creme_core::gpu::list_adapters(opts));
        println!("adapters found: {}", names.len());
        for n in names {
            println!("  {n}");
        }
    }
    let gpu = Gpu::new_blocking(opts)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&gpu.report)?);
    } else {
        println!("{}", gpu.report.to_text());
    }
    Ok(())
}

fn check_matmul(opts: &GpuOptions, cases: usize, seed: u64) -> Res {
    let gpu = Gpu::new_blocking(opts)?;
    println!("matmul check on {} ({})", gpu.report.name, gpu.report.backend);
    let mut rng = cpu::SplitMix64(seed);
    let mut worst = 0f32;
    for _ in 0..cases {
        let (m, n, k) = (1 + rng.below(150) as usize, 1 + rng.below(300) as usize, 1 + rng.below(400) as usize);
        let x = rng.vec_f32(m * k);
        let w = rng.vec_f32(n * k);
        let got = pollster::block_on(gpu.matmul_f32(&x, &w, m, n, k))?;
        let want = cpu::matmul_nt(&x, &w, m, n, k);
        let err = cpu::max_rel_err(&got, &want);
        println!("  m={m:4} n={n:4} k={k:4}  max rel err {err:.2e}");
        worst = worst.max(err);
    }
    if worst > 1e-4 {
        return Err(format!("matmul differs from the CPU reference: max rel err {worst:.2e}").into());
    }
    println!("matmul OK: {cases} random shapes, max rel err {worst:.2e}");
    Ok(())
}
