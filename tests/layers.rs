//! The source tree is a stack of layers (ARCHITECTURE.md): a module may import from its own
//! layer and the layers below it, never from a layer above, and no files import each other in
//! a circle. This test reads `src/` and fails on the first arrow that points up or closes a
//! cycle, so the house stays this way as features land.
//!
//! What counts as an import: paths starting with `crate::`, `super::`, `self::` (and
//! `vhost_user_scsi::` in `main.rs`), in `use` declarations and anywhere in the code. Comments,
//! string literals and test code (files named `*tests*.rs`, folders named `tests`, and
//! everything after a `#[cfg(test)]` line) are left out: tests may reach across layers to set
//! things up. Paths that name no file (`use lun::X` in a `mod.rs`) are relative to the module
//! itself and stay within it.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
};

/// The layers, lowest first. A new top-level module must be given its place here.
const LAYERS: &[&str] = &[
    // Text in: command line, TOML, the LUN grammar, validation, errors. No I/O.
    "config",
    // One log format, the relay of the worker's lines.
    "logging",
    // Confinement primitives (namespaces, ids, capabilities, Landlock, seccomp roles).
    "sandbox",
    // The pure-Rust iSCSI initiator (a storage transport under `block`).
    "iscsi",
    // The supervisor <-> worker message channel (fd broker).
    "broker",
    // Bytes on disk: BlockBackend, scatter-gather lists, file/null backends, I/O engines.
    "block",
    // SCSI semantics.
    "scsi",
    // virtio-scsi wire formats and the queue loop.
    "virtio",
    // The jailed process.
    "worker",
    // The privileged process.
    "supervisor",
    // The binary's entry point.
    "main",
];

const CRATE: &str = "vhost_user_scsi";

type ModPath = Vec<String>;

fn src_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            if path.file_name().unwrap() != "tests" {
                rust_files(&path, out);
            }
        } else if path.extension().is_some_and(|e| e == "rs")
            && !path.file_stem().unwrap().to_string_lossy().contains("tests")
            // lib.rs only declares the top-level modules.
            && path != src_dir().join("lib.rs")
        {
            out.push(path);
        }
    }
}

/// `scsi/lun.rs` → `[scsi, lun]`; `scsi/mod.rs` → `[scsi]`; `main.rs` → `[main]`.
fn module_path(rel: &Path) -> ModPath {
    let mut parts: ModPath = rel
        .with_extension("")
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    if matches!(parts.last().map(String::as_str), Some("mod" | "lib")) {
        parts.pop();
    }
    parts
}

/// The code without comments, string and char literals, and test code.
fn strip(text: &str) -> String {
    // Everything from the first line that starts with `#[cfg(test)]` on is test code.
    let mut cut = text.len();
    let mut offset = 0;
    for line in text.split_inclusive('\n') {
        if line.trim_start().starts_with("#[cfg(test)]") {
            cut = offset;
            break;
        }
        offset += line.len();
    }
    let text = &text[..cut];
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < bytes.len() {
        let rest = &text[i..];
        if rest.starts_with("//") {
            i += rest.find('\n').unwrap_or(rest.len());
        } else if rest.starts_with("/*") {
            i += rest.find("*/").map_or(rest.len(), |e| e + 2);
        } else if rest.starts_with("r\"") || rest.starts_with("r#\"") {
            let hashes = rest[1..].chars().take_while(|&c| c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = 2 + hashes;
            i += body
                + rest[body..]
                    .find(&close)
                    .map_or(rest.len() - body, |e| e + close.len());
            out.push_str("\"\"");
        } else if bytes[i] == b'"' {
            let mut j = i + 1;
            while j < bytes.len() && bytes[j] != b'"' {
                j += if bytes[j] == b'\\' { 2 } else { 1 };
            }
            i = j + 1;
            out.push_str("\"\"");
        } else if bytes[i] == b'\''
            && (rest[1..].starts_with("\\") || rest.chars().nth(2) == Some('\''))
        {
            // A char literal (not a lifetime): skip it whole.
            let end = rest[2..].find('\'').map_or(rest.len(), |e| e + 3);
            i += end;
            out.push_str("' '");
        } else {
            let c = rest.chars().next().unwrap();
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// Leaf paths of a use tree such as `a::{b, c::{d, e}}`.
fn expand(tree: &str) -> Vec<Vec<String>> {
    let tree = tree.trim();
    let Some(open) = tree.find('{') else {
        let tree = tree.split(" as ").next().unwrap().trim();
        return vec![tree
            .split("::")
            .map(str::trim)
            .filter(|p| !p.is_empty() && *p != "self")
            .map(str::to_owned)
            .collect()];
    };
    let prefix: Vec<String> = tree[..open]
        .split("::")
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect();
    let body = &tree[open + 1..tree.rfind('}').unwrap()];
    let (mut parts, mut depth, mut cur) = (Vec::new(), 0, String::new());
    for c in body.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if c == ',' && depth == 0 {
            parts.push(std::mem::take(&mut cur));
        } else {
            cur.push(c);
        }
    }
    parts.push(cur);
    parts
        .iter()
        .filter(|p| !p.trim().is_empty())
        .flat_map(|p| expand(p))
        .map(|leaf| prefix.iter().cloned().chain(leaf).collect())
        .collect()
}

/// The module a path names, resolved from module `here`; `None` for external crates and paths
/// relative to `here` without `self::`.
fn resolve(segs: &[String], here: &ModPath) -> Option<ModPath> {
    let (head, rest) = segs.split_first()?;
    match head.as_str() {
        "crate" | CRATE => Some(rest.to_vec()),
        "self" => Some(here.iter().chain(rest).cloned().collect()),
        "super" => {
            let mut root = here[..here.len().saturating_sub(1)].to_vec();
            let mut rest = rest;
            while rest.first().is_some_and(|s| s == "super") {
                root.pop();
                rest = &rest[1..];
            }
            Some(root.into_iter().chain(rest.iter().cloned()).collect())
        }
        _ => None,
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every module path `code` (of module `here`) refers to.
fn references(code: &str, here: &ModPath) -> Vec<ModPath> {
    let mut found = Vec::new();
    let mut rest = String::with_capacity(code.len());
    let mut i = 0;
    // `use` declarations, with their trees.
    while let Some(pos) = code[i..].find("use ") {
        let start = i + pos;
        let word_start = start == 0 || !is_ident(code[..start].chars().next_back().unwrap());
        rest.push_str(&code[i..start]);
        if !word_start {
            rest.push_str("use ");
            i = start + 4;
            continue;
        }
        let end = start + code[start..].find(';').unwrap_or(code.len() - start);
        for leaf in expand(&code[start + 4..end]) {
            found.extend(resolve(&leaf, here));
        }
        i = (end + 1).min(code.len());
    }
    rest.push_str(&code[i..]);
    // Paths anywhere else: `crate::a::b`, `super::x`.
    let chars: Vec<char> = rest.chars().collect();
    let mut k = 0;
    while k < chars.len() {
        if !is_ident(chars[k]) || (k > 0 && (is_ident(chars[k - 1]) || chars[k - 1] == ':')) {
            k += 1;
            continue;
        }
        let mut segs = Vec::new();
        let mut j = k;
        loop {
            let s = j;
            while j < chars.len() && is_ident(chars[j]) {
                j += 1;
            }
            segs.push(chars[s..j].iter().collect::<String>());
            if j + 2 < chars.len()
                && chars[j] == ':'
                && chars[j + 1] == ':'
                && is_ident(chars[j + 2])
            {
                j += 2;
            } else {
                break;
            }
        }
        if segs.len() > 1 && matches!(segs[0].as_str(), "crate" | "super" | "self" | CRATE) {
            found.extend(resolve(&segs, here));
        }
        k = j.max(k + 1);
    }
    found
}

struct Graph {
    /// Module path → its file (relative to `src/`).
    files: BTreeMap<ModPath, PathBuf>,
    /// File module → the file modules it imports from.
    edges: BTreeMap<ModPath, BTreeSet<ModPath>>,
}

fn graph() -> Graph {
    let src = src_dir();
    let mut paths = Vec::new();
    rust_files(&src, &mut paths);
    let mut files = BTreeMap::new();
    let mut code = BTreeMap::new();
    for p in &paths {
        let rel = p.strip_prefix(&src).unwrap().to_path_buf();
        let module = module_path(&rel);
        code.insert(module.clone(), strip(&fs::read_to_string(p).unwrap()));
        files.insert(module, rel);
    }
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    for (module, text) in &code {
        for target in references(text, module) {
            // The file that holds the named item: the longest prefix that is a file.
            let file = (0..=target.len())
                .rev()
                .map(|n| target[..n].to_vec())
                .find(|m| files.contains_key(m) && !m.is_empty());
            if let Some(file) = file {
                if &file != module {
                    edges.entry(module.clone()).or_default().insert(file);
                }
            }
        }
    }
    Graph { files, edges }
}

fn layer_of(module: &ModPath) -> Option<usize> {
    LAYERS
        .iter()
        .position(|l| module.first().is_some_and(|m| m == l))
}

fn show(module: &ModPath, g: &Graph) -> String {
    g.files[module].display().to_string()
}

#[test]
fn every_module_has_a_layer() {
    let g = graph();
    let missing: Vec<String> = g
        .files
        .keys()
        .filter(|m| layer_of(m).is_none())
        .map(|m| show(m, &g))
        .collect();
    assert!(
        missing.is_empty(),
        "modules without a layer (add them to LAYERS in tests/layers.rs and ARCHITECTURE.md): \
         {missing:?}"
    );
}

#[test]
fn imports_only_point_down() {
    let g = graph();
    let mut upward = Vec::new();
    for (from, tos) in &g.edges {
        for to in tos {
            if let (Some(a), Some(b)) = (layer_of(from), layer_of(to)) {
                if b > a {
                    upward.push(format!(
                        "{} ({}) imports {} ({})",
                        show(from, &g),
                        LAYERS[a],
                        show(to, &g),
                        LAYERS[b]
                    ));
                }
            }
        }
    }
    assert!(
        upward.is_empty(),
        "imports that point up:\n{}",
        upward.join("\n")
    );
}

/// Strongly connected components with more than one file (Tarjan).
fn cycles(g: &Graph) -> Vec<Vec<ModPath>> {
    struct State<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a ModPath, usize>,
        low: BTreeMap<&'a ModPath, usize>,
        stack: Vec<&'a ModPath>,
        on: BTreeSet<&'a ModPath>,
        out: Vec<Vec<ModPath>>,
    }
    fn visit<'a>(s: &mut State<'a>, v: &'a ModPath) {
        let n = s.index.len();
        s.index.insert(v, n);
        s.low.insert(v, n);
        s.stack.push(v);
        s.on.insert(v);
        let g = s.g;
        for w in g.edges.get(v).into_iter().flatten() {
            if !s.index.contains_key(w) {
                visit(s, w);
                let lw = s.low[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(lw);
            } else if s.on.contains(w) {
                let iw = s.index[w];
                let lv = s.low.get_mut(v).unwrap();
                *lv = (*lv).min(iw);
            }
        }
        if s.low[v] == s.index[v] {
            let mut comp = Vec::new();
            loop {
                let w = s.stack.pop().unwrap();
                s.on.remove(w);
                comp.push(w.clone());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                s.out.push(comp);
            }
        }
    }
    let mut s = State {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in g.files.keys() {
        if !s.index.contains_key(v) {
            visit(&mut s, v);
        }
    }
    s.out
}

#[test]
fn no_import_cycles() {
    let g = graph();
    let found: Vec<String> = cycles(&g)
        .iter()
        .map(|c| {
            c.iter()
                .map(|m| show(m, &g))
                .collect::<Vec<_>>()
                .join(" → ")
        })
        .collect();
    assert!(
        found.is_empty(),
        "files that import each other in a circle:\n{}",
        found.join("\n")
    );
}

/// The checker itself finds what it must: an upward arrow and a cycle in a made-up tree.
#[test]
fn the_checker_sees_upward_arrows_and_cycles() {
    let m = |s: &str| -> ModPath { s.split('/').map(str::to_owned).collect() };
    let here = m("scsi/lun");
    let refs = references(
        &strip(
            "use super::{cdb::Cdb, sense::Sense};\nuse crate::{block::BlockBackend, worker::x};\n\
             // use crate::supervisor::y;\nfn f() { crate::virtio::queue::run(\"crate::iscsi::z\") }\n\
             #[cfg(test)]\nmod tests { use crate::supervisor::open; }\n",
        ),
        &here,
    );
    let refs: BTreeSet<ModPath> = refs.into_iter().collect();
    let want: BTreeSet<ModPath> = [
        "scsi/cdb/Cdb",
        "scsi/sense/Sense",
        "block/BlockBackend",
        "worker/x",
        "virtio/queue/run",
    ]
    .iter()
    .map(|s| m(s))
    .collect();
    assert_eq!(refs, want);
    assert!(layer_of(&m("worker/x")) > layer_of(&here));

    let files: BTreeMap<ModPath, PathBuf> = ["a", "b", "c"]
        .iter()
        .map(|s| (m(s), PathBuf::from(format!("{s}.rs"))))
        .collect();
    let mut edges: BTreeMap<ModPath, BTreeSet<ModPath>> = BTreeMap::new();
    edges.entry(m("a")).or_default().insert(m("b"));
    edges.entry(m("b")).or_default().insert(m("c"));
    assert!(cycles(&Graph {
        files: files.clone(),
        edges: edges.clone()
    })
    .is_empty());
    edges.entry(m("c")).or_default().insert(m("a"));
    assert_eq!(
        cycles(&Graph { files, edges }),
        vec![vec![m("a"), m("b"), m("c")]]
    );
}
