//! creme-web: the browser facade over creme-core (wasm-bindgen). Errors reach JS as exceptions
//! carrying creme-core's message; panics are printed to the console with a stack.

use creme_core::{cpu, Gpu, GpuOptions};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(start)]
pub fn start() {
    console_error_panic_hook::set_once();
}

fn js_err(e: impl std::fmt::Display) -> JsError {
    JsError::new(&e.to_string())
}

/// One GPU device in the page, with everything loaded into it.
#[wasm_bindgen]
pub struct Session {
    gpu: Gpu,
}

#[wasm_bindgen]
impl Session {
    /// Open WebGPU (navigator.gpu) with the adapter's own limits.
    pub async fn create() -> Result<Session, JsError> {
        let gpu = Gpu::new(&GpuOptions::default()).await.map_err(js_err)?;
        Ok(Session { gpu })
    }

    /// The adapter report (name, backend, features, limits) as JSON.
    #[wasm_bindgen(js_name = adapterJson)]
    pub fn adapter_json(&self) -> Result<String, JsError> {
        serde_json::to_string(&self.gpu.report).map_err(js_err)
    }

    /// y = x · wᵀ on the GPU (x: m×k, w: n×k, row-major).
    pub async fn matmul(&self, x: Vec<f32>, w: Vec<f32>, m: usize, n: usize, k: usize) -> Result<Vec<f32>, JsError> {
        self.gpu.matmul_f32(&x, &w, m, n, k).await.map_err(js_err)
    }
}

/// The CPU reference of [`Session::matmul`], run in wasm.
#[wasm_bindgen(js_name = cpuMatmul)]
pub fn cpu_matmul(x: Vec<f32>, w: Vec<f32>, m: usize, n: usize, k: usize) -> Result<Vec<f32>, JsError> {
    if x.len() != m * k || w.len() != n * k {
        return Err(JsError::new("cpuMatmul: x must hold m*k and w n*k values"));
    }
    Ok(cpu::matmul_nt(&x, &w, m, n, k))
}
