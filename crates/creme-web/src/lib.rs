//! creme-web: the browser facade over creme-core (wasm-bindgen). A `Session` owns one WebGPU
//! device and at most one model, loaded from streamed pieces: the GGUF header first (a prefix
//! of the file), then one tensor at a time, so the page never holds the whole file. Errors reach
//! JS as exceptions carrying creme-core's message; panics print to the console with a stack.

mod evaluate;
mod judge;

use creme_core::edit::EditSettings;
use creme_core::eval::GenSpec;
use creme_core::generate::{generate, humaneval_stops, GenerateOptions};
use creme_core::model::{GgufHeader, Model, ModelLoader};
use creme_core::patch::EditPatch;
use creme_core::pipeline::{locate_and_edit, CremeSettings, TraceLocator, DEFAULT_TARGET_TOKENS};
use creme_core::trace::{self, RestorationByLogprob};
use creme_core::{cpu, Device, Gpu, GpuOptions, ModelError};
use serde_json::json;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

#[wasm_bindgen]
pub struct Session {
    /// WebGPU through wgpu (the browser keeps the GPU backend).
    dev: Device,
    loader: Option<ModelLoader>,
    model: Option<Model>,
    /// The last edit made in this session, ready to download as a patch.
    patch: Option<EditPatch>,
}

impl Session {
    fn gpu(&self) -> &Gpu {
        self.dev.gpu().expect("the page's session runs on WebGPU")
    }
}

#[wasm_bindgen]
impl Session {
    /// Open WebGPU (navigator.gpu) with the adapter's own limits.
    pub async fn create() -> Result<Session, JsError> {
        let gpu = Gpu::new(&GpuOptions::default()).await.map_err(js_err)?;
        Ok(Session {
            dev: Device::Wgpu(gpu),
            loader: None,
            model: None,
            patch: None,
        })
    }

    /// The adapter report (name, backend, features, limits) as JSON.
    #[wasm_bindgen(js_name = adapterJson)]
    pub fn adapter_json(&self) -> Result<String, JsError> {
        serde_json::to_string(&self.gpu().report).map_err(js_err)
    }

    /// y = x · wᵀ on the GPU (x: m×k, w: n×k, row-major).
    pub async fn matmul(
        &self,
        x: Vec<f32>,
        w: Vec<f32>,
        m: usize,
        n: usize,
        k: usize,
    ) -> Result<Vec<f32>, JsError> {
        self.gpu().matmul_f32(&x, &w, m, n, k).await.map_err(js_err)
    }

    /// Bytes of the file's start needed to read the GGUF header: 0 when `prefix` suffices, else
    /// how many to fetch (call again with more).
    #[wasm_bindgen(js_name = headerBytesNeeded)]
    pub fn header_bytes_needed(prefix: &[u8]) -> Result<f64, JsError> {
        match GgufHeader::parse(prefix) {
            Ok(_) => Ok(0.0),
            Err(ModelError::Truncated { need, .. }) => Ok(need.max(prefix.len() as u64 * 2) as f64),
            Err(e) => Err(js_err(e)),
        }
    }

    /// Start loading a model from its GGUF header. Returns JSON: config and the tensors in file
    /// order with their absolute byte ranges [{name, start, end}], for HTTP Range requests.
    #[wasm_bindgen(js_name = beginModel)]
    pub fn begin_model(&mut self, prefix: &[u8], file_len: f64) -> Result<String, JsError> {
        let header = GgufHeader::parse(prefix).map_err(js_err)?;
        header.check_len(file_len as u64).map_err(js_err)?;
        let loader = ModelLoader::new(&header).map_err(js_err)?;
        let mut tensors = header.tensors.clone();
        tensors.sort_by_key(|t| t.offset);
        let list: Vec<_> = tensors
            .iter()
            .map(|t| {
                let r = header.tensor_range(t);
                json!({"name": t.name, "start": r.start, "end": r.end, "type": t.dtype.name()})
            })
            .collect();
        let doc = json!({"config": loader.config(), "tensors": list});
        self.model = None;
        self.patch = None;
        self.loader = Some(loader);
        Ok(doc.to_string())
    }

    /// Upload one tensor's bytes (named as in the list from beginModel).
    #[wasm_bindgen(js_name = addTensor)]
    pub fn add_tensor(&mut self, name: &str, bytes: &[u8]) -> Result<(), JsError> {
        let loader = self
            .loader
            .as_mut()
            .ok_or_else(|| JsError::new("addTensor before beginModel"))?;
        loader.add_tensor(&self.dev, name, bytes).map_err(js_err)
    }

    /// Finish loading; returns the model config as JSON.
    #[wasm_bindgen(js_name = finishModel)]
    pub fn finish_model(&mut self, max_positions: usize) -> Result<String, JsError> {
        let loader = self
            .loader
            .take()
            .ok_or_else(|| JsError::new("finishModel before beginModel"))?;
        let model = loader
            .finish(&self.dev, max_positions.max(64))
            .map_err(js_err)?;
        let cfg = serde_json::to_string(&model.cfg).map_err(js_err)?;
        self.model = Some(model);
        Ok(cfg)
    }

    fn model(&self) -> Result<&Model, JsError> {
        self.model
            .as_ref()
            .ok_or_else(|| JsError::new("no model loaded"))
    }

    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>, JsError> {
        self.model()?.tokenizer.encode(text).map_err(js_err)
    }

    pub fn detokenize(&self, ids: Vec<u32>) -> Result<String, JsError> {
        self.model()?.tokenizer.decode(&ids).map_err(js_err)
    }

    /// Generate from `prompt`; `on_token(id, text)` is called for each new token. Greedy when
    /// temperature is 0. Returns JSON {tokens, text, finish}.
    pub async fn generate(
        &self,
        prompt: String,
        max_tokens: usize,
        temperature: f32,
        seed: f64,
        humaneval: bool,
        on_token: Option<js_sys::Function>,
    ) -> Result<String, JsError> {
        let model = self.model()?;
        let ids = model.tokenizer.encode(&prompt).map_err(js_err)?;
        let opts = GenerateOptions {
            max_new_tokens: max_tokens,
            temperature,
            top_p: GenSpec::default().top_p,
            seed: seed as u64,
            stop: if humaneval {
                humaneval_stops()
            } else {
                Vec::new()
            },
            ignore_eos: false,
        };
        let tok = &model.tokenizer;
        let mut cb = |_: usize, id: u32| {
            if let Some(f) = &on_token {
                let piece = tok.decode(&[id]).unwrap_or_default();
                let _ = f.call2(&JsValue::NULL, &JsValue::from(id), &JsValue::from(piece));
            }
        };
        let out = generate(&self.dev, model, &[ids], &opts, &mut cb)
            .await
            .map_err(js_err)?;
        serde_json::to_string(&out[0]).map_err(js_err)
    }

    /// Causal trace with the logprob metric (no code execution): JSON with per-layer restoration,
    /// distances and the key layer, for every prompt position and for differing positions only.
    #[wasm_bindgen(js_name = traceLogprob)]
    pub async fn trace_logprob(
        &self,
        clean: String,
        pert: String,
        target_tokens: usize,
    ) -> Result<String, JsError> {
        let model = self.model()?;
        let (target, setup) = trace::prepare_pair(&self.dev, model, &clean, &pert, target_tokens)
            .await
            .map_err(js_err)?;
        let (all, diff, _) = trace::logprob_traces(&self.dev, model, &setup, &mut |_, _| {})
            .await
            .map_err(js_err)?;
        let doc = json!({"target": model.tokenizer.decode(&target).map_err(js_err)?, "lp_clean": setup.lp_clean, "lp_pert": setup.lp_pert,
                         "all_positions": all, "differing_positions": diff});
        Ok(doc.to_string())
    }

    /// Layer x position grid trace (logprob metric): one prompt position patched at one layer, for
    /// the differing positions and the last `tail` positions. JSON {grid, labels, svg}.
    #[wasm_bindgen(js_name = traceGrid)]
    pub async fn trace_grid(
        &self,
        clean: String,
        pert: String,
        target_tokens: usize,
        tail: usize,
    ) -> Result<String, JsError> {
        let model = self.model()?;
        let tok = &model.tokenizer;
        // The perturbed prompt's tokens label the grid's positions.
        let p = tok.encode(&pert).map_err(js_err)?;
        let (_, setup) = trace::prepare_pair(&self.dev, model, &clean, &pert, target_tokens)
            .await
            .map_err(js_err)?;
        let mut positions = setup.differing_positions();
        positions.extend(setup.frame.saturating_sub(tail)..setup.frame);
        positions.sort();
        positions.dedup();
        let grid = trace::trace_grid(
            &self.dev,
            model,
            &setup,
            &positions,
            &mut RestorationByLogprob,
        )
        .await
        .map_err(js_err)?;
        let labels: Vec<String> = positions
            .iter()
            .map(|&i| match i.checked_sub(setup.pad_pert()) {
                Some(j) => tok.decode(&[p[j]]).unwrap_or_default(),
                None => "<pad>".into(),
            })
            .collect();
        let svg = creme_core::report::grid_heatmap_svg(
            &grid,
            &labels,
            "restoration, one position patched at one layer",
        );
        Ok(json!({"grid": grid, "labels": labels, "positions": positions, "svg": svg}).to_string())
    }

    /// CREME edit of one layer's W_down from the clean/perturbed pair; `layer` < 0 traces first
    /// (the trace that fits the rows: every prompt position for the paper's rows, the aligned
    /// trace for the prompt rows) and edits the key layer. `settings` is JSON {edit (any of
    /// `EditSettings`' fields; defaults: the paper's), past_divergence (tokens past the first
    /// clean/perturbed divergence, or null)}; `defaults()` holds the recommended and the paper's.
    /// The edit is applied to the model and kept as this session's patch. Returns JSON {layer,
    /// trace, edit: {losses, steps, best_loss, kept_step, ...}, settings, seconds}.
    pub async fn edit(
        &mut self,
        clean: String,
        pert: String,
        layer: i32,
        settings: String,
        target_tokens: usize,
    ) -> Result<String, JsError> {
        #[derive(serde::Deserialize, Default)]
        #[serde(default)]
        struct PageSettings {
            edit: EditSettings,
            past_divergence: Option<usize>,
        }
        let given: PageSettings = if settings.trim().is_empty() {
            PageSettings::default()
        } else {
            serde_json::from_str(&settings).map_err(|e| js_err(format!("edit settings: {e}")))?
        };
        let s = given.edit;
        self.revert();
        let model = self
            .model
            .as_mut()
            .ok_or_else(|| JsError::new("no model loaded"))?;
        let (c, p) = (
            model.tokenizer.encode(&clean).map_err(js_err)?,
            model.tokenizer.encode(&pert).map_err(js_err)?,
        );
        let creme = CremeSettings {
            target_tokens,
            past_divergence: given.past_divergence,
            control: None,
            layer: (layer >= 0).then_some(layer as usize),
            edit: s.clone(),
        };
        let mut meta = std::collections::BTreeMap::new();
        meta.insert("base_model".to_string(), model.cfg.name.clone());
        meta.insert("made_by".to_string(), "creme-web".to_string());
        let done = locate_and_edit(
            &self.dev,
            model,
            &c,
            &p,
            &creme,
            &mut TraceLocator::for_rows(s.rows, None),
            meta,
        )
        .await
        .map_err(js_err)?;
        let (layer, result, patch) = (done.layer, done.result, done.patch);
        let trace_json = serde_json::to_value(&done.trace).map_err(js_err)?;
        patch.apply(&self.dev, model).map_err(js_err)?;
        let loss_svg = creme_core::report::loss_curve_svg(
            &result.losses,
            s.lambda,
            result.kept_step,
            "edit loss per step",
        );
        let doc = json!({"layer": layer, "trace": trace_json, "edit": result, "settings": s, "loss_svg": loss_svg});
        self.patch = Some(patch);
        Ok(doc.to_string())
    }

    /// The last edit as a CREME patch (safetensors bytes), for download.
    #[wasm_bindgen(js_name = patchBytes)]
    pub fn patch_bytes(&self) -> Result<Vec<u8>, JsError> {
        self.patch
            .as_ref()
            .ok_or_else(|| JsError::new("no edit made yet"))?
            .to_safetensors()
            .map_err(js_err)
    }

    /// Apply a CREME patch (safetensors bytes from `creme edit` or patchBytes). Returns its layer.
    #[wasm_bindgen(js_name = applyPatch)]
    pub fn apply_patch(&mut self, bytes: &[u8]) -> Result<usize, JsError> {
        let patch = EditPatch::from_safetensors(bytes).map_err(js_err)?;
        let model = self
            .model
            .as_mut()
            .ok_or_else(|| JsError::new("no model loaded"))?;
        patch.apply(&self.dev, model).map_err(js_err)?;
        let layer = patch.layer;
        self.patch = Some(patch);
        Ok(layer)
    }

    /// Undo every edit and patch: the model is the file's again.
    pub fn revert(&mut self) {
        if let Some(m) = self.model.as_mut() {
            m.revert_all_edits();
        }
        self.patch = None;
    }

    /// A restoration-per-layer curve (SVG) for a layer trace JSON (as in traceLogprob's output).
    #[wasm_bindgen(js_name = layerCurveSvg)]
    pub fn layer_curve_svg(trace_json: &str, title: &str) -> Result<String, JsError> {
        let t: trace::LayerTrace = serde_json::from_str(trace_json).map_err(js_err)?;
        Ok(creme_core::report::layer_curve_svg(&t, title))
    }
}

/// The settings the pages start from, all from core, so that no page holds a copy of a core
/// default: JSON {target_tokens (continuation tokens of a trace or edit), edit (the paper's
/// `EditSettings`), generation {max_tokens, temperature, top_p, samples, batch} (`creme eval`'s),
/// judge_timeout_s (seconds per test program)}.
#[wasm_bindgen]
pub fn defaults() -> String {
    let gen = GenSpec::default();
    json!({
        "target_tokens": DEFAULT_TARGET_TOKENS,
        "edit": EditSettings::default(),
        // The page's setting choices, recommended first: {edit, past_divergence} each.
        "settings": {
            "recommended": page_setting(&CremeSettings::recommended()),
            "paper": page_setting(&CremeSettings::default()),
        },
        "generation": {
            "max_tokens": gen.max_tokens,
            "temperature": gen.temperature,
            "top_p": gen.top_p,
            "samples": gen.n,
            "batch": gen.batch,
        },
        "judge_timeout_s": creme_core::eval::DEFAULT_TIMEOUT_S,
    })
    .to_string()
}

/// A setting as the page's `edit` takes it.
fn page_setting(s: &CremeSettings) -> serde_json::Value {
    json!({"edit": s.edit, "past_divergence": s.past_divergence})
}

/// Perturb a prompt's docstring with creme's perturbator (types A1..S2, see the README).
#[wasm_bindgen]
pub fn perturb(prompt: &str, ptype: &str, seed: f64) -> Result<String, JsError> {
    creme_core::perturb::perturb(prompt, ptype, seed as u64).map_err(js_err)
}

/// The two prompts as HTML (escaped) with the characters that differ marked, as a JSON pair
/// [clean, perturbed]: the same character diff as `creme edit`'s report.
#[wasm_bindgen(js_name = diffMarked)]
pub fn diff_marked(clean: &str, pert: &str) -> String {
    serde_json::to_string(&creme_core::report::diff_marked(clean, pert)).unwrap_or_default()
}

/// Dataset JSONL text (HumanEval, a released perturbed set, or MBPP-style records) as JSON
/// problems [{task_id, prompt, entry_point, test, original_prompt}], by core's rules: an MBPP
/// record becomes a signature + docstring prompt and a `check`; a bad line is an error naming
/// `source` and the line.
#[wasm_bindgen(js_name = parseTasks)]
pub fn parse_tasks(jsonl: &str, source: &str) -> Result<String, JsError> {
    let problems = creme_core::dataset::parse_jsonl(jsonl, source).map_err(js_err)?;
    serde_json::to_string(&problems).map_err(js_err)
}

/// The 20 perturbation types, as a JSON list.
#[wasm_bindgen(js_name = perturbationTypes)]
pub fn perturbation_types() -> String {
    serde_json::to_string(&creme_core::dataset::PERTURBATION_TYPES).unwrap_or_default()
}

/// Incremental SHA-256, for checking downloaded model files chunk by chunk.
#[wasm_bindgen]
pub struct Sha256(sha2::Sha256);

#[wasm_bindgen]
impl Sha256 {
    #[wasm_bindgen(constructor)]
    pub fn new() -> Sha256 {
        use sha2::Digest;
        Sha256(sha2::Sha256::new())
    }
    pub fn update(&mut self, bytes: &[u8]) {
        use sha2::Digest;
        self.0.update(bytes);
    }
    /// The hex digest (the hasher is reset).
    pub fn hex(&mut self) -> String {
        use sha2::Digest;
        let d = self.0.finalize_reset();
        d.iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

/// The CPU reference of [`Session::matmul`], run in wasm.
#[wasm_bindgen(js_name = cpuMatmul)]
pub fn cpu_matmul(
    x: Vec<f32>,
    w: Vec<f32>,
    m: usize,
    n: usize,
    k: usize,
) -> Result<Vec<f32>, JsError> {
    if x.len() != m * k || w.len() != n * k {
        return Err(JsError::new("cpuMatmul: x must hold m*k and w n*k values"));
    }
    Ok(cpu::matmul_nt(&x, &w, m, n, k))
}
