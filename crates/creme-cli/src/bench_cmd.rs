//! `creme bench`: the figures of a whole run on this adapter — model load, prefill and decode
//! throughput, logprob trace, edit, and HumanEval generation time — as a table and JSON, so runs
//! on different machines (and the HF reference script, scripts/bench-hf.py) compare as ratios.

use std::path::PathBuf;
use std::time::Instant;

use creme_core::generate::{decode, generate, humaneval_stops, GenerateOptions};
use creme_core::hooks::Hooks;
use creme_core::model::{Logits, Model};
use creme_core::pipeline::{locate_and_edit, CremeSettings, LogprobLocator};
use creme_core::{Backend, Device};
use serde_json::{json, Value};

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

/// Table rows, printed as soon as they are measured (a CPU adapter takes minutes per row).
struct Rows {
    print: bool,
}

impl Rows {
    fn push(&mut self, (k, v): (String, String)) {
        if self.print {
            println!("| {k} | {v} |");
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
    }
}

fn list(s: &str) -> Res<Vec<usize>> {
    s.split(',')
        .filter(|x| !x.trim().is_empty())
        .map(|x| {
            x.trim()
                .parse::<usize>()
                .map_err(|e| format!("'{x}': {e}").into())
        })
        .collect()
}

/// One prompt pass of `batch` sequences of `len` tokens, timed to the logits' readback.
fn prefill(dev: &Device, model: &Model, tokens: &[u32], len: usize, batch: usize) -> Res<f64> {
    let seq: Vec<u32> = tokens.iter().cycle().take(len).cloned().collect();
    let mut cache = model.new_cache(dev, vec![0; batch], len)?;
    let t0 = Instant::now();
    let out = model.forward(
        dev,
        &mut cache,
        &vec![seq; batch],
        &Hooks::default(),
        Logits::Last,
    )?;
    pollster::block_on(dev.read(out.logits.as_ref().expect("logits"), 1))?;
    Ok(t0.elapsed().as_secs_f64())
}

/// One greedy decode step: the token after `token`, with the cache extended by it.
fn greedy_step(
    dev: &Device,
    model: &Model,
    cache: &mut creme_core::model::KvCache,
    token: u32,
) -> Res<u32> {
    let out = model.forward(dev, cache, &[vec![token]], &Hooks::default(), Logits::Last)?;
    Ok(pollster::block_on(dev.argmax(out.logits.as_ref().expect("logits")))?[0])
}

/// Greedy decoding of `tokens` tokens from a one-token context (llama-bench's tg: every step is
/// run, end of sequence or not), through the same pipelined loop generation uses. `on_token(k)` is
/// called as the k-th pick (from 1) comes back.
fn greedy_decode(
    dev: &Device,
    model: &Model,
    start: u32,
    tokens: usize,
    on_token: &mut dyn FnMut(usize),
) -> Res<()> {
    let mut cache = model.new_cache(dev, vec![0], tokens + 1)?;
    let out = model.forward(
        dev,
        &mut cache,
        &[vec![start]],
        &Hooks::default(),
        Logits::Last,
    )?;
    let opts = GenerateOptions {
        max_new_tokens: tokens,
        ignore_eos: true,
        ..Default::default()
    };
    let mut k = 0;
    let mut count = |_: usize, _: u32| {
        k += 1;
        on_token(k)
    };
    let logits = out.logits.expect("asked for logits");
    pollster::block_on(decode(dev, model, &mut cache, logits, &opts, &mut count))?;
    Ok(())
}

/// `tokens` greedy decode steps from a one-token context (llama-bench's tg), timed.
fn decode_from_empty(dev: &Device, model: &Model, start: u32, tokens: usize) -> Res<f64> {
    let t0 = Instant::now();
    greedy_decode(dev, model, start, tokens, &mut |_| {})?;
    Ok(t0.elapsed().as_secs_f64())
}

/// What one decoded token costs the GPU in objects made, dispatches and submissions, after
/// `warmup` tokens (pipelines and caches that are made once are then in place): per token,
/// counted between the warmup-th pick coming back and the last.
fn gpu_work_per_token(
    dev: &Device,
    model: &Model,
    start: u32,
    warmup: usize,
    tokens: usize,
) -> Res<Option<Value>> {
    let Some(gpu) = dev.gpu() else {
        return Ok(None);
    };
    // Both marks fall while the next step runs (the last pick has none after it).
    let mut marks = Vec::new();
    greedy_decode(dev, model, start, warmup + tokens + 1, &mut |k| {
        if k == warmup || k == warmup + tokens {
            gpu.wait_idle();
            marks.push((gpu.counts(), gpu.live_objects()));
        }
    })?;
    let [(before, live_before), (after, live_after)] = marks.as_slice() else {
        return Err("bench: the decode ended early".into());
    };
    let c = after.since(before);
    let per = |v: u64| v as f64 / tokens as f64;
    Ok(Some(json!({
        "tokens": tokens, "warmup": warmup,
        "buffers": per(c.buffers), "bind_groups": per(c.bind_groups), "pipelines": per(c.pipelines),
        "encoders": per(c.encoders), "dispatches": per(c.dispatches), "submissions": per(c.submissions),
        // CPU time in wgpu's finish + submit (it turns the recorded passes into driver commands).
        "submit_ms": per(c.submit_ns) / 1e6,
        "dispatches_per_layer": per(c.dispatches) / model.cfg.n_layers as f64,
        // wgpu's count of live objects before and after: equal when nothing per token outlives it.
        "live_buffers": [live_before.0, live_after.0], "live_bind_groups": [live_before.1, live_after.1],
    })))
}

/// Where a decoded token's time goes, after `warmup` tokens: CPU time encoding the forward, time
/// from there until its argmax is back (submission, GPU, readback), and, where the adapter has
/// timestamp queries, GPU time per kernel over a second run of `tokens` tokens.
fn decode_time_split(
    dev: &Device,
    model: &Model,
    start: u32,
    warmup: usize,
    tokens: usize,
) -> Res<Option<Value>> {
    let Some(gpu) = dev.gpu() else {
        return Ok(None);
    };
    let mut cache = model.new_cache(dev, vec![0], warmup + 2 * tokens + 1)?;
    let mut next = start;
    for _ in 0..warmup {
        next = greedy_step(dev, model, &mut cache, next)?;
    }
    let (mut encode_s, mut result_s) = (0.0, 0.0);
    for _ in 0..tokens {
        let t0 = Instant::now();
        let out = model.forward(
            dev,
            &mut cache,
            &[vec![next]],
            &Hooks::default(),
            Logits::Last,
        )?;
        let t1 = Instant::now();
        next = pollster::block_on(dev.argmax(out.logits.as_ref().expect("logits")))?[0];
        encode_s += (t1 - t0).as_secs_f64();
        result_s += t1.elapsed().as_secs_f64();
    }
    let per_ms = |s: f64| s * 1e3 / tokens as f64;
    let mut doc = json!({"tokens": tokens, "encode_ms": per_ms(encode_s), "submit_to_result_ms": per_ms(result_s)});
    if gpu.start_profiling() {
        for _ in 0..tokens {
            next = greedy_step(dev, model, &mut cache, next)?;
        }
        let (times, untimed) = gpu.stop_profiling();
        doc["kernels"] = kernel_table(&times, tokens as f64);
        doc["gpu_ms"] = json!(times.iter().map(|t| t.gpu_ns).sum::<f64>() / 1e6 / tokens as f64);
        doc["untimed_passes"] = json!(untimed);
    }
    Ok(Some(doc))
}

/// GPU time per kernel of one prompt pass of `len` tokens (None without timestamp queries).
fn prefill_profile(dev: &Device, model: &Model, tokens: &[u32], len: usize) -> Res<Option<Value>> {
    let Some(gpu) = dev.gpu() else {
        return Ok(None);
    };
    if !gpu.start_profiling() {
        return Ok(None);
    }
    let run = prefill(dev, model, tokens, len, 1);
    let (times, untimed) = gpu.stop_profiling();
    let wall_s = run?;
    let gpu_ms = times.iter().map(|t| t.gpu_ns).sum::<f64>() / 1e6;
    Ok(Some(
        json!({"tokens": len, "wall_ms": wall_s * 1e3, "gpu_ms": gpu_ms, "kernels": kernel_table(&times, 1.0), "untimed_passes": untimed}),
    ))
}

/// Kernels, slowest first, per `per` (tokens, or 1 for a whole pass).
fn kernel_table(times: &[creme_core::gpu::KernelTime], per: f64) -> Value {
    let total: f64 = times.iter().map(|t| t.gpu_ns).sum::<f64>().max(1.0);
    json!(times.iter().map(|t| json!({
        "kernel": t.kernel, "dispatches": t.dispatches as f64 / per, "gpu_us": t.gpu_ns / 1e3 / per, "share": t.gpu_ns / total,
    })).collect::<Vec<_>>())
}

/// "1.23 ms: matmul_q:Q4_K 0.61 (50%), ..." from a profile's kernel table (`gpu_us` per unit).
fn kernel_summary(gpu_ms: f64, kernels: &Value) -> String {
    let top: Vec<String> = kernels
        .as_array()
        .map(|k| {
            k.iter()
                .take(4)
                .map(|k| {
                    format!(
                        "{} {:.3} ({:.0}%)",
                        k["kernel"].as_str().unwrap_or("?"),
                        k["gpu_us"].as_f64().unwrap_or(0.0) / 1e3,
                        100.0 * k["share"].as_f64().unwrap_or(0.0)
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    format!("{gpu_ms:.3} ms in kernels: {}", top.join(", "))
}

/// The median of `reps` runs of `f`.
fn median(reps: usize, mut f: impl FnMut() -> Res<f64>) -> Res<f64> {
    let mut v = (0..reps.max(1)).map(|_| f()).collect::<Res<Vec<f64>>>()?;
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    Ok(v[v.len() / 2])
}

pub fn run(gpu_opts: &creme_core::GpuOptions, a: BenchArgs) -> Res {
    if let Some(n) = a.threads {
        rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global()
            .map_err(|e| format!("--threads {n}: {e}"))?;
    }
    let dev = Device::open(gpu_opts)?;
    // Slow devices (a CPU emulation of a GPU) skip the long rows unless asked.
    let cpu_adapter = dev
        .gpu()
        .map(|g| g.report.device_type == "Cpu")
        .unwrap_or(false);
    let path = common::model_path(a.model.as_deref());
    let t0 = Instant::now();
    let model = common::load_model(&dev, Some(&path), 0)?;
    let load_s = t0.elapsed().as_secs_f64();
    let dir = common::dataset_dir(a.dataset.as_deref()).ok();
    let clean = match &dir {
        Some(d) => common::problem_set(d, "clean")?.0,
        None => Vec::new(),
    };
    let text = clean.first().map(|p| p.prompt.clone()).unwrap_or_else(|| {
        "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n".into()
    });
    let tokens = model.tokenizer.encode(&text)?;
    let mut rows = Rows { print: !a.json };
    let adapter = dev.gpu().map(|g| json!(g.report)).unwrap_or(json!(null));
    let kv_cache = format!("{:?}", dev.kv_dtype()).to_lowercase();
    let mut doc = json!({"model": path, "backend": dev.kind(), "device": dev.describe(), "adapter": adapter, "kv_cache": kv_cache, "load_s": load_s});
    if !a.json {
        let features = dev
            .gpu()
            .map(|g| {
                format!(
                    "; shader-f16 {}, subgroups {}, KV cache {kv_cache}",
                    g.report.shader_f16, g.report.subgroups
                )
            })
            .unwrap_or_default();
        println!("creme bench on {}{features}", dev.describe());
        println!("| what | figure |\n|---|---|");
    }
    rows.push(("model load".into(), format!("{load_s:.2} s")));

    // Warm-up: compile the pipelines the timed runs use.
    prefill(&dev, &model, &tokens, 16, 1)?;
    let mut pf = Vec::new();
    for len in list(&a.prefill)? {
        let s = median(a.repetitions, || prefill(&dev, &model, &tokens, len, 1))?;
        rows.push((
            format!("prefill batch 1, {len} tokens (pp{len})"),
            format!("{:.1} tok/s ({s:.2} s)", len as f64 / s),
        ));
        pf.push(json!({"tokens": len, "batch": 1, "seconds": s, "tok_per_s": len as f64 / s}));
    }
    if a.prefill_batch > 0 {
        if let Some(len) = list(&a.prefill)?.first().copied() {
            let s = prefill(&dev, &model, &tokens, len, a.prefill_batch)?;
            let n = (len * a.prefill_batch) as f64;
            rows.push((
                format!("prefill batch {}, {len} tokens", a.prefill_batch),
                format!("{:.1} tok/s ({s:.2} s)", n / s),
            ));
            pf.push(
                json!({"tokens": len, "batch": a.prefill_batch, "seconds": s, "tok_per_s": n / s}),
            );
        }
    }
    doc["prefill"] = json!(pf);

    let mut tg = Vec::new();
    for n in list(&a.tg)? {
        let start = model.cfg.eos_ids.first().copied().unwrap_or(0);
        let s = median(a.repetitions, || decode_from_empty(&dev, &model, start, n))?;
        rows.push((
            format!("decode batch 1, {n} tokens from an empty context (tg{n})"),
            format!("{:.1} tok/s ({s:.2} s)", n as f64 / s),
        ));
        tg.push(json!({"tokens": n, "seconds": s, "tok_per_s": n as f64 / s}));
    }
    doc["tg"] = json!(tg);

    let start = model.cfg.eos_ids.first().copied().unwrap_or(0);
    if let Some(w) = gpu_work_per_token(&dev, &model, start, 4, 16)? {
        rows.push((
            "GPU work per decoded token (after 4 tokens)".into(),
            format!(
                "{:.0} dispatches ({:.1} per layer), {:.1} submissions ({:.3} ms CPU in finish + submit); created: {:.1} buffers, {:.1} bind groups, {:.1} pipelines",
                w["dispatches"].as_f64().unwrap_or(0.0),
                w["dispatches_per_layer"].as_f64().unwrap_or(0.0),
                w["submissions"].as_f64().unwrap_or(0.0),
                w["submit_ms"].as_f64().unwrap_or(0.0),
                w["buffers"].as_f64().unwrap_or(0.0),
                w["bind_groups"].as_f64().unwrap_or(0.0),
                w["pipelines"].as_f64().unwrap_or(0.0)
            ),
        ));
        doc["gpu_per_token"] = w;
    }

    if let Some(split) = decode_time_split(&dev, &model, start, 4, 16)? {
        let mut text = format!(
            "encode {:.3} ms, submit to result {:.3} ms",
            split["encode_ms"].as_f64().unwrap_or(0.0),
            split["submit_to_result_ms"].as_f64().unwrap_or(0.0)
        );
        if let Some(ms) = split["gpu_ms"].as_f64() {
            text = format!("{text}; {}", kernel_summary(ms, &split["kernels"]));
        }
        rows.push(("time per decoded token (GPU, after 4 tokens)".into(), text));
        doc["decode_time"] = split;
    }
    if let Some(len) = list(&a.prefill)?.last().copied() {
        if let Some(p) = prefill_profile(&dev, &model, &tokens, len)? {
            let text = format!(
                "{:.1} ms wall; {}",
                p["wall_ms"].as_f64().unwrap_or(0.0),
                kernel_summary(p["gpu_ms"].as_f64().unwrap_or(0.0), &p["kernels"])
            );
            rows.push((
                format!("GPU time of one prompt pass of {len} tokens, profiled"),
                text,
            ));
            doc["prefill_profile"] = p;
        }
    }

    // Decode: time between the first and the last generated token (the prompt pass excluded).
    let mut dec = Vec::new();
    for n in list(&a.decode)? {
        let opts = GenerateOptions {
            max_new_tokens: n,
            ..Default::default()
        };
        let mut stamps: Vec<Instant> = Vec::with_capacity(n);
        let out = pollster::block_on(generate(
            &dev,
            &model,
            &[tokens.clone()],
            &opts,
            &mut |_, _| stamps.push(Instant::now()),
        ))?;
        let k = stamps.len();
        if k >= 2 {
            let s = (stamps[k - 1] - stamps[0]).as_secs_f64();
            let tps = (k - 1) as f64 / s;
            rows.push((
                format!("decode batch 1, {n} tokens"),
                format!("{tps:.1} tok/s ({} tokens, finish {:?})", k, out[0].finish),
            ));
            dec.push(json!({"tokens": k, "asked": n, "seconds": s, "tok_per_s": tps}));
        }
    }
    doc["decode"] = json!(dec);

    // Logprob trace and edit of one pair (HumanEval/0, C3).
    if a.trace.unwrap_or(!cpu_adapter) {
        if let Some(d) = &dir {
            let (c, p) = common::task_pair(d, "HumanEval/0", "C3")?;
            let (ci, pi) = (
                model.tokenizer.encode(&c.prompt)?,
                model.tokenizer.encode(&p.prompt)?,
            );
            let done = pollster::block_on(locate_and_edit(
                &dev,
                &model,
                &ci,
                &pi,
                &CremeSettings::default(),
                &mut LogprobLocator::default(),
                Default::default(),
            ))?;
            let (tm, r) = (&done.timings, &done.result);
            let (trace_s, capture_s) = (tm.target_s + tm.trace_s, tm.capture_s);
            let tr = done.trace.as_ref().ok_or("the pipeline traced no layer")?;
            rows.push((
                "logprob trace, HumanEval/0 C3 (target + capture + 24 layers)".into(),
                format!("{trace_s:.2} s, key layer {}", tr.key_layer),
            ));
            rows.push((
                "edit (paper settings), excluding capture".into(),
                format!(
                    "{:.3} s ({} evaluations; capture {capture_s:.2} s)",
                    r.seconds, r.steps
                ),
            ));
            doc["trace_s"] = json!(trace_s);
            doc["edit"] = json!({"solve_s": r.seconds, "capture_s": capture_s, "steps": r.steps, "layer": tr.key_layer});
        }
    }

    // HumanEval greedy generation (generation only; `creme eval` adds the tests).
    let n_he = a
        .humaneval
        .unwrap_or(if cpu_adapter { 0 } else { 164 })
        .min(clean.len());
    if n_he > 0 {
        let opts = GenerateOptions {
            max_new_tokens: 320,
            stop: humaneval_stops(),
            ..Default::default()
        };
        let t = Instant::now();
        let mut toks = 0;
        for chunk in clean[..n_he].chunks(16) {
            let ids: Vec<Vec<u32>> = chunk
                .iter()
                .map(|p| model.tokenizer.encode(&p.prompt))
                .collect::<Result<_, _>>()?;
            toks += pollster::block_on(generate(&dev, &model, &ids, &opts, &mut |_, _| {}))?
                .iter()
                .map(|c| c.tokens.len())
                .sum::<usize>();
        }
        let s = t.elapsed().as_secs_f64();
        rows.push((
            format!("HumanEval greedy generation, {n_he} tasks (batch 16)"),
            format!("{s:.1} s ({toks} tokens)"),
        ));
        doc["humaneval"] = json!({"tasks": n_he, "seconds": s, "tokens": toks});
    }
    let weights: u64 = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    rows.push((
        "weights".into(),
        format!("{:.0} MiB in the file", weights as f64 / 1048576.0),
    ));
    if a.json {
        println!("{}", serde_json::to_string_pretty(&doc)?);
    }
    Ok(())
}
