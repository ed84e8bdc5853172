//! Kernel keys: which kernel a dispatch runs, as a value the registry builds the source from and
//! compiles once. Their names (`Display`) are what profiles, pipeline labels and `creme bench`
//! show.

use std::fmt;

use super::wgsl::QMM_TILED_MIN_ROWS;
use crate::quant::GgmlType;

/// The element type of the KV cache a kernel reads or writes: with F16, the registry builds the
/// kernel's `_kv16` variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KvType {
    F32,
    F16,
}

/// A kernel the crate can run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum KernelKey {
    MatmulF32,
    /// A quantized matmul (or the embedding lookup) for weights in one GGML format.
    Quant(Qmm, GgmlType),
    QkvRope(KvType),
    Attention(KvType),
    /// The prompt attention that shares what every lane reads through subgroup broadcasts, for
    /// subgroups of `lanes` lanes and heads of `head_dim` dimensions.
    AttentionSg {
        lanes: u32,
        head_dim: u32,
        kv: KvType,
    },
    AttnSplit(KvType),
    AttnMerge(KvType),
    Adam,
    Argmax,
    ArgmaxPart,
    RowLogprob,
    SampleTopP,
}

/// The entry points of the quantized matmul (matmul_quant.wgsl); `Gpu::qmm_kernel` picks one.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Qmm {
    /// `main`: a workgroup per weight row and QMM_ROWS_PER_WG rows of x.
    Workgroup,
    /// `main_tiled`: tiles of y, tuned for CPU adapters.
    Tiled,
    /// `main_gemm`: register-blocked tiles of y, for GPUs.
    Gemm,
    /// `main_mv`: the matvec for decode on GPUs.
    Matvec,
    /// `main_mv_sg`: the matvec with its reduction in subgroup operations.
    MatvecSg,
    /// `main_rows`: a thread per weight row.
    Rows,
    /// `main_rows_sg`: a thread per weight row, x shared through broadcasts over subgroups of
    /// `lanes`; with `x_len` (k, one row of x) x is read through uniform views of k values.
    RowsSg {
        lanes: u32,
        shape: RowsSgShape,
        x_len: Option<u32>,
    },
    /// `embed_rows`: the embedding lookup, dequantizing rows of the table.
    Embed,
}

impl Qmm {
    /// The entry point in matmul_quant.wgsl.
    pub(crate) fn entry(self) -> &'static str {
        match self {
            Qmm::Workgroup => "main",
            Qmm::Tiled => "main_tiled",
            Qmm::Gemm => "main_gemm",
            Qmm::Matvec => "main_mv",
            Qmm::MatvecSg => "main_mv_sg",
            Qmm::Rows => "main_rows",
            Qmm::RowsSg { .. } => "main_rows_sg",
            Qmm::Embed => "embed_rows",
        }
    }
}

impl fmt::Display for Qmm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Qmm::Workgroup => f.write_str("matmul_q"),
            Qmm::Tiled => f.write_str("matmul_q_tiled"),
            Qmm::Gemm => f.write_str("matmul_q_gemm"),
            Qmm::Matvec => f.write_str("matmul_q_mv"),
            Qmm::MatvecSg => f.write_str("matmul_q_mv_sg"),
            Qmm::Rows => f.write_str("matmul_q_rows"),
            Qmm::RowsSg {
                lanes,
                shape,
                x_len,
            } => {
                write!(f, "matmul_q_rows_sg{lanes}{}", shape.suffix)?;
                match x_len {
                    Some(k) => write!(f, "_x{k}"),
                    None => Ok(()),
                }
            }
            Qmm::Embed => f.write_str("embed_rows"),
        }
    }
}

impl KernelKey {
    /// The cache's element type of a kernel that reads the KV cache.
    pub(crate) fn kv(self) -> Option<KvType> {
        match self {
            KernelKey::QkvRope(kv)
            | KernelKey::Attention(kv)
            | KernelKey::AttentionSg { kv, .. }
            | KernelKey::AttnSplit(kv)
            | KernelKey::AttnMerge(kv) => Some(kv),
            _ => None,
        }
    }
}

impl fmt::Display for KernelKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelKey::MatmulF32 => f.write_str("matmul_f32")?,
            KernelKey::Quant(q, format) => write!(f, "{q}:{}", format.name())?,
            KernelKey::QkvRope(_) => f.write_str("qkv_rope")?,
            KernelKey::Attention(_) => f.write_str("attention")?,
            KernelKey::AttentionSg {
                lanes, head_dim, ..
            } => write!(f, "attention_sg{lanes}_d{head_dim}")?,
            KernelKey::AttnSplit(_) => f.write_str("attn_split")?,
            KernelKey::AttnMerge(_) => f.write_str("attn_merge")?,
            KernelKey::Adam => f.write_str("adam")?,
            KernelKey::Argmax => f.write_str("argmax")?,
            KernelKey::ArgmaxPart => f.write_str("argmax_part")?,
            KernelKey::RowLogprob => f.write_str("row_logprob")?,
            KernelKey::SampleTopP => f.write_str("sample_top_p")?,
        }
        match self.kv() {
            Some(KvType::F16) => f.write_str("_kv16"),
            _ => Ok(()),
        }
    }
}

/// A shape of `main_rows_sg`: weight rows per lane, rows of x per workgroup, and whether every
/// workgroup runs all its rows of x (a constant count, so that the loops unroll and the sums stay
/// in registers: twice as fast on lavapipe; rows past m are computed and not stored).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) struct RowsSgShape {
    pub suffix: &'static str,
    pub rows_per_lane: u32,
    pub x_rows: u32,
    pub all_rows: bool,
}

impl RowsSgShape {
    /// Decode: one row of x, two weight rows per lane.
    pub const ONE: RowsSgShape = RowsSgShape {
        suffix: "_m1",
        rows_per_lane: 2,
        x_rows: 1,
        all_rows: true,
    };
    /// A few rows (a speculative draft's check, small prompts): up to 8 per workgroup.
    pub const FEW: RowsSgShape = RowsSgShape {
        suffix: "",
        rows_per_lane: 1,
        x_rows: 8,
        all_rows: false,
    };
    /// Prompts of 16 rows or more: a broadcast value of x serves 4 weight rows.
    pub const WIDE: RowsSgShape = RowsSgShape {
        suffix: "_wide",
        rows_per_lane: 4,
        x_rows: 16,
        all_rows: true,
    };
    /// Every shape (the shader tests build each).
    #[cfg(test)]
    pub const ALL: [RowsSgShape; 3] = [Self::ONE, Self::FEW, Self::WIDE];

    /// The shape for m rows of x.
    pub fn for_rows(m: u32) -> RowsSgShape {
        match m {
            0 | 1 => Self::ONE,
            _ if m < QMM_TILED_MIN_ROWS => Self::FEW,
            _ => Self::WIDE,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The names are the ones profiles and `creme bench` have always shown.
    #[test]
    fn names_are_the_kernels_names() {
        let rows_sg = |lanes, shape, x_len| Qmm::RowsSg {
            lanes,
            shape,
            x_len,
        };
        let cases = [
            (KernelKey::MatmulF32, "matmul_f32"),
            (
                KernelKey::Quant(Qmm::Workgroup, GgmlType::Q8_0),
                "matmul_q:Q8_0",
            ),
            (
                KernelKey::Quant(Qmm::MatvecSg, GgmlType::Q4K),
                "matmul_q_mv_sg:Q4_K",
            ),
            (
                KernelKey::Quant(Qmm::Embed, GgmlType::BF16),
                "embed_rows:BF16",
            ),
            (
                KernelKey::Quant(rows_sg(8, RowsSgShape::ONE, Some(896)), GgmlType::Q6K),
                "matmul_q_rows_sg8_m1_x896:Q6_K",
            ),
            (
                KernelKey::Quant(rows_sg(4, RowsSgShape::FEW, None), GgmlType::F16),
                "matmul_q_rows_sg4:F16",
            ),
            (
                KernelKey::Quant(rows_sg(16, RowsSgShape::WIDE, None), GgmlType::Q5_0),
                "matmul_q_rows_sg16_wide:Q5_0",
            ),
            (KernelKey::QkvRope(KvType::F16), "qkv_rope_kv16"),
            (KernelKey::AttnSplit(KvType::F32), "attn_split"),
            (
                KernelKey::AttentionSg {
                    lanes: 8,
                    head_dim: 64,
                    kv: KvType::F16,
                },
                "attention_sg8_d64_kv16",
            ),
            (KernelKey::SampleTopP, "sample_top_p"),
        ];
        for (key, name) in cases {
            assert_eq!(key.to_string(), name, "{key:?}");
        }
    }
}
