//! A kernel's bindings as its WGSL declares them (`@group(0) @binding(i) var<...>`): the layout
//! the registry compiles it with, and its views of storage bindings.

/// Bindings from this number up are views of storage bindings: binding `UNIFORM_VIEW_BASE + i`,
/// declared as `var<uniform> name: array<vec4<...>, N>`, shows the first 16 N bytes of the buffer
/// at storage binding i. Why: on CPU adapters (lavapipe) a uniform load is a gather over the SIMD
/// lanes, a storage load a loop with a branch per lane and component (docs/performance.md).
pub(crate) const UNIFORM_VIEW_BASE: u32 = 16;
/// Binding `STORAGE_VIEW_BASE + i` is a second storage view of the whole buffer at storage
/// binding i, with another element type (naga lets an entry point use one view per binding): the
/// weights as vec2s, so that a Q5 header's two words are one load.
pub(crate) const STORAGE_VIEW_BASE: u32 = 32;

/// A view of a kernel (see [`UNIFORM_VIEW_BASE`], [`STORAGE_VIEW_BASE`]): its binding, the
/// storage binding whose buffer it shows, and how many bytes from that buffer's start (None: all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct View {
    pub binding: u32,
    pub of: usize,
    pub bytes: Option<u64>,
}

/// The group-0 declarations of a WGSL source (`@group(0) @binding(i) var<...> ...`): binding,
/// address space with access (spaces removed: "storage,read"), and the rest of the line.
fn binding_decls(wgsl: &str) -> Vec<(u32, String, &str)> {
    let mut decls = Vec::new();
    for line in wgsl.lines() {
        let code = line.split("//").next().unwrap_or("");
        let Some(rest) = code.trim_start().strip_prefix("@group(0) @binding(") else {
            continue;
        };
        let Some((index, decl)) = rest.split_once(')') else {
            continue;
        };
        let Ok(binding) = index.trim().parse::<u32>() else {
            continue;
        };
        let Some((space, rest)) = decl.split_once("var<").and_then(|(_, k)| k.split_once('>'))
        else {
            continue;
        };
        decls.push((binding, space.replace(' ', ""), rest));
    }
    decls
}

/// A kernel's views, from its declarations.
pub(crate) fn views(wgsl: &str) -> Vec<View> {
    let mut views: Vec<View> = Vec::new();
    for (binding, space, rest) in binding_decls(wgsl) {
        if binding < UNIFORM_VIEW_BASE || views.iter().any(|v| v.binding == binding) {
            continue;
        }
        if binding >= STORAGE_VIEW_BASE {
            let of = (binding - STORAGE_VIEW_BASE) as usize;
            views.push(View {
                binding,
                of,
                bytes: None,
            });
            continue;
        }
        assert_eq!(
            space, "uniform",
            "binding {binding} should be a uniform view"
        );
        // " x_vec4: array<vec4<f32>, 224>;": 224 elements of 16 bytes.
        let len = rest
            .rsplit_once(',')
            .map(|(_, n)| n.trim_end_matches([';', '>', ' ']).trim())
            .and_then(|n| n.parse::<u64>().ok());
        let Some(len) = len else {
            panic!("uniform view '{rest}' is not a fixed-size vec4 array (a bug in creme-core)")
        };
        let of = (binding - UNIFORM_VIEW_BASE) as usize;
        views.push(View {
            binding,
            of,
            bytes: Some(len * 16),
        });
    }
    views
}

/// A kernel's group-0 bindings as its WGSL declares them: storage read-only, storage read-write,
/// a view (see [`UNIFORM_VIEW_BASE`]), or the uniform parameters, bound with a dynamic
/// offset into the parameter arena. Explicit layouts are what allow the dynamic offset.
pub(crate) fn layout_entries(wgsl: &str) -> Vec<wgpu::BindGroupLayoutEntry> {
    let mut entries: Vec<wgpu::BindGroupLayoutEntry> = Vec::new();
    for (binding, space, _) in binding_decls(wgsl) {
        let ty = match space.as_str() {
            "uniform" => wgpu::BufferBindingType::Uniform,
            "storage,read_write" => wgpu::BufferBindingType::Storage { read_only: false },
            _ => wgpu::BufferBindingType::Storage { read_only: true },
        };
        let params = ty == wgpu::BufferBindingType::Uniform && binding < UNIFORM_VIEW_BASE;
        // A buffer may be declared twice under one binding with two element types (x as f32s
        // and as vec4s): one entry.
        if entries.iter().any(|e| e.binding == binding) {
            continue;
        }
        entries.push(wgpu::BindGroupLayoutEntry {
            binding,
            visibility: wgpu::ShaderStages::COMPUTE,
            ty: wgpu::BindingType::Buffer {
                ty,
                has_dynamic_offset: params,
                min_binding_size: None,
            },
            count: None,
        });
    }
    entries
}

#[cfg(test)]
mod tests {
    /// The layout a kernel's declarations give: storage bindings as declared (one entry for two
    /// views of a binding), the parameters with a dynamic offset, and views without one: a uniform
    /// view showing the bytes its array declares from the storage binding it stands for, a
    /// storage view the whole buffer.
    #[test]
    fn bindings_follow_the_declarations() {
        use super::{layout_entries, views, View, STORAGE_VIEW_BASE, UNIFORM_VIEW_BASE};
        let wgsl = format!(
            "@group(0) @binding(0) var<storage, read> x: array<f32>;\n\
             @group(0) @binding(0) var<storage, read> x4: array<vec4<f32>>; // a second view\n\
             @group(0) @binding(1) var<storage, read_write> y: array<f32>;\n\
             @group(0) @binding(2) var<uniform> p: Params;\n\
             // @group(0) @binding(3) var<storage, read> commented_out: array<f32>;\n\
             @group(0) @binding({}) var<uniform> xu: array<vec4<f32>, 224>;\n\
             @group(0) @binding({}) var<storage, read> y2: array<vec2<u32>>;\n",
            UNIFORM_VIEW_BASE,
            STORAGE_VIEW_BASE + 1
        );
        let kinds: Vec<_> = layout_entries(&wgsl)
            .iter()
            .map(|e| match e.ty {
                wgpu::BindingType::Buffer {
                    ty,
                    has_dynamic_offset,
                    ..
                } => (e.binding, ty, has_dynamic_offset),
                _ => panic!("not a buffer"),
            })
            .collect();
        use wgpu::BufferBindingType::{Storage, Uniform};
        assert_eq!(
            kinds,
            [
                (0, Storage { read_only: true }, false),
                (1, Storage { read_only: false }, false),
                (2, Uniform, true),
                (UNIFORM_VIEW_BASE, Uniform, false),
                (STORAGE_VIEW_BASE + 1, Storage { read_only: true }, false),
            ]
        );
        let uniform = View {
            binding: UNIFORM_VIEW_BASE,
            of: 0,
            bytes: Some(224 * 16),
        };
        let storage = View {
            binding: STORAGE_VIEW_BASE + 1,
            of: 1,
            bytes: None,
        };
        assert_eq!(views(&wgsl), [uniform, storage]);
    }
}
