//! `creme info` (the adapter, its features and limits) and `creme check-matmul` (the f32 matmul
//! kernel against the CPU reference).

use creme_core::{Backend, Device, GpuOptions};

use crate::common::Res;

#[derive(clap::Args, Clone)]
pub struct InfoArgs {
    /// Print JSON
    #[arg(long)]
    pub json: bool,
    /// Also list every adapter found
    #[arg(long)]
    pub all: bool,
}

pub fn info(opts: &GpuOptions, a: InfoArgs) -> Res {
    if a.all {
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
    println!("{}", dev.info(a.json)?);
    Ok(())
}

#[derive(clap::Args, Clone)]
pub struct CheckArgs {
    #[arg(long, default_value_t = 12)]
    pub cases: usize,
    #[arg(long, default_value_t = 7)]
    pub seed: u64,
}

pub fn check_matmul(opts: &GpuOptions, a: CheckArgs) -> Res {
    let dev = Device::open(opts)?;
    println!("matmul check on {}", dev.describe());
    let mut print = |m: usize, n: usize, k: usize, err: f32| {
        println!("  m={m:4} n={n:4} k={k:4}  max rel err {err:.2e}")
    };
    let worst = pollster::block_on(creme_core::cpu::check_matmul_f32(
        &dev, a.cases, a.seed, &mut print,
    ))?;
    if worst > 1e-4 {
        return Err(
            format!("matmul differs from the CPU reference: max rel err {worst:.2e}").into(),
        );
    }
    println!(
        "matmul OK: {} random shapes, max rel err {worst:.2e}",
        a.cases
    );
    Ok(())
}
