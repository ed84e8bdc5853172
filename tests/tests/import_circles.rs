//! Import circles between module files, and imports that go up the layers of creme-core.
//!
//! The graph: one node per module file of each workspace crate (inline modules such as
//! `mod tests { .. }` belong to their file). File A has an edge to file B when A names a path into
//! B: in a `use` declaration (trees expanded; re-exports too), or inline in code
//! (`crate::x::f()`, `super::Y`, `child::Z` for a child module declared there). A path goes to the
//! deepest module it names: `crate::gpu::Gpu` is an edge to gpu/mod.rs. A module that names one it
//! lies inside (`super::Backend` in backend/cpu) makes no edge: a submodule is part of its parent,
//! which it reaches with `super::`. `mod` declarations make no edge. Comments and string literals
//! are skipped. Crates cannot import each other in a circle, so paths into other crates are
//! ignored.
//!
//! The layer check is stricter: it follows re-exports to where an item is defined, so that
//! `crate::model::Embedding` counts as the module that defines `Embedding`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Circles allowed to remain, as node sets of strongly connected components (crate-relative
/// files). Empty: every circle is an error; a change that needs one says so here, with why.
const OWNED_ELSEWHERE: &[&[&str]] = &[];

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Path,
    Str(String),
    Punct(char),
}

/// Rust source as identifiers, `::`, string literals and single punctuation characters; comments,
/// numbers, character literals and lifetimes are dropped.
fn tokenize(src: &str) -> Vec<Tok> {
    let s: Vec<char> = src.chars().collect();
    let mut toks = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i = skip_block_comment(&s, i);
        } else if let Some((end, text)) = string_literal(&s, i) {
            toks.push(Tok::Str(text));
            i = end;
        } else if c == '\'' {
            i = skip_char_or_lifetime(&s, i);
        } else if c.is_ascii_digit() {
            while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
                i += 1;
            }
        } else if c.is_alphabetic() || c == '_' {
            let start = if c == 'r' && next == Some('#') {
                i + 2
            } else {
                i
            };
            i = start;
            while i < s.len() && (s[i].is_alphanumeric() || s[i] == '_') {
                i += 1;
            }
            toks.push(Tok::Ident(s[start..i].iter().collect()));
        } else if c == ':' && next == Some(':') {
            toks.push(Tok::Path);
            i += 2;
        } else {
            toks.push(Tok::Punct(c));
            i += 1;
        }
    }
    toks
}

/// The index after the (nested) block comment that starts at `i`.
fn skip_block_comment(s: &[char], mut i: usize) -> usize {
    let mut depth = 0;
    while i < s.len() {
        if s[i] == '/' && s.get(i + 1) == Some(&'*') {
            depth += 1;
            i += 2;
        } else if s[i] == '*' && s.get(i + 1) == Some(&'/') {
            depth -= 1;
            i += 2;
            if depth == 0 {
                break;
            }
        } else {
            i += 1;
        }
    }
    i
}

/// A string literal starting at `i` ("..", r#".."#, b"..", br"..", c".."): its end and text.
fn string_literal(s: &[char], i: usize) -> Option<(usize, String)> {
    let mut j = i;
    if matches!(s[j], 'b' | 'c') {
        j += 1;
    }
    let raw = s.get(j) == Some(&'r');
    if raw {
        j += 1;
    }
    let hashes = s[j..].iter().take_while(|&&c| c == '#').count();
    if (!raw && hashes > 0) || s.get(j + hashes) != Some(&'"') {
        return None;
    }
    j += hashes + 1;
    let start = j;
    let closes = |k: usize| {
        s[k] == '"'
            && s[k + 1..]
                .iter()
                .take(hashes)
                .filter(|&&c| c == '#')
                .count()
                == hashes
    };
    while j < s.len() && !closes(j) {
        j += if !raw && s[j] == '\\' { 2 } else { 1 };
    }
    let text = s[start..j.min(s.len())].iter().collect();
    Some(((j + 1 + hashes).min(s.len()), text))
}

/// The index after the character literal or lifetime that starts at `i` (a quote).
fn skip_char_or_lifetime(s: &[char], i: usize) -> usize {
    if s.get(i + 1) == Some(&'\\') {
        // Past the escaped character, which may be a quote.
        let mut j = i + 3;
        while j < s.len() && s[j] != '\'' {
            j += 1;
        }
        return j + 1;
    }
    if s.get(i + 2) == Some(&'\'') {
        return i + 3;
    }
    let mut j = i + 1;
    while j < s.len() && (s[j].is_alphanumeric() || s[j] == '_') {
        j += 1;
    }
    j
}

/// A path a file names: the module it is named in, its segments, and whether it is re-exported.
#[derive(Debug)]
struct Named {
    module: Vec<String>,
    path: Vec<String>,
    reexport: bool,
}

/// What one file declares and names.
#[derive(Default, Debug)]
struct FileScan {
    /// Outline modules declared (`mod x;`): their module path and file.
    children: Vec<(Vec<String>, PathBuf)>,
    /// Inline modules (`mod tests { .. }`).
    inline: Vec<Vec<String>>,
    named: Vec<Named>,
}

fn ident(t: Option<&Tok>) -> Option<&str> {
    match t {
        Some(Tok::Ident(s)) => Some(s),
        _ => None,
    }
}

/// Declarations and paths of the file at `file`, the module `module`.
fn scan_file(file: &Path, module: &[String]) -> FileScan {
    let src = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let toks = tokenize(&src);
    let mut scan = FileScan::default();
    // Inline modules open at a brace depth: (name, depth).
    let mut open: Vec<(String, usize)> = Vec::new();
    let mut depth = 0;
    let mut path_attr: Option<String> = None;
    let mut i = 0;
    while i < toks.len() {
        let here: Vec<String> = module
            .iter()
            .cloned()
            .chain(open.iter().map(|(n, _)| n.clone()))
            .collect();
        match &toks[i] {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth -= 1;
                if open.last().is_some_and(|(_, d)| *d == depth) {
                    open.pop();
                }
                path_attr = None;
            }
            Tok::Punct(';') => path_attr = None,
            Tok::Ident(w) if w == "path" && toks.get(i + 1) == Some(&Tok::Punct('=')) => {
                if let Some(Tok::Str(p)) = toks.get(i + 2) {
                    path_attr = Some(p.clone());
                }
            }
            Tok::Ident(w) if w == "mod" && ident(toks.get(i + 1)).is_some() => {
                let name = ident(toks.get(i + 1)).unwrap().to_string();
                let mut child = here.clone();
                child.push(name.clone());
                if toks.get(i + 2) == Some(&Tok::Punct('{')) {
                    scan.inline.push(child);
                    open.push((name, depth));
                } else {
                    let inline: Vec<&str> = open.iter().map(|(n, _)| n.as_str()).collect();
                    let f = module_file(file, &inline, &name, path_attr.take());
                    scan.children.push((child, f));
                }
                i += 2;
                continue;
            }
            Tok::Ident(w) if w == "use" => {
                let reexport = is_public(&toks, i);
                let mut paths = Vec::new();
                i = use_tree(&toks, i + 1, Vec::new(), &mut paths);
                for path in paths {
                    scan.named.push(Named {
                        module: here.clone(),
                        path,
                        reexport,
                    });
                }
                continue;
            }
            Tok::Ident(_)
                if toks.get(i + 1) == Some(&Tok::Path)
                    && toks.get(i.wrapping_sub(1)) != Some(&Tok::Path) =>
            {
                let (path, end) = inline_path(&toks, i);
                scan.named.push(Named {
                    module: here,
                    path,
                    reexport: false,
                });
                i = end;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    scan
}

/// Whether the `use` at `i` is preceded by a visibility (`pub`, `pub(crate)`, `pub(super)`).
fn is_public(toks: &[Tok], i: usize) -> bool {
    let before = |k: usize| i.checked_sub(k).and_then(|j| toks.get(j));
    let is = |t: Option<&Tok>, w: &str| ident(t) == Some(w);
    if is(before(1), "pub") {
        return true;
    }
    before(1) == Some(&Tok::Punct(')')) && (2..8).any(|k| is(before(k), "pub"))
}

/// The file of module `name` declared in `file` (inside its inline modules `inline`).
fn module_file(file: &Path, inline: &[&str], name: &str, path_attr: Option<String>) -> PathBuf {
    let parent = file.parent().unwrap();
    if let Some(p) = path_attr {
        return parent.join(p);
    }
    let stem = file.file_stem().unwrap().to_str().unwrap();
    let mut dir = if matches!(stem, "mod" | "lib" | "main") {
        parent.to_path_buf()
    } else {
        parent.join(stem)
    };
    for m in inline {
        dir = dir.join(m);
    }
    let flat = dir.join(format!("{name}.rs"));
    if flat.exists() {
        flat
    } else {
        dir.join(name).join("mod.rs")
    }
}

/// A use tree from token `i`, under `prefix`: its paths into `out` (a glob or `self` names the
/// prefix); the index after the tree.
fn use_tree(
    toks: &[Tok],
    mut i: usize,
    mut prefix: Vec<String>,
    out: &mut Vec<Vec<String>>,
) -> usize {
    if toks.get(i) == Some(&Tok::Path) {
        i += 1;
    }
    loop {
        match toks.get(i) {
            Some(Tok::Ident(w)) if w == "self" && !prefix.is_empty() => {
                out.push(prefix.clone());
                i += 1;
            }
            Some(Tok::Ident(w)) => {
                prefix.push(w.clone());
                i += 1;
                if toks.get(i) == Some(&Tok::Path) {
                    i += 1;
                    continue;
                }
                out.push(prefix.clone());
            }
            Some(Tok::Punct('*')) => {
                out.push(prefix.clone());
                i += 1;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                while toks.get(i).is_some_and(|t| *t != Tok::Punct('}')) {
                    i = use_tree(toks, i, prefix.clone(), out);
                    if toks.get(i) == Some(&Tok::Punct(',')) {
                        i += 1;
                    }
                }
                i += 1;
            }
            _ => {}
        }
        break;
    }
    // Past an alias (`as x`) to the end of this tree.
    while let Some(t) = toks.get(i) {
        if matches!(t, Tok::Punct(',' | '}' | ';')) {
            break;
        }
        i += 1;
    }
    if toks.get(i) == Some(&Tok::Punct(';')) {
        i += 1;
    }
    i
}

/// The path `a::b::c` whose first segment is token `i`, and the index after it.
fn inline_path(toks: &[Tok], mut i: usize) -> (Vec<String>, usize) {
    let mut path = vec![ident(toks.get(i)).unwrap().to_string()];
    i += 1;
    while toks.get(i) == Some(&Tok::Path) {
        match ident(toks.get(i + 1)) {
            Some(w) => path.push(w.to_string()),
            None => break,
        }
        i += 2;
    }
    (path, i)
}

/// One crate: its modules' files, and what each file names.
struct Crate {
    name: String,
    /// Module path -> file (inline modules map to the file that holds them).
    modules: HashMap<Vec<String>, PathBuf>,
    files: BTreeMap<PathBuf, FileScan>,
}

fn scan_crate(name: &str, root: &Path) -> Crate {
    let mut krate = Crate {
        name: name.to_string(),
        modules: HashMap::new(),
        files: BTreeMap::new(),
    };
    let mut todo = vec![(Vec::new(), root.to_path_buf())];
    while let Some((module, file)) = todo.pop() {
        let scan = scan_file(&file, &module);
        krate.modules.insert(module, file.clone());
        for m in &scan.inline {
            krate.modules.insert(m.clone(), file.clone());
        }
        todo.extend(scan.children.iter().cloned());
        krate.files.insert(file, scan);
    }
    krate
}

impl Crate {
    /// The module a path named in `module` starts from, and its segments after that start; None
    /// for a path into another crate or through an imported name.
    fn start<'p>(
        &self,
        module: &[String],
        path: &'p [String],
    ) -> Option<(Vec<String>, &'p [String])> {
        let mut base = module.to_vec();
        let mut rest = path;
        match path.first()?.as_str() {
            "crate" => return Some((Vec::new(), &path[1..])),
            "self" => rest = &path[1..],
            "super" => {
                while rest.first().is_some_and(|s| s == "super") {
                    base.pop()?;
                    rest = &rest[1..];
                }
            }
            first => {
                let mut child = base.clone();
                child.push(first.to_string());
                if !self.modules.contains_key(&child) {
                    return None;
                }
            }
        }
        Some((base, rest))
    }

    /// The deepest module a path named in `module` goes into.
    fn resolve(&self, module: &[String], path: &[String]) -> Option<Vec<String>> {
        let (mut m, rest) = self.start(module, path)?;
        for seg in rest {
            m.push(seg.clone());
            if !self.modules.contains_key(&m) {
                m.pop();
                break;
            }
        }
        Some(m)
    }

    /// The module that defines what a path named in `module` names, through re-exports.
    fn defining(&self, module: &[String], path: &[String], hops: usize) -> Option<Vec<String>> {
        let (mut m, rest) = self.start(module, path)?;
        for (k, seg) in rest.iter().enumerate() {
            m.push(seg.clone());
            if self.modules.contains_key(&m) {
                continue;
            }
            m.pop();
            let reexport = self.reexports(&m).find(|p| p.last() == Some(seg));
            return match reexport {
                Some(p) if hops < 8 => {
                    let mut through = p.clone();
                    through.extend(rest[k + 1..].iter().cloned());
                    self.defining(&m, &through, hops + 1).or(Some(m))
                }
                _ => Some(m),
            };
        }
        Some(m)
    }

    /// The paths module `m` re-exports.
    fn reexports<'a>(&'a self, m: &'a [String]) -> impl Iterator<Item = &'a Vec<String>> + 'a {
        let file = &self.modules[m];
        self.files[file]
            .named
            .iter()
            .filter(move |n| n.reexport && n.module == m)
            .map(|n| &n.path)
    }

    fn label(&self, file: &Path) -> String {
        let src = self.modules[&Vec::new()].parent().unwrap();
        let rel = file.strip_prefix(src).unwrap_or(file);
        format!("{}/src/{}", self.name, rel.display())
    }

    /// File -> files it imports from (convention at the top of this file).
    fn edges(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (file, scan) in &self.files {
            let from = self.label(file);
            let to = edges.entry(from.clone()).or_default();
            for n in &scan.named {
                let Some(m) = self.resolve(&n.module, &n.path) else {
                    continue;
                };
                // A module inside the one it names is part of it (its `super::` items).
                let inside = n.module.starts_with(&m);
                let target = self.label(&self.modules[&m]);
                if !inside && target != from {
                    to.insert(target);
                }
            }
        }
        edges
    }
}

/// Every workspace crate with a library or binary root under crates/.
fn workspace() -> Vec<Crate> {
    let crates = creme_tests::repo_root().join("crates");
    let mut out = Vec::new();
    let mut dirs: Vec<_> = std::fs::read_dir(&crates)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        for root in ["src/lib.rs", "src/main.rs"] {
            if dir.join(root).exists() {
                out.push(scan_crate(&name, &dir.join(root)));
            }
        }
    }
    out
}

/// Strongly connected components of more than one node (Tarjan's algorithm).
fn circles(edges: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    struct State<'a> {
        edges: &'a BTreeMap<String, BTreeSet<String>>,
        index: HashMap<&'a str, (usize, usize)>,
        stack: Vec<&'a str>,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a str) {
        let i = s.index.len();
        s.index.insert(v, (i, i));
        s.stack.push(v);
        for w in s.edges.get(v).into_iter().flatten() {
            let w = w.as_str();
            if !s.index.contains_key(w) {
                visit(s, w);
                let low = s.index[w].1.min(s.index[v].1);
                s.index.get_mut(v).unwrap().1 = low;
            } else if s.stack.contains(&w) {
                let low = s.index[w].0.min(s.index[v].1);
                s.index.get_mut(v).unwrap().1 = low;
            }
        }
        if s.index[v].0 == s.index[v].1 {
            let at = s.stack.iter().position(|&x| x == v).unwrap();
            let mut comp: Vec<String> = s.stack.drain(at..).map(String::from).collect();
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        edges,
        index: HashMap::new(),
        stack: Vec::new(),
        out: Vec::new(),
    };
    for v in edges.keys() {
        if !s.index.contains_key(v.as_str()) {
            visit(&mut s, v);
        }
    }
    s.out.sort();
    s.out
}

/// A circle through the first node of a component, as "a -> b -> a" (shortest, by BFS).
fn describe(comp: &[String], edges: &BTreeMap<String, BTreeSet<String>>) -> String {
    let start = &comp[0];
    let mut prev: HashMap<&str, &str> = HashMap::new();
    let mut queue = std::collections::VecDeque::from([start.as_str()]);
    while let Some(v) = queue.pop_front() {
        for w in edges.get(v).into_iter().flatten() {
            if w == start {
                let mut path = vec![start.as_str(), v];
                let mut at = v;
                while let Some(&p) = prev.get(at) {
                    path.push(p);
                    at = p;
                }
                path.reverse();
                return path.join(" -> ");
            }
            if comp.contains(w) && !prev.contains_key(w.as_str()) && w != start {
                prev.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    comp.join(", ")
}

#[test]
fn no_import_circles_between_module_files() {
    let mut found = Vec::new();
    for krate in workspace() {
        let edges = krate.edges();
        for comp in circles(&edges) {
            let owned = OWNED_ELSEWHERE
                .iter()
                .any(|o| o.len() == comp.len() && comp.iter().all(|c| o.contains(&c.as_str())));
            if !owned {
                let cycle = describe(&comp, &edges);
                found.push(format!("{} (e.g. {cycle})", comp.join(", ")));
            }
        }
    }
    assert!(
        found.is_empty(),
        "import circles between module files:\n{}",
        found.join("\n")
    );
}

/// The modules of creme-core that `backend/` and `gpu/` may import from (besides themselves):
/// below them, never the model, generation or anything that uses them.
const BELOW: &[(&str, &[&str])] = &[
    ("gpu", &["gpu", "error", "quant", "cpu", "sampling"]),
    (
        "backend",
        &["backend", "gpu", "error", "quant", "cpu", "sampling"],
    ),
];

#[test]
fn backend_and_gpu_import_nothing_above_them() {
    let core = workspace()
        .into_iter()
        .find(|c| c.name == "creme-core")
        .unwrap();
    let mut upward = Vec::new();
    for (file, scan) in &core.files {
        for n in &scan.named {
            let Some(layer) = n.module.first() else {
                continue;
            };
            let Some((_, allowed)) = BELOW.iter().find(|(l, _)| l == layer) else {
                continue;
            };
            let Some(m) = core.defining(&n.module, &n.path, 0) else {
                continue;
            };
            // The crate root holds re-exports only; what stops there is another crate's (wgpu).
            if m.first()
                .is_some_and(|top| !allowed.contains(&top.as_str()))
            {
                upward.push(format!(
                    "{}: {} (defined in {})",
                    core.label(file),
                    n.path.join("::"),
                    m.join("::")
                ));
            }
        }
    }
    assert!(
        upward.is_empty(),
        "backend/ and gpu/ import from above them:\n{}",
        upward.join("\n")
    );
}

/// The scanner itself: use trees, inline paths, re-exports, comments and strings.
#[test]
fn the_scanner_reads_paths_as_rustc_would() {
    let src = "pub use a::{b, c::{self, D}};\nuse super::*; // use not::this;\n\
               fn f<'a>(x: &'a str) -> char { let _ = \"crate::no\"; let _ = r#\"x\"#; crate::m::g(); 'x' }\n\
               mod t { use super::e as f; }\n";
    let dir = std::env::temp_dir().join(format!("creme-import-scan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("lib.rs");
    std::fs::write(&file, src).unwrap();
    let scan = scan_file(&file, &[]);
    std::fs::remove_dir_all(&dir).unwrap();
    let named: Vec<(String, String, bool)> = scan
        .named
        .iter()
        .map(|n| (n.module.join("::"), n.path.join("::"), n.reexport))
        .collect();
    let want = [
        ("", "a::b", true),
        ("", "a::c", true),
        ("", "a::c::D", true),
        ("", "super", false),
        ("", "crate::m::g", false),
        ("t", "super::e", false),
    ];
    let want: Vec<(String, String, bool)> = want
        .iter()
        .map(|(m, p, r)| (m.to_string(), p.to_string(), *r))
        .collect();
    assert_eq!(named, want);
    assert_eq!(scan.inline, [vec!["t".to_string()]]);
}
