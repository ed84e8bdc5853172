//! `creme generate`: one completion for a prompt (greedy unless --temperature > 0), printed or
//! streamed, optionally with CREME patches applied.

use std::path::PathBuf;
use std::time::Instant;

use creme_core::eval::GenSpec;
use creme_core::{generate, Device, GpuOptions};

use crate::common::{self, Res};

#[derive(clap::Args, Clone, Debug)]
pub struct GenerateArgs {
    /// GGUF model file (default: the cached Qwen2.5-Coder-0.5B-Instruct Q4_K_M)
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// File holding the prompt text ('-' for stdin)
    #[arg(long)]
    pub prompt_file: Option<PathBuf>,
    /// The prompt text itself
    #[arg(long, conflicts_with = "prompt_file")]
    pub prompt: Option<String>,
    #[arg(long, default_value_t = GenSpec::default().max_tokens)]
    pub max_tokens: usize,
    #[arg(long, default_value_t = 0.0)]
    pub temperature: f32,
    #[arg(long, default_value_t = 1.0)]
    pub top_p: f32,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Stop strings (repeatable); --humaneval-stops adds the HumanEval set
    #[arg(long)]
    pub stop: Vec<String>,
    #[arg(long)]
    pub humaneval_stops: bool,
    /// Print tokens as they come (to stderr) and timing
    #[arg(long)]
    pub stream: bool,
    /// Apply CREME patches (safetensors from `creme edit`) before generating
    #[arg(long)]
    pub patch: Vec<PathBuf>,
    /// Print JSON {tokens, text, finish} instead of the text
    #[arg(long)]
    pub json: bool,
}

pub fn run(gpu: &GpuOptions, a: GenerateArgs) -> Res {
    let prompt = match (a.prompt, a.prompt_file) {
        (Some(p), _) => p,
        (None, Some(f)) if f.as_os_str() == "-" => std::io::read_to_string(std::io::stdin())?,
        (None, Some(f)) => {
            std::fs::read_to_string(&f).map_err(|e| format!("reading {}: {e}", f.display()))?
        }
        (None, None) => return Err("give --prompt-file FILE or --prompt TEXT".into()),
    };
    let mut stop = a.stop;
    if a.humaneval_stops {
        stop.extend(generate::humaneval_stops());
    }
    let opts = generate::GenerateOptions {
        max_new_tokens: a.max_tokens,
        temperature: a.temperature,
        top_p: a.top_p,
        seed: a.seed,
        stop,
        ..Default::default()
    };
    let dev = Device::open(gpu)?;
    let mut model = common::load_model(&dev, a.model.as_deref(), 0)?;
    common::apply_patches(&dev, &mut model, &a.patch)?;
    let ids = model.tokenizer.encode(&prompt)?;
    if ids.is_empty() {
        return Err("the prompt is empty".into());
    }
    let t0 = Instant::now();
    let tok = &model.tokenizer;
    let mut on_token = |_: usize, id: u32| {
        if a.stream {
            eprint!("{}", tok.decode(&[id]).unwrap_or_default());
        }
    };
    let out = pollster::block_on(generate::generate(
        &dev,
        &model,
        &[ids.clone()],
        &opts,
        &mut on_token,
    ))?;
    let c = &out[0];
    if a.stream {
        let secs = t0.elapsed().as_secs_f64();
        eprintln!("\n{}", c.stream_summary(ids.len(), secs));
    }
    if a.json {
        println!("{}", serde_json::to_string(c)?);
    } else {
        print!("{}", c.text);
    }
    Ok(())
}
