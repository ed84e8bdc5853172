//! `creme bench`'s measurements over any backend: prefill and decode throughput, what a decoded
//! token costs the GPU, per-kernel GPU time, the logprob trace and edit of one pair, HumanEval
//! generation; kept as a typed, versioned [`BenchReport`] so runs on different machines (and the
//! HF reference script, scripts/bench-hf.py) compare as ratios. Timed with [`Clock`]: wall clock
//! natively, zeros in the browser (which has no std clock).

use serde::{Deserialize, Serialize};

use crate::generate::{decode, generate, humaneval_stops, GenerateOptions};
use crate::gpu::KernelTime;
use crate::hooks::Hooks;
use crate::model::{GgmlType, KvCache, Logits, Model};
use crate::pipeline::{locate_and_edit, Clock, CremeSettings, LogprobLocator};
use crate::{AdapterReport, Backend, BackendKind, Device, ModelError};

/// Version 1 added the field; files of `creme bench --json` from before have none (version 0)
/// and read the same.
pub const BENCH_REPORT_VERSION: u32 = 1;

/// Everything `creme bench --json` prints.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    #[serde(default)]
    pub version: u32,
    /// The model file as named on the command line.
    pub model: String,
    pub backend: BackendKind,
    pub device: String,
    pub adapter: Option<AdapterReport>,
    pub kv_cache: String,
    pub load_s: f64,
    #[serde(default)]
    pub prefill: Vec<PrefillRun>,
    /// llama-bench's tg: decoding from a one-token context.
    #[serde(default)]
    pub tg: Vec<DecodeRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_per_token: Option<GpuWork>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decode_time: Option<DecodeSplit>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefill_profile: Option<PrefillProfile>,
    /// Decoding after a prompt, from the first generated token to the last.
    #[serde(default)]
    pub decode: Vec<DecodeRun>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edit: Option<EditTiming>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub humaneval: Option<HumanEvalRun>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillRun {
    pub tokens: usize,
    pub batch: usize,
    pub seconds: f64,
    pub tok_per_s: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodeRun {
    /// Tokens decoded.
    pub tokens: usize,
    /// Tokens asked for, where decoding may stop earlier (end of sequence).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub asked: Option<usize>,
    pub seconds: f64,
    pub tok_per_s: f64,
}

/// What one decoded token costs the GPU, per token.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GpuWork {
    pub tokens: usize,
    pub warmup: usize,
    pub buffers: f64,
    pub bind_groups: f64,
    pub pipelines: f64,
    pub encoders: f64,
    pub dispatches: f64,
    pub submissions: f64,
    /// CPU time in wgpu's finish + submit (it turns the recorded passes into driver commands).
    pub submit_ms: f64,
    pub dispatches_per_layer: f64,
    /// wgpu's count of live objects before and after: equal when nothing per token outlives it.
    pub live_buffers: [isize; 2],
    pub live_bind_groups: [isize; 2],
}

/// Where a decoded token's time goes (ms per token).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DecodeSplit {
    pub tokens: usize,
    pub encode_ms: f64,
    pub submit_to_result_ms: f64,
    /// Per-kernel GPU time, where the adapter has timestamp queries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<Vec<KernelRow>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_ms: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub untimed_passes: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PrefillProfile {
    pub tokens: usize,
    pub wall_ms: f64,
    pub gpu_ms: f64,
    pub kernels: Vec<KernelRow>,
    pub untimed_passes: u64,
}

/// One kernel's share of a profile, per unit (a token, or a whole pass).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct KernelRow {
    pub kernel: String,
    pub dispatches: f64,
    pub gpu_us: f64,
    pub share: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EditTiming {
    pub solve_s: f64,
    pub capture_s: f64,
    pub steps: usize,
    pub layer: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HumanEvalRun {
    pub tasks: usize,
    pub seconds: f64,
    pub tokens: usize,
}

impl BenchReport {
    /// The report's head: the model (as named) on `dev`, loaded in `load_s`.
    pub fn new(dev: &Device, model: String, load_s: f64) -> BenchReport {
        BenchReport {
            version: BENCH_REPORT_VERSION,
            model,
            backend: dev.kind(),
            device: dev.describe(),
            adapter: dev.gpu().map(|g| g.report.clone()),
            kv_cache: format!("{:?}", dev.kv_dtype()).to_lowercase(),
            load_s,
            prefill: Vec::new(),
            tg: Vec::new(),
            gpu_per_token: None,
            decode_time: None,
            prefill_profile: None,
            decode: Vec::new(),
            trace_s: None,
            edit: None,
            humaneval: None,
        }
    }

    /// The table's title: the device and, on a GPU, its shader-f16 and subgroup use and the KV
    /// cache's type.
    pub fn title(&self) -> String {
        let features = self.adapter.as_ref().map(|a| {
            let (f16, sub) = (a.shader_f16, a.subgroups);
            format!(
                "; shader-f16 {f16}, subgroups {sub}, KV cache {}",
                self.kv_cache
            )
        });
        format!(
            "creme bench on {}{}",
            self.device,
            features.unwrap_or_default()
        )
    }

    /// Parse `creme bench --json` output, refusing versions this build does not know.
    pub fn parse(text: &str) -> Result<BenchReport, String> {
        crate::versioned::parse(text, 0, BENCH_REPORT_VERSION, "a bench report")
    }
}

/// What to measure; prompts are texts, tokenized here.
pub struct BenchPlan {
    /// The prompt of the prefill and decode rows (cycled to each length).
    pub prompt: String,
    /// Prompt lengths for batch-1 prefill.
    pub prefill: Vec<usize>,
    /// Batch of the batched prefill at the first length (0 = none).
    pub prefill_batch: usize,
    /// Decode lengths after the prompt.
    pub decode: Vec<usize>,
    /// Decode lengths from an empty context (llama-bench's tg).
    pub tg: Vec<usize>,
    /// Each prefill / tg row is measured this many times; the median is kept.
    pub repetitions: usize,
    /// A clean and a perturbed prompt to trace and edit, and the pair's name.
    pub trace_pair: Option<(String, String, String)>,
    /// Prompts to generate greedily as HumanEval evaluation does (batch 16, 320 tokens).
    pub humaneval: Vec<String>,
}

/// The prompt of the prefill and decode rows where there is no dataset.
pub const FALLBACK_PROMPT: &str =
    "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n";

/// A comma list of lengths, as the bench flags give them (empty items skipped).
pub fn parse_lengths(s: &str) -> Result<Vec<usize>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|x| !x.is_empty())
        .map(|x| x.parse::<usize>().map_err(|e| format!("'{x}': {e}")))
        .collect()
}

/// A table row: (what, figure).
pub type Row = (String, String);

/// The row of the model file's size.
pub fn weights_row(bytes: u64) -> Row {
    let mib = bytes as f64 / 1048576.0;
    ("weights".into(), format!("{mib:.0} MiB in the file"))
}

/// What a plan measures unless told (the trace and edit row, HumanEval tasks generated): all on
/// a GPU, the long rows skipped on a CPU adapter (a slow emulation of a GPU).
pub fn default_rows(
    cpu_adapter: bool,
    trace: Option<bool>,
    humaneval: Option<usize>,
) -> (bool, usize) {
    let tasks = humaneval.unwrap_or(if cpu_adapter { 0 } else { 164 });
    (trace.unwrap_or(!cpu_adapter), tasks)
}

/// Measure `plan` on `model`, filling `report` and passing each table row to `on_row` as soon
/// as it is measured (a CPU adapter takes minutes per row).
pub async fn run(
    dev: &Device,
    model: &Model,
    plan: &BenchPlan,
    report: &mut BenchReport,
    on_row: &mut dyn FnMut(Row),
) -> Result<(), ModelError> {
    let tokens = model.tokenizer.encode(&plan.prompt)?;
    // Warm-up: compile the pipelines the timed runs use.
    prefill(dev, model, &tokens, 16, 1).await?;
    throughput(dev, model, plan, &tokens, report, on_row).await?;
    let start = model.cfg.eos_ids.first().copied().unwrap_or(0);
    if let Some(w) = gpu_work_per_token(dev, model, start, 4, 16).await? {
        on_row((
            "GPU work per decoded token (after 4 tokens)".into(),
            w.text(),
        ));
        report.gpu_per_token = Some(w);
    }
    if let Some(split) = decode_time_split(dev, model, start, 4, 16).await? {
        on_row((
            "time per decoded token (GPU, after 4 tokens)".into(),
            split.text(),
        ));
        report.decode_time = Some(split);
    }
    if let Some(&len) = plan.prefill.last() {
        if let Some(p) = prefill_profile(dev, model, &tokens, len).await? {
            let text = format!(
                "{:.1} ms wall; {}",
                p.wall_ms,
                kernel_summary(p.gpu_ms, &p.kernels)
            );
            on_row((
                format!("GPU time of one prompt pass of {len} tokens, profiled"),
                text,
            ));
            report.prefill_profile = Some(p);
        }
    }
    decode_after_prompt(dev, model, plan, &tokens, report, on_row).await?;
    if let Some(pair) = &plan.trace_pair {
        trace_and_edit(dev, model, pair, report, on_row).await?;
    }
    humaneval_generation(dev, model, &plan.humaneval, report, on_row).await
}

/// Prefill at batch 1 (and batched at the first length) and decoding from an empty context.
async fn throughput(
    dev: &Device,
    model: &Model,
    plan: &BenchPlan,
    tokens: &[u32],
    report: &mut BenchReport,
    on_row: &mut dyn FnMut(Row),
) -> Result<(), ModelError> {
    for &len in &plan.prefill {
        let mut runs = Vec::new();
        for _ in 0..plan.repetitions.max(1) {
            runs.push(prefill(dev, model, tokens, len, 1).await?);
        }
        let s = median(runs);
        on_row((
            format!("prefill batch 1, {len} tokens (pp{len})"),
            format!("{:.1} tok/s ({s:.2} s)", len as f64 / s),
        ));
        report.prefill.push(PrefillRun {
            tokens: len,
            batch: 1,
            seconds: s,
            tok_per_s: len as f64 / s,
        });
    }
    if let Some(&len) = plan.prefill.first().filter(|_| plan.prefill_batch > 0) {
        let batch = plan.prefill_batch;
        let s = prefill(dev, model, tokens, len, batch).await?;
        let n = (len * batch) as f64;
        on_row((
            format!("prefill batch {batch}, {len} tokens"),
            format!("{:.1} tok/s ({s:.2} s)", n / s),
        ));
        report.prefill.push(PrefillRun {
            tokens: len,
            batch,
            seconds: s,
            tok_per_s: n / s,
        });
    }
    let start = model.cfg.eos_ids.first().copied().unwrap_or(0);
    for &n in &plan.tg {
        let mut runs = Vec::new();
        for _ in 0..plan.repetitions.max(1) {
            let clock = Clock::start();
            greedy_decode(dev, model, start, n, &mut |_| {}).await?;
            runs.push(clock.lap());
        }
        let s = median(runs);
        on_row((
            format!("decode batch 1, {n} tokens from an empty context (tg{n})"),
            format!("{:.1} tok/s ({s:.2} s)", n as f64 / s),
        ));
        report.tg.push(DecodeRun {
            tokens: n,
            asked: None,
            seconds: s,
            tok_per_s: n as f64 / s,
        });
    }
    Ok(())
}

/// The median of the measured seconds.
fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    v[v.len() / 2]
}

/// One prompt pass of `batch` sequences of `len` tokens, timed to the logits' readback.
async fn prefill(
    dev: &Device,
    model: &Model,
    tokens: &[u32],
    len: usize,
    batch: usize,
) -> Result<f64, ModelError> {
    let seq: Vec<u32> = tokens.iter().cycle().take(len).cloned().collect();
    let mut cache = model.new_cache(dev, vec![0; batch], len)?;
    let clock = Clock::start();
    let out = model.forward(
        dev,
        &mut cache,
        &vec![seq; batch],
        &Hooks::default(),
        Logits::Last,
    )?;
    dev.read(out.logits.as_ref().expect("asked for logits"), 1)
        .await?;
    Ok(clock.lap())
}

/// One greedy decode step: the token after `token`, with the cache extended by it.
async fn greedy_step(
    dev: &Device,
    model: &Model,
    cache: &mut KvCache,
    token: u32,
) -> Result<u32, ModelError> {
    let out = model.forward(dev, cache, &[vec![token]], &Hooks::default(), Logits::Last)?;
    Ok(dev
        .argmax(out.logits.as_ref().expect("asked for logits"))
        .await?[0])
}

/// Greedy decoding of `tokens` tokens from a one-token context (llama-bench's tg: every step is
/// run, end of sequence or not), through the same pipelined loop generation uses. `on_token(k)` is
/// called as the k-th pick (from 1) comes back.
async fn greedy_decode(
    dev: &Device,
    model: &Model,
    start: u32,
    tokens: usize,
    on_token: &mut dyn FnMut(usize),
) -> Result<(), ModelError> {
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
    decode(dev, model, &mut cache, logits, &opts, &mut count).await?;
    Ok(())
}

/// What one decoded token costs the GPU in objects made, dispatches and submissions, after
/// `warmup` tokens (pipelines and caches that are made once are then in place): per token,
/// counted between the warmup-th pick coming back and the last. None on the CPU backend.
async fn gpu_work_per_token(
    dev: &Device,
    model: &Model,
    start: u32,
    warmup: usize,
    tokens: usize,
) -> Result<Option<GpuWork>, ModelError> {
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
    })
    .await?;
    let [(before, live_before), (after, live_after)] = marks.as_slice() else {
        return Err(ModelError::Format("bench: the decode ended early".into()));
    };
    let c = after.since(before);
    let per = |v: u64| v as f64 / tokens as f64;
    Ok(Some(GpuWork {
        tokens,
        warmup,
        buffers: per(c.buffers),
        bind_groups: per(c.bind_groups),
        pipelines: per(c.pipelines),
        encoders: per(c.encoders),
        dispatches: per(c.dispatches),
        submissions: per(c.submissions),
        submit_ms: per(c.submit_ns) / 1e6,
        dispatches_per_layer: per(c.dispatches) / model.cfg.n_layers as f64,
        live_buffers: [live_before.0, live_after.0],
        live_bind_groups: [live_before.1, live_after.1],
    }))
}

impl GpuWork {
    fn text(&self) -> String {
        format!(
            "{:.0} dispatches ({:.1} per layer), {:.1} submissions ({:.3} ms CPU in finish + submit); created: {:.1} buffers, {:.1} bind groups, {:.1} pipelines",
            self.dispatches,
            self.dispatches_per_layer,
            self.submissions,
            self.submit_ms,
            self.buffers,
            self.bind_groups,
            self.pipelines
        )
    }
}

/// Where a decoded token's time goes, after `warmup` tokens: CPU time encoding the forward, time
/// from there until its argmax is back (submission, GPU, readback), and, where the adapter has
/// timestamp queries, GPU time per kernel over a second run of `tokens` tokens.
async fn decode_time_split(
    dev: &Device,
    model: &Model,
    start: u32,
    warmup: usize,
    tokens: usize,
) -> Result<Option<DecodeSplit>, ModelError> {
    let Some(gpu) = dev.gpu() else {
        return Ok(None);
    };
    let mut cache = model.new_cache(dev, vec![0], warmup + 2 * tokens + 1)?;
    let mut next = start;
    for _ in 0..warmup {
        next = greedy_step(dev, model, &mut cache, next).await?;
    }
    let (mut encode_s, mut result_s) = (0.0, 0.0);
    for _ in 0..tokens {
        let clock = Clock::start();
        let out = model.forward(
            dev,
            &mut cache,
            &[vec![next]],
            &Hooks::default(),
            Logits::Last,
        )?;
        encode_s += clock.lap();
        next = dev
            .argmax(out.logits.as_ref().expect("asked for logits"))
            .await?[0];
        result_s += clock.lap();
    }
    let per_ms = |s: f64| s * 1e3 / tokens as f64;
    let mut split = DecodeSplit {
        tokens,
        encode_ms: per_ms(encode_s),
        submit_to_result_ms: per_ms(result_s),
        kernels: None,
        gpu_ms: None,
        untimed_passes: None,
    };
    if gpu.start_profiling() {
        for _ in 0..tokens {
            next = greedy_step(dev, model, &mut cache, next).await?;
        }
        let (times, untimed) = gpu.stop_profiling();
        split.kernels = Some(kernel_table(&times, tokens as f64));
        split.gpu_ms = Some(times.iter().map(|t| t.gpu_ns).sum::<f64>() / 1e6 / tokens as f64);
        split.untimed_passes = Some(untimed);
    }
    Ok(Some(split))
}

impl DecodeSplit {
    fn text(&self) -> String {
        let text = format!(
            "encode {:.3} ms, submit to result {:.3} ms",
            self.encode_ms, self.submit_to_result_ms
        );
        match (self.gpu_ms, &self.kernels) {
            (Some(ms), Some(k)) => format!("{text}; {}", kernel_summary(ms, k)),
            _ => text,
        }
    }
}

/// GPU time per kernel of one prompt pass of `len` tokens (None without timestamp queries).
async fn prefill_profile(
    dev: &Device,
    model: &Model,
    tokens: &[u32],
    len: usize,
) -> Result<Option<PrefillProfile>, ModelError> {
    let Some(gpu) = dev.gpu() else {
        return Ok(None);
    };
    if !gpu.start_profiling() {
        return Ok(None);
    }
    let run = prefill(dev, model, tokens, len, 1).await;
    let (times, untimed) = gpu.stop_profiling();
    let wall_s = run?;
    Ok(Some(PrefillProfile {
        tokens: len,
        wall_ms: wall_s * 1e3,
        gpu_ms: times.iter().map(|t| t.gpu_ns).sum::<f64>() / 1e6,
        kernels: kernel_table(&times, 1.0),
        untimed_passes: untimed,
    }))
}

/// Kernels, slowest first, per `per` (tokens, or 1 for a whole pass).
pub fn kernel_table(times: &[KernelTime], per: f64) -> Vec<KernelRow> {
    let total: f64 = times.iter().map(|t| t.gpu_ns).sum::<f64>().max(1.0);
    times
        .iter()
        .map(|t| KernelRow {
            kernel: t.kernel.clone(),
            dispatches: t.dispatches as f64 / per,
            gpu_us: t.gpu_ns / 1e3 / per,
            share: t.gpu_ns / total,
        })
        .collect()
}

/// "1.23 ms in kernels: matmul_q:Q4_K 0.61 (50%), ..." from a kernel table (`gpu_us` per unit).
pub fn kernel_summary(gpu_ms: f64, kernels: &[KernelRow]) -> String {
    let top: Vec<String> = kernels
        .iter()
        .take(4)
        .map(|k| {
            format!(
                "{} {:.3} ({:.0}%)",
                k.kernel,
                k.gpu_us / 1e3,
                100.0 * k.share
            )
        })
        .collect();
    format!("{gpu_ms:.3} ms in kernels: {}", top.join(", "))
}

/// Decode after the prompt: time between the first and the last generated token (the prompt
/// pass excluded).
async fn decode_after_prompt(
    dev: &Device,
    model: &Model,
    plan: &BenchPlan,
    tokens: &[u32],
    report: &mut BenchReport,
    on_row: &mut dyn FnMut(Row),
) -> Result<(), ModelError> {
    for &n in &plan.decode {
        let opts = GenerateOptions {
            max_new_tokens: n,
            ..Default::default()
        };
        let clock = Clock::start();
        let mut laps: Vec<f64> = Vec::with_capacity(n);
        let prompts = [tokens.to_vec()];
        let out = generate(dev, model, &prompts, &opts, &mut |_, _| {
            laps.push(clock.lap())
        })
        .await?;
        let k = laps.len();
        if k >= 2 {
            let s: f64 = laps[1..].iter().sum();
            let tps = (k - 1) as f64 / s;
            on_row((
                format!("decode batch 1, {n} tokens"),
                format!("{tps:.1} tok/s ({} tokens, finish {:?})", k, out[0].finish),
            ));
            report.decode.push(DecodeRun {
                tokens: k,
                asked: Some(n),
                seconds: s,
                tok_per_s: tps,
            });
        }
    }
    Ok(())
}

/// The logprob trace and the edit (paper settings) of one pair.
async fn trace_and_edit(
    dev: &Device,
    model: &Model,
    (clean, pert, name): &(String, String, String),
    report: &mut BenchReport,
    on_row: &mut dyn FnMut(Row),
) -> Result<(), ModelError> {
    let (ci, pi) = (
        model.tokenizer.encode(clean)?,
        model.tokenizer.encode(pert)?,
    );
    let done = locate_and_edit(
        dev,
        model,
        &ci,
        &pi,
        &CremeSettings::default(),
        &mut LogprobLocator::default(),
        Default::default(),
    )
    .await?;
    let (tm, r) = (&done.timings, &done.result);
    let (trace_s, capture_s) = (tm.target_s + tm.trace_s, tm.capture_s);
    let tr = done
        .trace
        .as_ref()
        .ok_or_else(|| ModelError::Format("the pipeline traced no layer".into()))?;
    on_row((
        format!(
            "logprob trace, {name} (target + capture + {} layers)",
            model.cfg.n_layers
        ),
        format!("{trace_s:.2} s, key layer {}", tr.key_layer),
    ));
    on_row((
        "edit (paper settings), excluding capture".into(),
        format!(
            "{:.3} s ({} evaluations; capture {capture_s:.2} s)",
            r.seconds, r.steps
        ),
    ));
    report.trace_s = Some(trace_s);
    report.edit = Some(EditTiming {
        solve_s: r.seconds,
        capture_s,
        steps: r.steps,
        layer: tr.key_layer,
    });
    Ok(())
}

/// Greedy generation of the prompts as HumanEval evaluation runs it (generation only; `creme
/// eval` adds the tests).
async fn humaneval_generation(
    dev: &Device,
    model: &Model,
    prompts: &[String],
    report: &mut BenchReport,
    on_row: &mut dyn FnMut(Row),
) -> Result<(), ModelError> {
    if prompts.is_empty() {
        return Ok(());
    }
    let opts = GenerateOptions {
        max_new_tokens: 320,
        stop: humaneval_stops(),
        ..Default::default()
    };
    let clock = Clock::start();
    let mut toks = 0;
    for chunk in prompts.chunks(16) {
        let ids: Vec<Vec<u32>> = chunk
            .iter()
            .map(|p| model.tokenizer.encode(p))
            .collect::<Result<_, _>>()?;
        toks += generate(dev, model, &ids, &opts, &mut |_, _| {})
            .await?
            .iter()
            .map(|c| c.tokens.len())
            .sum::<usize>();
    }
    let s = clock.lap();
    let n = prompts.len();
    on_row((
        format!("HumanEval greedy generation, {n} tasks (batch 16)"),
        format!("{s:.1} s ({toks} tokens)"),
    ));
    report.humaneval = Some(HumanEvalRun {
        tasks: n,
        seconds: s,
        tokens: toks,
    });
    Ok(())
}

/// The quantized matvec / matmul kernels on random weights of Qwen2.5-0.5B's MLP shapes (4864 x
/// 896 and 896 x 4864), `m` rows of x, each weight type timed over `reps` runs cycling through
/// `copies` copies of the weight (with enough of them the weights stream from memory as in a
/// whole model). The header line first, then one line per (type, shape).
pub async fn quantized_kernels(
    dev: &Device,
    reps: usize,
    m: usize,
    copies: usize,
    on_line: &mut dyn FnMut(String),
) -> Result<(), ModelError> {
    use GgmlType as G;
    let kernel = dev.gpu().map_or("the CPU backend's".into(), |g| {
        format!(
            "{}, weight rows in groups of {}",
            g.qmm_kernel(m as u32, 896),
            g.weight_row_group
        )
    });
    on_line(format!(
        "quantized matmul on {}, m = {m}, weight 4864 x 896 and 896 x 4864 ({copies} {}), kernel {kernel}",
        dev.describe(),
        if copies == 1 { "copy" } else { "copies in turn" }
    ));
    let mut rng = crate::cpu::SplitMix64(1);
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
            // One untimed run (pipelines), then `reps` timed ones; `s` is a timed run's time.
            let mut s = 0.0;
            for runs in [1, reps] {
                let clock = Clock::start();
                for i in 0..runs {
                    dev.matmul_q(&x, &ws[i % ws.len()], &mut y, m)?;
                }
                dev.read(&y, 1).await?;
                s = clock.lap() / runs as f64;
            }
            let bytes = (t.row_bytes(k) * rows) as f64;
            on_line(format!(
                "  {:5} {rows:5} x {k:5}: {:8.3} ms  {:7.2} GB/s of weights  {:7.1} GOP/s",
                t.name(),
                s * 1e3,
                bytes / s / 1e9,
                2.0 * (m * rows * k) as f64 / s / 1e9
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn length_lists_skip_empty_items_and_name_a_bad_one() {
        assert_eq!(parse_lengths("150, 512,,").unwrap(), [150, 512]);
        assert!(parse_lengths("").unwrap().is_empty());
        assert!(parse_lengths("128,x").unwrap_err().starts_with("'x': "));
    }

    #[test]
    fn the_title_names_gpu_features_only_on_a_gpu_and_cpu_adapters_skip_long_rows() {
        assert_eq!(report().title(), "creme bench on cpu: 2 threads");
        assert_eq!(weights_row(3 << 20).1, "3 MiB in the file");
        assert_eq!(default_rows(false, None, None), (true, 164));
        assert_eq!(default_rows(true, None, None), (false, 0));
        assert_eq!(default_rows(true, Some(true), Some(5)), (true, 5));
    }

    fn report() -> BenchReport {
        BenchReport {
            version: BENCH_REPORT_VERSION,
            model: "m.gguf".into(),
            backend: BackendKind::Cpu,
            device: "cpu: 2 threads".into(),
            adapter: None,
            kv_cache: "f32".into(),
            load_s: 0.5,
            prefill: vec![PrefillRun {
                tokens: 150,
                batch: 1,
                seconds: 0.1,
                tok_per_s: 1500.0,
            }],
            tg: vec![DecodeRun {
                tokens: 128,
                asked: None,
                seconds: 1.0,
                tok_per_s: 128.0,
            }],
            gpu_per_token: None,
            decode_time: Some(DecodeSplit {
                tokens: 16,
                encode_ms: 0.1,
                submit_to_result_ms: 2.0,
                kernels: Some(vec![KernelRow {
                    kernel: "matmul_q:Q4_K".into(),
                    dispatches: 48.0,
                    gpu_us: 610.0,
                    share: 0.5,
                }]),
                gpu_ms: Some(1.23),
                untimed_passes: Some(0),
            }),
            prefill_profile: None,
            decode: vec![DecodeRun {
                tokens: 100,
                asked: Some(128),
                seconds: 1.0,
                tok_per_s: 99.0,
            }],
            trace_s: Some(2.0),
            edit: Some(EditTiming {
                solve_s: 0.1,
                capture_s: 0.2,
                steps: 20,
                layer: 11,
            }),
            humaneval: None,
        }
    }

    #[test]
    fn a_bench_report_round_trips_and_reads_old_unversioned_files() {
        let text = serde_json::to_string_pretty(&report()).unwrap();
        let back = BenchReport::parse(&text).unwrap();
        assert_eq!(serde_json::to_string_pretty(&back).unwrap(), text);
        // The keys scripts read (scripts/bench-peers.sh, gpu-check.sh) are where they were.
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["prefill"][0]["tok_per_s"], 1500.0);
        assert_eq!(v["tg"][0]["tok_per_s"], 128.0);
        assert!(v["tg"][0].get("asked").is_none() && v.get("humaneval").is_none());
        // Output of a creme from before versions: no version field.
        let old = text.replacen(&format!("\"version\": {BENCH_REPORT_VERSION},"), "", 1);
        assert_eq!(BenchReport::parse(&old).unwrap().version, 0);
    }

    #[test]
    fn an_unknown_bench_report_version_is_refused_by_name() {
        let text = serde_json::to_string(&report()).unwrap().replacen(
            "\"version\":1",
            "\"version\":99",
            1,
        );
        let e = BenchReport::parse(&text).unwrap_err();
        assert!(e.contains("a bench report of version 99"), "{e}");
    }

    #[test]
    fn the_kernel_summary_names_the_slowest_four() {
        let rows = kernel_table(
            &[
                KernelTime {
                    kernel: "a".into(),
                    dispatches: 4,
                    gpu_ns: 3e6,
                },
                KernelTime {
                    kernel: "b".into(),
                    dispatches: 2,
                    gpu_ns: 1e6,
                },
            ],
            2.0,
        );
        assert_eq!(rows[0].dispatches, 2.0);
        assert_eq!(
            kernel_summary(2.0, &rows),
            "2.000 ms in kernels: a 1.500 (75%), b 0.500 (25%)"
        );
    }
}
