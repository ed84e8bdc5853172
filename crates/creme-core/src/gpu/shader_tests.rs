//! The kernels' sources as naga reads them, held against the Rust side: every kernel compiles;
//! each constant shared with Rust is declared once, with the Rust value; the workgroup sizes the
//! dispatch grids assume are the ones the entry points declare; each kernel's uniform parameter
//! struct has the Rust struct's size and field offsets, at the binding after the storage buffers
//! the dispatch binds; and the text parser of the bindings reads what naga reads.

use naga::{AddressSpace, Expression, Literal, Module, ScalarKind, StorageAccess, TypeInner};

use super::bindings::{layout_entries, UNIFORM_VIEW_BASE};
use super::kernels::{kernel_source, shared_constants};
use super::key::{KernelKey as K, KvType, Qmm, RowsSgShape};
use super::layers::{AdamParams, AttentionParams, DecodeAttentionParams, EwParams, QkvRopeParams};
use super::ops::{MatmulDims, QuantMatmulParams};
use super::wgsl::{self, Value};
use crate::quant::GgmlType;

/// Every kernel the crate builds: each flavour of the quantized matmul for each format, each
/// subgroup size and a few head sizes of the subgroup attention, both KV cache types.
fn all_keys() -> Vec<K> {
    use GgmlType::*;
    let formats = [F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q4K, Q5K, Q6K];
    let flavours = [
        Qmm::Workgroup,
        Qmm::Tiled,
        Qmm::Gemm,
        Qmm::Matvec,
        Qmm::MatvecSg,
        Qmm::Embed,
        Qmm::Rows,
    ];
    let mut keys = vec![K::MatmulF32];
    for format in formats {
        keys.extend(flavours.map(|q| K::Quant(q, format)));
        for lanes in [4, 8, 16, 32] {
            for shape in RowsSgShape::ALL {
                let x_len = None;
                keys.push(K::Quant(
                    Qmm::RowsSg {
                        lanes,
                        shape,
                        x_len,
                    },
                    format,
                ));
            }
            let (shape, x_len) = (RowsSgShape::ONE, Some(896));
            keys.push(K::Quant(
                Qmm::RowsSg {
                    lanes,
                    shape,
                    x_len,
                },
                format,
            ));
        }
    }
    for kv in [KvType::F32, KvType::F16] {
        keys.extend([
            K::QkvRope(kv),
            K::Attention(kv),
            K::AttnSplit(kv),
            K::AttnMerge(kv),
        ]);
        for lanes in [4, 8, 16, 32] {
            for head_dim in [64, 128, 256] {
                keys.push(K::AttentionSg {
                    lanes,
                    head_dim,
                    kv,
                });
            }
        }
    }
    keys.extend([
        K::Adam,
        K::Argmax,
        K::ArgmaxPart,
        K::RowLogprob,
        K::SampleTopP,
    ]);
    keys
}

/// A kernel's source, parsed and validated by naga, and its entry point.
fn compiled(key: K) -> (String, Module, &'static str) {
    let (src, entry) = kernel_source(key).unwrap_or_else(|| panic!("no source for {key}"));
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{key}: {}", e.emit_to_string(&src)));
    let flags = naga::valid::ValidationFlags::all();
    naga::valid::Validator::new(flags, naga::valid::Capabilities::all())
        .validate(&module)
        .unwrap_or_else(|e| panic!("{key}: {}", e.emit_to_string(&src)));
    (src, module, entry)
}

/// The value of module-scope constant `name`, where it is a literal.
fn constant(module: &Module, name: &str) -> Option<Value> {
    let c = module
        .constants
        .iter()
        .find(|(_, c)| c.name.as_deref() == Some(name))?
        .1;
    match module.global_expressions[c.init] {
        Expression::Literal(Literal::U32(v)) => Some(Value::U32(v)),
        Expression::Literal(Literal::F32(v)) => Some(Value::F32(v)),
        ref other => panic!("constant {name} is {other:?}, not a u32 or f32 literal"),
    }
}

#[test]
fn every_kernel_declares_its_shared_constants_with_the_rust_values() {
    for key in all_keys() {
        let (src, module, _) = compiled(key);
        for shared in shared_constants(key) {
            // Declared once (naga refuses a second declaration): by the prelude.
            let decl = format!("const {}:", shared.name);
            assert_eq!(src.matches(&decl).count(), 1, "{key}: {}", shared.name);
            assert_eq!(
                constant(&module, shared.name),
                Some(shared.value),
                "{key}: WGSL's {} is not Rust's",
                shared.name
            );
        }
    }
}

/// The workgroup size a kernel's dispatch grid is computed for, where the Rust side depends on it.
fn grid_workgroup(key: K) -> Option<[u32; 3]> {
    let x = |threads| Some([threads, 1, 1]);
    match key {
        K::Quant(Qmm::Workgroup | Qmm::Rows | Qmm::Embed | Qmm::RowsSg { .. }, _) => {
            x(wgsl::QMM_WG)
        }
        // 32 lanes per weight row.
        K::Quant(Qmm::Matvec | Qmm::MatvecSg, _) => x(wgsl::QMM_MV_COLS_PER_WG * 32),
        // 4 x 4 outputs of the tile per thread.
        K::MatmulF32 => Some([wgsl::MATMUL_F32_TILE / 4, wgsl::MATMUL_F32_TILE / 4, 1]),
        K::QkvRope(_) => x(wgsl::QKV_ROPE_WG),
        K::Attention(_) | K::AttentionSg { .. } => x(wgsl::ATTENTION_WG),
        K::Adam => x(wgsl::ADAM_WG),
        _ => None,
    }
}

#[test]
fn entry_points_have_the_workgroup_sizes_the_grids_assume() {
    for key in all_keys() {
        let (_, module, entry) = compiled(key);
        let ep = module
            .entry_points
            .iter()
            .find(|e| e.name == entry)
            .unwrap_or_else(|| panic!("{key}: no entry point {entry}"));
        if let Some(size) = grid_workgroup(key) {
            assert_eq!(ep.workgroup_size, size, "{key}");
        }
        if let K::AttnSplit(_) = key {
            // A thread per key of the chunk.
            assert!(
                ep.workgroup_size[0] >= wgsl::DECODE_ATTENTION_CHUNK,
                "{key}"
            );
        }
    }
}

/// A Rust parameter struct: its size and fields (name, offset, size, scalar type).
struct RustLayout {
    name: &'static str,
    size: usize,
    fields: Vec<(&'static str, usize, usize, &'static str)>,
}

/// The WGSL scalar type a Rust field holds (arrays: padding).
trait Scalar {
    const WGSL: &'static str;
}
impl Scalar for u32 {
    const WGSL: &'static str = "u32";
}
impl Scalar for f32 {
    const WGSL: &'static str = "f32";
}
impl<const N: usize> Scalar for [u32; N] {
    const WGSL: &'static str = "u32";
}

/// The size and WGSL type of the field `get` reads.
fn field<S, F: Scalar>(_get: fn(&S) -> &F) -> (usize, &'static str) {
    (std::mem::size_of::<F>(), F::WGSL)
}

/// The layout of Rust struct `$s` from its fields (every one must be named: the test checks that
/// their sizes add up to the struct's).
macro_rules! layout {
    ($s:ident: $($f:ident),+ $(,)?) => {
        RustLayout {
            name: stringify!($s),
            size: std::mem::size_of::<$s>(),
            fields: vec![$({
                let (size, ty) = field::<$s, _>(|s: &$s| &s.$f);
                (stringify!($f), std::mem::offset_of!($s, $f), size, ty)
            }),+],
        }
    };
}

/// The parameters a kernel's dispatch writes, and how many storage buffers it binds before them.
fn rust_params(key: K) -> (RustLayout, u32) {
    let ew = || layout!(EwParams: n, a, b, c);
    match key {
        K::MatmulF32 => (layout!(MatmulDims: m, n, k, _pad), 3),
        K::Quant(..) => (
            layout!(QuantMatmulParams: m, n, k, ldy, y_off, has_bias, row_bytes, total_wg,
                w_byte_off, epilogue, has_norm, eps, row_group),
            5,
        ),
        K::QkvRope(_) => (
            layout!(QkvRopeParams: rows, t, q_heads, kv_heads, head_dim, style, has_bias,
                capacity, cache_len, _p),
            7,
        ),
        K::Attention(_) | K::AttentionSg { .. } => (
            layout!(AttentionParams: batch, t, heads, kv_heads, head_dim, ctx, p0, scale),
            5,
        ),
        K::AttnSplit(_) | K::AttnMerge(_) => (
            layout!(DecodeAttentionParams: batch, heads, kv_heads, head_dim, ctx, p0, scale,
                splits),
            6,
        ),
        K::Adam => (
            layout!(AdamParams: n, _p0, lr, b1, b2, eps, scale, bc1, bc2, _p1),
            4,
        ),
        K::Argmax | K::ArgmaxPart | K::RowLogprob | K::SampleTopP => (ew(), 3),
    }
}

/// The uniform parameters of a module: binding, size, and members (name, offset, size, type).
type WgslParams = (u32, u32, Vec<(String, usize, usize, &'static str)>);

fn wgsl_params(key: K, module: &Module) -> WgslParams {
    let mut params = module.global_variables.iter().filter(|(_, g)| {
        g.space == AddressSpace::Uniform && g.binding.as_ref().unwrap().binding < UNIFORM_VIEW_BASE
    });
    let (_, g) = params
        .next()
        .unwrap_or_else(|| panic!("{key}: no uniform parameters"));
    assert!(
        params.next().is_none(),
        "{key}: two uniform parameter bindings"
    );
    let TypeInner::Struct { members, span } = &module.types[g.ty].inner else {
        panic!("{key}: the parameters are not a struct");
    };
    let members = members
        .iter()
        .map(|m| {
            let ty = match module.types[m.ty].inner {
                TypeInner::Scalar(s) if s.width == 4 => match s.kind {
                    ScalarKind::Uint => "u32",
                    ScalarKind::Float => "f32",
                    ScalarKind::Sint => "i32",
                    _ => panic!("{key}: member of scalar kind {:?}", s.kind),
                },
                ref other => panic!("{key}: parameter member of type {other:?}"),
            };
            let name = m.name.clone().unwrap_or_default();
            (name, m.offset as usize, 4, ty)
        })
        .collect();
    (g.binding.as_ref().unwrap().binding, *span, members)
}

#[test]
fn uniform_parameters_match_the_rust_structs() {
    for key in all_keys() {
        let (_, module, _) = compiled(key);
        let (rust, storage) = rust_params(key);
        let (binding, span, members) = wgsl_params(key, &module);
        let what = format!("{key} ({})", rust.name);
        assert_eq!(
            binding, storage,
            "{what}: parameters after the storage bindings"
        );
        let covered: usize = rust.fields.iter().map(|f| f.2).sum();
        assert_eq!(
            covered, rust.size,
            "{what}: a field missing from the test's list"
        );
        assert_eq!(rust.size, span as usize, "{what}: sizes differ");
        // Padding may be split differently (`_p: [u32; 3]` against three u32s).
        let padding = |name: &str| name.starts_with('_');
        let wgsl: Vec<_> = members.iter().filter(|m| !padding(&m.0)).collect();
        let rust: Vec<_> = rust.fields.iter().filter(|f| !padding(f.0)).collect();
        assert_eq!(
            wgsl.len(),
            rust.len(),
            "{what}: fields {wgsl:?} against {rust:?}"
        );
        for (w, r) in wgsl.iter().zip(&rust) {
            assert_eq!((w.0.as_str(), w.1, w.2, w.3), **r, "{what}: field differs");
        }
    }
}

#[test]
fn the_text_parser_of_bindings_reads_what_naga_reads() {
    for key in all_keys() {
        let (src, module, _) = compiled(key);
        let mut naga: Vec<(u32, wgpu::BufferBindingType)> = module
            .global_variables
            .iter()
            .filter_map(|(_, g)| {
                let ty = match g.space {
                    AddressSpace::Uniform => wgpu::BufferBindingType::Uniform,
                    AddressSpace::Storage { access } => wgpu::BufferBindingType::Storage {
                        read_only: !access.contains(StorageAccess::STORE),
                    },
                    _ => return None,
                };
                Some((g.binding.as_ref()?.binding, ty))
            })
            .collect();
        naga.sort_by_key(|b| b.0);
        naga.dedup_by_key(|b| b.0);
        let mut text: Vec<_> = layout_entries(&src)
            .iter()
            .map(|e| match e.ty {
                wgpu::BindingType::Buffer { ty, .. } => (e.binding, ty),
                _ => panic!("{key}: binding {} is not a buffer", e.binding),
            })
            .collect();
        text.sort_by_key(|b| b.0);
        assert_eq!(text, naga, "{key}");
    }
}
