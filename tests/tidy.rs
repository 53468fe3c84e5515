//! The walls ARCHITECTURE.md draws, checked on the source: which layer may import which,
//! and where the kernel's and the OS's vocabulary (fuser, errno) may appear. A change that
//! reaches sideways fails here, with the file and the line, before review has to find it.
//! (TigerBeetle's tidy.zig and rust-analyzer's tidy.rs do the same for their rules.)

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Each top-level module of `src/` and the modules it may import (`crate::X`). A module
/// missing here is an error: a new one gets its place in the layers on purpose.
const LAYERS: &[(&str, &[&str])] = &[
    // Leaves: no layer below them.
    ("types", &[]),
    ("durable", &[]),
    ("throttled", &[]),
    ("signals", &[]),
    ("control", &[]),
    ("hooks", &[]),
    ("config", &["types"]),
    ("state", &["types"]),
    // The origin and the log: the two things everything else stands on.
    ("origin", &["types"]),
    ("log", &["types", "durable"]),
    // A volume's tree over a directory.
    ("tree", &["types", "origin", "log"]),
    // Beside one another above the tree; none imports another of them.
    ("cache", &["types", "config", "origin"]),
    (
        "write",
        &["types", "config", "durable", "origin", "log", "tree"],
    ),
    (
        "manifest",
        &["types", "durable", "throttled", "origin", "log", "tree"],
    ),
    // Replication follows the journal (write) and keeps copies with stored hashes.
    (
        "replication",
        &[
            "types",
            "config",
            "durable",
            "throttled",
            "signals",
            "control",
            "hooks",
            "state",
            "origin",
            "log",
            "tree",
            "write",
            "manifest",
        ],
    ),
    // The volume: knows nothing of replication, fuse or verify.
    (
        "vfs",
        &[
            "types", "origin", "log", "tree", "cache", "write", "manifest",
        ],
    ),
    // The top: the kernel boundary, verify, the status document and the commands.
    (
        "fuse",
        &[
            "types", "signals", "origin", "log", "write", "vfs", "metrics",
        ],
    ),
    (
        "verify",
        &[
            "types",
            "config",
            "origin",
            "log",
            "tree",
            "manifest",
            "replication",
            "vfs",
        ],
    ),
    ("status", &["cache", "log", "write", "replication"]),
    ("metrics", &["status", "cache", "replication"]),
    ("cli", &["*"]),
];

/// Where fuser may be used: the kernel boundary.
const FUSER_ONLY_IN: &[&str] = &["fuse"];

/// Where OS error numbers may be named or read (`libc::E...`, `raw_os_error`): the code
/// that makes syscalls, the kernel boundary that turns errors into errnos, and the tree,
/// whose idempotent apply tells "already done" from failure. Elsewhere errors are told
/// apart by `io::ErrorKind`, `origin::gone`, or a variant of the layer's own error enum.
const ERRNO_ONLY_IN: &[&str] = &["origin", "fuse", "tree", "signals"];

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if path.extension().is_some_and(|ext| ext == "rs") {
                found.push(path);
            }
        }
    }
    found.sort();
    found
}

/// The top-level module `path` (under `src/`) belongs to.
fn module_of(src: &Path, path: &Path) -> String {
    let relative = path.strip_prefix(src).unwrap();
    let first = relative.components().next().unwrap().as_os_str();
    first.to_string_lossy().trim_end_matches(".rs").to_string()
}

/// The lines of `text` that are not test code (unit tests come last in a file, after
/// `#[cfg(test)]`) or comments, numbered from 1.
fn code_lines(text: &str) -> Vec<(usize, &str)> {
    text.lines()
        .enumerate()
        .take_while(|(_, line)| line.trim() != "#[cfg(test)]")
        .filter(|(_, line)| !line.trim_start().starts_with("//"))
        .map(|(n, line)| (n + 1, line))
        .collect()
}

/// The names following each `marker` in `line` (`crate::vfs::X` gives "vfs").
fn names_after<'a>(line: &'a str, marker: &str) -> Vec<&'a str> {
    line.match_indices(marker)
        .map(|(at, _)| {
            let rest = &line[at + marker.len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

/// Whether `line` names an OS error number.
fn names_errno(line: &str) -> bool {
    line.contains("raw_os_error")
        || names_after(line, "libc::E").iter().any(|rest| {
            !rest.is_empty()
                && rest
                    .chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit())
        })
}

#[test]
fn layers_import_only_what_is_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let layers: BTreeMap<&str, &[&str]> = LAYERS.iter().copied().collect();
    let mut wrong = Vec::new();
    for path in sources(&src) {
        let module = module_of(&src, &path);
        if module == "lib" || module == "main" {
            continue;
        }
        let Some(allowed) = layers.get(module.as_str()) else {
            wrong.push(format!(
                "{}: module {module} has no place in LAYERS",
                path.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in code_lines(&text) {
            for used in names_after(line, "crate::") {
                if used.is_empty() {
                    wrong.push(format!(
                        "{}:{number}: a grouped crate:: import hides its layers: {}",
                        path.display(),
                        line.trim()
                    ));
                } else if used != module && !allowed.contains(&used) && !allowed.contains(&"*") {
                    wrong.push(format!(
                        "{}:{number}: {module} imports {used}: {}",
                        path.display(),
                        line.trim()
                    ));
                }
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the layers:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_kernel_and_the_os_are_named_only_at_their_boundaries() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for path in sources(&src) {
        let module = module_of(&src, &path);
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in code_lines(&text) {
            let fuser = line.contains("fuser::") || line.contains("use fuser");
            if fuser && !FUSER_ONLY_IN.contains(&module.as_str()) {
                wrong.push(format!(
                    "{}:{number}: fuser outside fuse: {}",
                    path.display(),
                    line.trim()
                ));
            }
            if names_errno(line) && !ERRNO_ONLY_IN.contains(&module.as_str()) {
                wrong.push(format!(
                    "{}:{number}: an errno outside {ERRNO_ONLY_IN:?}: {}",
                    path.display(),
                    line.trim()
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
}

/// Whether `module` (a top-level module of `src/`) has a file module named `inner`.
fn is_file_module(src: &Path, module: &str, inner: &str) -> bool {
    let dir = src.join(module);
    dir.join(format!("{inner}.rs")).is_file() || dir.join(inner).join("mod.rs").is_file()
}

/// The (layer, file module) pairs `line` names a path inside of, for a file in layer
/// `own` (`None`: outside `src/`). `crate::tree::walk(` is the function the layer exports;
/// only a path that goes on (`crate::tree::walk::X`) is inside the file.
fn reaches_into<'a>(src: &Path, line: &'a str, own: Option<&str>) -> Vec<(&'a str, &'a str)> {
    let mut found = Vec::new();
    for marker in ["crate::", "mirrorfs::"] {
        for (at, _) in line.match_indices(marker) {
            let mut parts = line[at + marker.len()..].split("::");
            let (Some(layer), Some(inner)) = (parts.next(), parts.next()) else {
                continue;
            };
            let end = inner
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(inner.len());
            let goes_on = end == inner.len() && parts.next().is_some();
            let inner = &inner[..end];
            if own != Some(layer) && goes_on && is_file_module(src, layer, inner) {
                found.push((layer, inner));
            }
        }
    }
    found
}

#[test]
fn layers_show_only_their_surface() {
    // Each layer's files are private modules; what others may use is the layer's own
    // `pub use` list (redb's tree_store does this), so a sideways import fails to compile.
    // Here: no file module is declared `pub` but the layers themselves, and no path from
    // outside a layer (another layer, a test, a fuzz target, a benchmark) names one of
    // its files, even through a re-export left behind.
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let mut wrong = Vec::new();
    let mut files = sources(&src);
    for outside in ["tests", "benches", "fuzz/fuzz_targets"] {
        files.extend(sources(&root.join(outside)));
    }
    // This file's own examples of what the check refuses are not imports.
    files.retain(|path| !path.ends_with("tests/tidy.rs"));
    for path in files {
        let inside = path.starts_with(&src);
        let module = if inside {
            module_of(&src, &path)
        } else {
            String::new()
        };
        let text = std::fs::read_to_string(&path).unwrap();
        for (number, line) in code_lines(&text) {
            let trimmed = line.trim();
            let declares_pub = trimmed.starts_with("pub mod ") && trimmed.ends_with(';');
            if inside && declares_pub && path != src.join("lib.rs") {
                wrong.push(format!(
                    "{}:{number}: a public file module (export items with pub use): {trimmed}",
                    path.display()
                ));
            }
            let own = inside.then_some(module.as_str());
            for (layer, inner) in reaches_into(&src, line, own) {
                wrong.push(format!(
                    "{}:{number}: reaches into {layer}'s file {inner}: {trimmed}",
                    path.display()
                ));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "past a layer's surface:\n{}",
        wrong.join("\n")
    );
}

/// The sibling files `text` (a file of one layer) imports with `super::`: `use
/// super::a::X` and `use super::{a, b}` give "a" (and "b").
fn siblings_used(text: &str) -> Vec<String> {
    let mut used = Vec::new();
    for (_, line) in code_lines(text) {
        for (at, _) in line.match_indices("super::") {
            let rest = &line[at + "super::".len()..];
            let names = match rest.strip_prefix('{') {
                Some(group) => &group[..group.find('}').unwrap_or(group.len())],
                None => rest,
            };
            for name in names.split(',') {
                let name = name.trim();
                let end = name
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(name.len());
                let name = &name[..end];
                let is_module = name.chars().next().is_some_and(|c| c.is_ascii_lowercase());
                if is_module && !used.iter().any(|seen| seen == name) {
                    used.push(name.to_string());
                }
            }
        }
    }
    used
}

/// A cycle in `edges` (file -> files it imports), as the files along it.
fn cycle(edges: &BTreeMap<String, Vec<String>>) -> Option<Vec<String>> {
    fn visit(
        at: &str,
        edges: &BTreeMap<String, Vec<String>>,
        path: &mut Vec<String>,
        done: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        if let Some(start) = path.iter().position(|seen| seen == at) {
            let mut found = path[start..].to_vec();
            found.push(at.to_string());
            return Some(found);
        }
        if done.iter().any(|seen| seen == at) {
            return None;
        }
        path.push(at.to_string());
        for next in edges.get(at).into_iter().flatten() {
            if let Some(found) = visit(next, edges, path, done) {
                return Some(found);
            }
        }
        path.pop();
        done.push(at.to_string());
        None
    }
    let mut done = Vec::new();
    edges
        .keys()
        .find_map(|start| visit(start, edges, &mut Vec::new(), &mut done))
}

#[test]
fn no_two_files_of_a_layer_import_each_other() {
    // Within a layer, files form a tree too: a file a sibling imports never imports it
    // back, directly or around a loop (replication's node dispatches to its sessions, and
    // no session imports the node). `mod.rs` is the layer's surface, above its files.
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut wrong = Vec::new();
    for entry in std::fs::read_dir(&src).unwrap() {
        let dir = entry.unwrap().path();
        if !dir.is_dir() {
            continue;
        }
        let mut edges = BTreeMap::new();
        for path in sources(&dir) {
            if path.parent() != Some(dir.as_path()) || path.ends_with("mod.rs") {
                continue;
            }
            let name = path.file_stem().unwrap().to_string_lossy().to_string();
            let text = std::fs::read_to_string(&path).unwrap();
            edges.insert(name, siblings_used(&text));
        }
        if let Some(found) = cycle(&edges) {
            wrong.push(format!("{}: {}", dir.display(), found.join(" -> ")));
        }
    }
    assert!(
        wrong.is_empty(),
        "files importing each other:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_checks_see_what_they_look_for() {
    // The rules above pass vacuously if these helpers find nothing: show they find.
    assert!(names_errno(
        "Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}"
    ));
    assert!(names_errno(
        "return Err(io::Error::from_raw_os_error(libc::EISDIR));"
    ));
    assert!(!names_errno("libc::O_EXCL | libc::S_IFMT"));
    assert_eq!(
        names_after("use crate::vfs::{Volume}; crate::log::Op", "crate::"),
        ["vfs", "log"]
    );
    let lines = code_lines("use a;\n// use crate::x;\n#[cfg(test)]\nuse crate::y;\n");
    assert_eq!(lines, [(1, "use a;")]);
    assert_eq!(
        siblings_used("use super::channel::{Channel, X};\nuse super::{inspect, stream};\n"),
        ["channel", "inspect", "stream"]
    );
    let edges: BTreeMap<String, Vec<String>> = [("node", "inspect"), ("inspect", "node")]
        .into_iter()
        .map(|(from, to)| (from.to_string(), vec![to.to_string()]))
        .collect();
    assert_eq!(cycle(&edges).unwrap(), ["inspect", "node", "inspect"]);
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    assert!(is_file_module(&src, "replication", "protocol"));
    assert!(is_file_module(&src, "vfs", "change"));
    assert!(!is_file_module(&src, "verify", "exit"));
    let reaching = "use crate::manifest::store::HashStore; crate::tree::walk(a)";
    assert_eq!(
        reaches_into(&src, reaching, Some("vfs")),
        [("manifest", "store")]
    );
    assert!(reaches_into(&src, reaching, Some("manifest")).is_empty());
    assert_eq!(
        reaches_into(&src, "use mirrorfs::replication::protocol::{ToNode};", None),
        [("replication", "protocol")]
    );
}
