//! The layering check: every `crate::…` path in `src/` must point at a
//! module of a lower layer than the one it is written in (or the same
//! module). The allowed order is written once, here, and `src/lib.rs`
//! describes the same list.
//!
//! It reads the sources as text (comments stripped, then every
//! `crate::name` and every name of a `crate::{a, b::c}` group), so a new
//! upward `use` fails here with the file, the edge and both layers named.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Lowest first (layer 1 is the first line). A module may use modules of lower layers only: not its
/// own layer's peers, nothing above it.
const LAYERS: &[&[&str]] = &[
    &["build", "clock", "http", "h1", "text"],
    &["breaker"],
    &["history"],
    &["config"],
    &["tls"],
    &["telemetry", "store"],
    &["runtime"],
    &["fleet"],
    &["proxy", "admin"],
    &["app"],
    &["demo", "watch", "healthcheck"],
];

fn layer(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The top-level module a file under `src/` belongs to (`None` for the
/// crate root and the binary).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// `text` without `//` and `/* */` comments (string literals are left as
/// they are: none of ours spells a `crate::` path).
fn strip_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("//") {
            rest = after.find('\n').map_or("", |i| &after[i..]);
        } else if let Some(after) = rest.strip_prefix("/*") {
            rest = after.find("*/").map_or("", |i| &after[i + 2..]);
        } else {
            let c = rest.chars().next().unwrap_or(' ');
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    out
}

fn ident(s: &str) -> &str {
    let end = s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    &s[..end]
}

/// The top-level modules `text` names through `crate::`.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let text = strip_comments(text);
    let mut found = BTreeSet::new();
    let mut rest = text.as_str();
    while let Some(i) = rest.find("crate::") {
        let preceded_by_ident = rest[..i].chars().next_back().is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
        rest = &rest[i + "crate::".len()..];
        if preceded_by_ident {
            continue;
        }
        if let Some(group) = rest.strip_prefix('{') {
            // The first name of every top-level item of the group.
            let mut depth = 0usize;
            let mut start = true;
            for (j, c) in group.char_indices() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => break,
                    '}' => depth -= 1,
                    ',' if depth == 0 => start = true,
                    c if start && (c.is_ascii_alphabetic() || c == '_') => {
                        found.insert(ident(&group[j..]).to_string());
                        start = false;
                    }
                    _ => {}
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                found.insert(name.to_string());
            }
        }
    }
    found
}

/// Every upward or sideways edge of `module` (whose source is `text`), as
/// a message.
fn violations(module: &str, file: &str, text: &str) -> Vec<String> {
    let Some(own) = layer(module) else {
        return vec![format!("{file}: module `{module}` is in no layer: add it to LAYERS in tests/layers.rs and to src/lib.rs")];
    };
    crate_refs(text)
        .into_iter()
        .filter(|target| target != module && !matches!(target.as_str(), "self" | "super"))
        .filter_map(|target| match layer(&target) {
            Some(l) if l < own => None,
            Some(l) => Some(format!(
                "{file}: `{module}` (layer {}) uses `crate::{target}` (layer {}): a module may only use lower layers",
                own + 1,
                l + 1
            )),
            // A re-export at the crate root (`crate::App`) or a macro.
            None => None,
        })
        .collect()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn every_crate_path_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 20, "found only {} files under {}", files.len(), src.display());
    let mut problems = Vec::new();
    let mut modules = BTreeSet::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else { continue };
        let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let shown = file.strip_prefix(&src).unwrap_or(file).display().to_string();
        problems.extend(violations(&module, &shown, &text));
        modules.insert(module);
    }
    assert!(problems.is_empty(), "layering violations:\n{}", problems.join("\n"));
    // Every layer's module exists (a renamed module must be renamed here).
    for name in LAYERS.iter().flat_map(|l| l.iter()) {
        assert!(modules.contains(*name), "LAYERS names `{name}`, which is not a module under src/");
    }
}

#[test]
fn lib_rs_lists_the_layers_in_the_same_order() {
    let lib = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/lib.rs")).expect("src/lib.rs");
    let mut last = 0;
    for name in LAYERS.iter().flat_map(|l| l.iter()) {
        let needle = format!("`{name}`");
        let at = lib.find(&needle).unwrap_or_else(|| panic!("src/lib.rs does not name {needle}"));
        assert!(at >= last, "src/lib.rs names {needle} out of the layer order");
        last = at;
    }
}

// The checker itself: it must see an inverted import, in each spelling.

#[test]
fn an_upward_import_is_caught() {
    let v = violations("config", "config.rs", "use crate::runtime::Generation;\n");
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("`config` (layer 4) uses `crate::runtime` (layer 7)"), "{v:?}");

    let grouped = "use crate::{\n    clock,\n    admin::AdminState,\n    breaker::{Policy, Status},\n};";
    let v = violations("store", "store.rs", grouped);
    assert_eq!(v.len(), 1, "{v:?}");
    assert!(v[0].contains("crate::admin"), "{v:?}");

    // Peers of one layer do not use each other.
    assert_eq!(violations("proxy", "proxy/forward.rs", "let s = crate::admin::AdminState::new(x);").len(), 1);
    // An expression path counts as much as a `use`.
    assert_eq!(violations("tls", "tls.rs", "let x = crate::app::App::start(c);").len(), 1);
}

#[test]
fn downward_paths_comments_and_lookalikes_pass() {
    let text = "//! see crate::app\n/* crate::admin */\nuse crate::{clock, breaker::Policy};\nuse crate::config::Config;\nlet x = notcrate::app::f();";
    assert!(violations("runtime", "runtime.rs", text).is_empty());
    assert!(violations("app", "app.rs", "use crate::app::thing; use super::x;").is_empty());
    assert_eq!(violations("nowhere", "nowhere.rs", "").len(), 1, "an unlisted module is reported");
}
