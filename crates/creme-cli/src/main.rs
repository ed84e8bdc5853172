//! `creme`: the command-line front end. Each subcommand prints one clear line and exits non-zero
//! on error.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
mod bench_cmd;
mod calibrate_cmd;
mod common;
mod edit_cmd;
mod eval_cmd;
mod experiment_cmd;
mod generate_cmd;
mod judge;
mod perturb_cmd;
mod progress;
mod quantize_cmd;
mod report_cmd;
mod run_dir;
mod sandbox;
mod serve_cmd;
mod trace_cmd;

use std::path::PathBuf;
use std::time::Instant;

use creme_core::{cpu, Backend, Device, GpuOptions};

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
        /// Print JSON
        #[arg(long)]
        json: bool,
        /// Also list every adapter found
        #[arg(long)]
        all: bool,
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
        #[arg(long, default_value_t = 10)]
        reps: usize,
        /// Rows of x (1 = decode)
        #[arg(long, default_value_t = 1)]
        m: usize,
        /// Cycle through this many copies of each weight, so that with enough of them the
        /// weights stream from memory as in a whole model instead of staying in a cache
        #[arg(long, default_value_t = 1)]
        copies: usize,
    },
    /// Causal trace: which layer restores the clean behaviour when patched into the perturbed run
    Trace {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        pair: trace_cmd::PairArgs,
        /// Restoration metric
        #[arg(long, value_enum, default_value_t = trace_cmd::TraceMetric::Logprob)]
        metric: trace_cmd::TraceMetric,
        /// Also trace a layer x position grid (one position patched at a time)
        #[arg(long)]
        grid: bool,
        /// Grid over every prompt position (default: differing positions and the last six)
        #[arg(long)]
        grid_all: bool,
        /// Length of the clean greedy continuation scored by the logprob metric
        #[arg(long, default_value_t = creme_core::pipeline::DEFAULT_TARGET_TOKENS)]
        target_tokens: usize,
        /// Samples per patched run for the pass metric (1 = greedy; >1 samples at T=0.2, top-p 0.95)
        #[arg(long, default_value_t = 1)]
        samples: usize,
        /// Output directory (trace.json, trace.svg, grid.svg, report.html)
        #[arg(long)]
        out: PathBuf,
    },
    /// CREME edit: trace (or --layer), edit that layer's W_down from one prompt pair, write a patch
    Edit {
        #[command(flatten)]
        gpu: GpuFlags,
        #[command(flatten)]
        pair: trace_cmd::PairArgs,
        /// Edit this layer without tracing (the paper's lightweight variant)
        #[arg(long)]
        layer: Option<usize>,
        #[command(flatten)]
        edit: edit_cmd::EditFlags,
        /// Where to write the patch (safetensors)
        #[arg(long)]
        out: PathBuf,
        /// Also write an HTML report (trace curve, loss curve, completions) into this directory
        #[arg(long)]
        report: Option<PathBuf>,
        /// Do not generate and test before/after the edit
        #[arg(long)]
        no_eval: bool,
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
    /// Merge experiment runs (or shards) into the tables: L-RIR, G-RIR, fixed/broken, clean
    /// deviation; with --setting, write the efficacy document comparing several runs
    Report {
        /// Experiment output directories
        dirs: Vec<PathBuf>,
        /// Where to write report.md / report.json (default: the first directory)
        #[arg(long)]
        out: Option<PathBuf>,
        /// A setting of the efficacy document: LABEL=EXPERIMENT_DIR (repeatable; the first is the main one)
        #[arg(long = "setting", value_parser = report_cmd::parse_setting)]
        settings: Vec<(String, PathBuf)>,
        /// The baseline eval directory the settings' experiments used (for --setting)
        #[arg(long, requires = "settings")]
        baseline: Option<PathBuf>,
        /// A calibrate-layer output directory, for the key-layer table (for --setting)
        #[arg(long, requires = "settings")]
        calibration: Option<PathBuf>,
        /// Where to write the efficacy document (for --setting)
        #[arg(long, default_value = "docs/efficacy.md")]
        doc: PathBuf,
    },
    /// Serve the web app (web/), the model cache (/models/) and the dataset (/datasets/) on 127.0.0.1
    Serve {
        /// Port (0 = any free port; the address is printed)
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// The web app directory (the repository's web/, built by scripts/build-web.sh)
        #[arg(long, default_value = "web")]
        web: PathBuf,
        /// Model directory served under /models/ (default: the model cache)
        #[arg(long)]
        models: Option<PathBuf>,
        /// Dataset directory served under /datasets/ (default: as `eval` finds it)
        #[arg(long)]
        dataset: Option<PathBuf>,
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
        /// GGUF model file (default: the cached Qwen2.5-Coder-0.5B-Instruct Q4_K_M)
        #[arg(long)]
        model: Option<PathBuf>,
        /// Patches to apply (repeatable)
        #[arg(long)]
        patch: Vec<PathBuf>,
        /// Output directory
        #[arg(long)]
        out: PathBuf,
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
        #[arg(long, default_value_t = 12)]
        cases: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
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

type Res = common::Res;

fn run(cli: Cli) -> Res {
    match cli.cmd {
        Cmd::Info { gpu, json, all } => info(&gpu.options(), json, all),
        Cmd::CheckMatmul { gpu, cases, seed } => check_matmul(&gpu.options(), cases, seed),
        Cmd::Experiment { gpu, args } => experiment_cmd::run(&gpu.options(), args),
        Cmd::Report {
            dirs,
            out,
            settings,
            baseline,
            calibration,
            doc,
        } if !settings.is_empty() => efficacy_doc(dirs, out, settings, baseline, calibration, doc),
        Cmd::Report { dirs, out, .. } => report_cmd::run(&dirs, out),
        Cmd::Serve {
            port,
            web,
            models,
            dataset,
        } => serve(port, web, models, dataset),
        Cmd::Quantize { gpu, args } => quantize_cmd::run(&gpu.options(), args),
        Cmd::Export { model, patch, out } => export(model.as_deref(), &patch, &out),
        Cmd::Perturb { args } => perturb_cmd::run(args),
        Cmd::Eval { gpu, args } => eval_cmd::run(&gpu.options(), args),
        Cmd::CalibrateLayer { gpu, args } => {
            calibrate_cmd::run(&Device::open(&gpu.options())?, args)
        }
        Cmd::Bench { gpu, args } => bench_cmd::run(&gpu.options(), args),
        Cmd::BenchKernels {
            gpu,
            reps,
            m,
            copies,
        } => bench_kernels(&gpu.options(), reps, m, copies),
        Cmd::Edit {
            gpu,
            pair,
            layer,
            edit,
            out,
            report,
            no_eval,
        } => {
            let settings = edit.settings()?;
            let dev = Device::open(&gpu.options())?;
            edit_cmd::run(
                &dev,
                edit_cmd::EditArgs {
                    pair,
                    layer,
                    settings,
                    target_tokens: edit.target_tokens,
                    past_divergence: edit.past_divergence,
                    control: edit.control(),
                    restored_at: edit.restored_at()?,
                    out,
                    report,
                    no_eval,
                },
            )
        }
        Cmd::Trace {
            gpu,
            pair,
            metric,
            grid,
            grid_all,
            target_tokens,
            samples,
            out,
        } => {
            let dev = Device::open(&gpu.options())?;
            trace_cmd::run(
                &dev,
                trace_cmd::TraceArgs {
                    pair,
                    metric,
                    grid,
                    grid_all,
                    target_tokens,
                    samples,
                    out,
                },
            )
        }
        Cmd::Generate { gpu, args } => generate_cmd::run(&gpu.options(), args),
    }
}

fn export(model: Option<&std::path::Path>, patches: &[PathBuf], out: &std::path::Path) -> Res {
    let path = common::model_path(model);
    let file = std::fs::read(&path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let mut ps = Vec::new();
    for p in patches {
        let bytes = std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))?;
        ps.push(
            creme_core::edit::EditPatch::from_safetensors(&bytes)
                .map_err(|e| format!("{}: {e}", p.display()))?,
        );
    }
    let t0 = Instant::now();
    let (st, config, tokenizer) = creme_core::model::safetensors::export_hf(&file, &ps)
        .map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::create_dir_all(out).map_err(|e| format!("creating {}: {e}", out.display()))?;
    common::write(&out.join("config.json"), &config)?;
    common::write(&out.join("tokenizer.json"), &tokenizer)?;
    let tmp = out.join("model.safetensors.tmp");
    std::fs::write(&tmp, &st).map_err(|e| format!("writing {}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, out.join("model.safetensors"))?;
    println!("wrote {} (model.safetensors {:.0} MiB, config.json, tokenizer.json; {} patch(es)) in {:.1} s", out.display(), st.len() as f64 / 1048576.0, ps.len(), t0.elapsed().as_secs_f64());
    Ok(())
}

fn info(opts: &GpuOptions, json: bool, all: bool) -> Res {
    if all {
        let names = pollster::block_on(creme_core::gpu::list_adapters(&GpuOptions {
            backends: None,
            ..opts.clone()
        }));
        println!("wgpu adapters found: {}", names.len());
        for n in names {
            println!("  {n}");
        }
        println!(
            "cpu backend: {}",
            creme_core::backend::cpu::CpuBackend::new().describe()
        );
    }
    let dev = Device::open(opts)?;
    match (&dev, json) {
        (Device::Wgpu(g), true) => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"backend": "wgpu", "adapter": g.report})
            )?
        ),
        (Device::Wgpu(g), false) => println!("backend: wgpu\n{}", g.report.to_text()),
        (Device::Cpu(_), true) => println!(
            "{}",
            serde_json::to_string_pretty(
                &serde_json::json!({"backend": "cpu", "device": dev.describe()})
            )?
        ),
        (Device::Cpu(_), false) => println!("backend: {}", dev.describe()),
    }
    Ok(())
}

fn check_matmul(opts: &GpuOptions, cases: usize, seed: u64) -> Res {
    let dev = Device::open(opts)?;
    println!("matmul check on {}", dev.describe());
    let mut rng = cpu::SplitMix64(seed);
    let mut worst = 0f32;
    for _ in 0..cases {
        let (m, n, k) = (
            1 + rng.below(150) as usize,
            1 + rng.below(300) as usize,
            1 + rng.below(400) as usize,
        );
        let x = rng.vec_f32(m * k);
        let w = rng.vec_f32(n * k);
        let (xt, wt, mut yt) = (
            dev.upload("x", m, k, &x)?,
            dev.upload("w", n, k, &w)?,
            dev.zeros("y", m, n)?,
        );
        dev.matmul_f32(&xt, &wt, &mut yt, m, n, k)?;
        let got = pollster::block_on(dev.read_all(&yt))?;
        let want = cpu::matmul_nt(&x, &w, m, n, k);
        let err = cpu::max_rel_err(&got, &want);
        println!("  m={m:4} n={n:4} k={k:4}  max rel err {err:.2e}");
        worst = worst.max(err);
    }
    if worst > 1e-4 {
        return Err(
            format!("matmul differs from the CPU reference: max rel err {worst:.2e}").into(),
        );
    }
    println!("matmul OK: {cases} random shapes, max rel err {worst:.2e}");
    Ok(())
}

fn bench_kernels(opts: &GpuOptions, reps: usize, m: usize, copies: usize) -> Res {
    use creme_core::model::GgmlType as G;
    let dev = Device::open(opts)?;
    let kernel = dev.gpu().map_or("the CPU backend's".into(), |g| {
        format!(
            "{}, weight rows in groups of {}",
            g.qmm_kernel(m as u32, 896),
            g.weight_row_group
        )
    });
    println!(
        "quantized matmul on {}, m = {m}, weight 4864 x 896 and 896 x 4864 ({copies} {}), kernel {kernel}",
        dev.describe(),
        if copies == 1 { "copy" } else { "copies in turn" }
    );
    let mut rng = cpu::SplitMix64(1);
    for t in [G::Q4K, G::Q6K, G::Q5_0, G::Q8_0, G::Q4_1, G::F32] {
        for (rows, k) in [(4864usize, 896usize), (896, 4864)] {
            if k % t.block_elems() != 0 {
                continue;
            }
            let raw: Vec<u8> = (0..t.row_bytes(k) * rows)
                .map(|_| (rng.next_u64() & 0x3f) as u8)
                .collect();
            let ws = (0..copies.max(1))
                .map(|_| dev.upload_weight("w", t, rows, k, &raw))
                .collect::<Result<Vec<_>, _>>()?;
            let x = dev.upload("x", m, k, &rng.vec_f32(m * k))?;
            let mut y = dev.zeros("y", m, rows)?;
            let mut run = |n: usize| -> Res {
                for i in 0..n {
                    dev.matmul_q(&x, &ws[i % ws.len()], &mut y, m)?;
                }
                pollster::block_on(dev.read(&y, 1))?;
                Ok(())
            };
            run(1)?;
            let t0 = Instant::now();
            run(reps)?;
            let s = t0.elapsed().as_secs_f64() / reps as f64;
            let bytes = (t.row_bytes(k) * rows) as f64;
            println!(
                "  {:5} {rows:5} x {k:5}: {:8.3} ms  {:7.2} GB/s of weights  {:7.1} GOP/s",
                t.name(),
                s * 1e3,
                bytes / s / 1e9,
                2.0 * (m * rows * k) as f64 / s / 1e9
            );
        }
    }
    Ok(())
}

/// `creme report --setting LABEL=DIR ...`: the efficacy document.
fn efficacy_doc(
    dirs: Vec<PathBuf>,
    out: Option<PathBuf>,
    settings: Vec<(String, PathBuf)>,
    baseline: Option<PathBuf>,
    calibration: Option<PathBuf>,
    doc: PathBuf,
) -> Res {
    if !dirs.is_empty() || out.is_some() {
        return Err("--setting writes the efficacy document: give the runs as --setting LABEL=DIR, not as directories".into());
    }
    let baseline = baseline.ok_or(
        "--setting needs --baseline DIR (the eval run the experiments took their baseline from)",
    )?;
    report_cmd::run_doc(report_cmd::DocArgs {
        settings,
        baseline,
        calibration,
        doc,
    })
}

/// `creme serve`: the web app, the model cache and the datasets.
fn serve(port: u16, web: PathBuf, models: Option<PathBuf>, dataset: Option<PathBuf>) -> Res {
    let models = models.unwrap_or_else(|| {
        common::model_path(None)
            .parent()
            .map(|p| p.to_path_buf())
            .unwrap_or_default()
    });
    let datasets = common::dataset_dir(dataset.as_deref()).ok();
    serve_cmd::run(
        serve_cmd::Roots {
            web,
            models,
            datasets,
        },
        port,
    )
}
