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
        &["types", "signals", "origin", "log", "write", "vfs"],
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
}
