//! Typed sites of the forward pass where activations can be captured or overwritten. Tracing,
//! editing and evaluation all run the one forward pass with different hooks.

/// A place in the forward pass. Rows are the chunk's rows (batch-major: b * T + t).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Site {
    /// Residual stream after layer l's attention block (input of its MLP block), [rows, d_model].
    /// For CREME this is `r`: layer l's output is r + W_down · a.
    ResidMid(usize),
    /// SwiGLU activation of layer l, the input of W_down, [rows, d_ff].
    MlpAct(usize),
    /// Residual stream after layer l (the layer's output, before any final norm), [rows, d_model].
    ResidOut(usize),
}

impl Site {
    pub fn layer(self) -> usize {
        match self {
            Site::ResidMid(l) | Site::MlpAct(l) | Site::ResidOut(l) => l,
        }
    }
}

/// Overwrite some rows at a site with rows of `values` (a [n, width] tensor on the model's backend):
/// row `dst_rows[i]` of the site receives row `src_rows[i]` of `values`.
pub struct Patch {
    pub site: Site,
    pub values: crate::backend::Tensor,
    pub src_rows: Vec<u32>,
    pub dst_rows: Vec<u32>,
}

/// What a forward call should do at its sites.
#[derive(Default)]
pub struct Hooks {
    /// Sites whose whole [rows, width] activation is copied out (returned by the forward).
    pub capture: Vec<Site>,
    /// Overwrites applied as the pass reaches each site (before any capture there).
    pub patches: Vec<Patch>,
}

impl Hooks {
    pub fn capture(sites: impl IntoIterator<Item = Site>) -> Hooks {
        Hooks {
            capture: sites.into_iter().collect(),
            patches: Vec::new(),
        }
    }
    pub(crate) fn wants(&self, site: Site) -> bool {
        self.capture.contains(&site) || self.patches.iter().any(|p| p.site == site)
    }
}

/// Activations captured by a forward call, on the model's backend.
#[derive(Default)]
pub struct Captured {
    pub items: Vec<(Site, crate::backend::Tensor, usize, usize)>, // site, buffer, rows, width
}

impl Captured {
    pub fn get(&self, site: Site) -> Option<(&crate::backend::Tensor, usize, usize)> {
        self.items
            .iter()
            .find(|(s, ..)| *s == site)
            .map(|(_, b, r, w)| (b, *r, *w))
    }
}
