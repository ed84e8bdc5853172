//! The numbers that Rust and WGSL share, in one place: the dispatch code sizes its grids and
//! buffers with them, and the kernel registry writes them into each kernel's source as a prelude
//! of `const` declarations (as it writes the subgroup size and head size of the kernels built
//! for them), so the shaders declare none of them themselves.

/// Threads of a workgroup of the quantized matmul's `main`, `main_rows`, `main_rows_sg` and
/// `embed_rows` (WG in matmul_quant.wgsl).
pub(crate) const QMM_WG: u32 = 64;
/// Rows of x a workgroup of `main` (a thread of `main_rows`) takes (MT in matmul_quant.wgsl).
pub(crate) const QMM_ROWS_PER_WG: u32 = 8;
/// Rows of x the matvec kernels (`main_mv`, `main_mv_sg`) take (MV in matmul_quant.wgsl).
pub(crate) const QMM_MV_MAX_ROWS: u32 = 4;
/// Weight rows per workgroup of the matvec kernels, 32 lanes each (MV_COLS).
pub(crate) const QMM_MV_COLS_PER_WG: u32 = 8;
/// Rows of x and weight rows in a tile of y of `main_tiled` and `main_gemm` (TILE).
pub(crate) const QMM_TILE: u32 = 64;
/// Rows of x from which the quantized matmul takes its prompt kernels (Rust only).
pub(crate) const QMM_TILED_MIN_ROWS: u32 = 16;

/// Keys per workgroup of the split decode attention (CH in attention_decode.wgsl).
pub(crate) const DECODE_ATTENTION_CHUNK: u32 = 32;
/// Largest head dimension the attention kernel accumulates: 4 dimensions per thread.
pub const MAX_ATTENTION_HEAD_DIM: usize = 256;
/// Threads of a workgroup of the prompt attention (WG in attention.wgsl).
pub(crate) const ATTENTION_WG: u32 = (MAX_ATTENTION_HEAD_DIM / 4) as u32;

/// Threads of a workgroup of qkv_rope (WG in qkv_rope.wgsl).
pub(crate) const QKV_ROPE_WG: u32 = 64;
/// Threads of a workgroup of the Adam step (WG in adam.wgsl).
pub(crate) const ADAM_WG: u32 = 256;
/// Rows and columns of a tile of y of the f32 matmul (TM and TN in matmul_f32.wgsl).
pub(crate) const MATMUL_F32_TILE: u32 = 64;

/// A value a kernel reads from Rust.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Value {
    U32(u32),
    F32(f32),
}

/// A constant shared with WGSL: its name there and its value.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Shared {
    pub name: &'static str,
    pub value: Value,
}

impl Shared {
    pub(crate) const fn u32(name: &'static str, value: u32) -> Shared {
        Shared {
            name,
            value: Value::U32(value),
        }
    }

    pub(crate) const fn f32(name: &'static str, value: f32) -> Shared {
        Shared {
            name,
            value: Value::F32(value),
        }
    }

    /// The WGSL declaration. An f32 is written with Rust's shortest round-trip digits and a
    /// decimal point, so that WGSL reads back the same value.
    fn declaration(&self) -> String {
        match self.value {
            Value::U32(v) => format!("const {}: u32 = {v}u;\n", self.name),
            Value::F32(v) => format!("const {}: f32 = {v:?};\n", self.name),
        }
    }
}

/// The declarations of `consts`, to put before a kernel's source.
pub(crate) fn prelude(consts: &[Shared]) -> String {
    consts.iter().map(Shared::declaration).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn declarations_read_back_as_the_same_values() {
        let consts = [
            Shared::u32("A", 8),
            Shared::f32("B", 104.0),
            Shared::f32("C", 1e-10),
        ];
        assert_eq!(
            prelude(&consts),
            "const A: u32 = 8u;\nconst B: f32 = 104.0;\nconst C: f32 = 1e-10;\n"
        );
        assert_eq!(ATTENTION_WG * 4, MAX_ATTENTION_HEAD_DIM as u32);
    }
}
