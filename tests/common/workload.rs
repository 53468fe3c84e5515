//! A random file workload and its reference model: what the tree must hold after each
//! operation. Used by the crash tests and the write-policy equivalence test.

use std::collections::BTreeMap;
use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

/// xorshift64*: deterministic per seed, no dependency.
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }

    /// The next number below `bound`.
    pub fn below(&mut self, bound: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % bound
    }
}

const NAMES: [&str; 6] = ["f0", "f1", "f2", "d/g0", "d/g1", "d/g2"];

/// One operation of the workload.
#[derive(Clone, Debug)]
pub enum Step {
    /// Write `len` bytes of `byte` at `offset` (creating the file).
    Write {
        name: &'static str,
        offset: u64,
        len: usize,
        byte: u8,
    },
    /// Append `len` bytes of `byte`.
    Append {
        name: &'static str,
        len: usize,
        byte: u8,
    },
    /// Set the size (creating the file).
    Truncate { name: &'static str, size: u64 },
    /// Rename, replacing any target.
    Rename {
        from: &'static str,
        to: &'static str,
    },
    /// Remove.
    Unlink { name: &'static str },
    /// fsync the file.
    Fsync { name: &'static str },
}

/// `count` random steps for `seed`. Writes reach up to 256 KiB into a file.
pub fn steps(seed: u64, count: usize) -> Vec<Step> {
    let mut rng = Rng::new(seed);
    let pick = |rng: &mut Rng| NAMES[rng.below(NAMES.len() as u64) as usize];
    (0..count)
        .map(|_| match rng.below(20) {
            0..=7 => Step::Write {
                name: pick(&mut rng),
                offset: rng.below(256 << 10),
                len: 1 + rng.below(64 << 10) as usize,
                byte: 1 + rng.below(255) as u8,
            },
            8..=10 => Step::Append {
                name: pick(&mut rng),
                len: 1 + rng.below(32 << 10) as usize,
                byte: 1 + rng.below(255) as u8,
            },
            11..=12 => Step::Truncate {
                name: pick(&mut rng),
                size: rng.below(300 << 10),
            },
            13..=15 => Step::Rename {
                from: pick(&mut rng),
                to: pick(&mut rng),
            },
            16 => Step::Unlink {
                name: pick(&mut rng),
            },
            _ => Step::Fsync {
                name: pick(&mut rng),
            },
        })
        .collect()
}

/// The tree the steps make: file name to contents.
pub type Model = BTreeMap<String, Vec<u8>>;

/// Applies `step` to the model.
pub fn model(tree: &mut Model, step: &Step) {
    match step {
        Step::Write {
            name,
            offset,
            len,
            byte,
        } => {
            let file = tree.entry(name.to_string()).or_default();
            let end = *offset as usize + len;
            if file.len() < end {
                file.resize(end, 0);
            }
            file[*offset as usize..end].fill(*byte);
        }
        Step::Append { name, len, byte } => {
            let file = tree.entry(name.to_string()).or_default();
            file.extend(std::iter::repeat_n(*byte, *len));
        }
        Step::Truncate { name, size } => {
            tree.entry(name.to_string())
                .or_default()
                .resize(*size as usize, 0);
        }
        Step::Rename { from, to } => {
            if from != to
                && let Some(data) = tree.remove(*from)
            {
                tree.insert(to.to_string(), data);
            }
        }
        Step::Unlink { name } => {
            tree.remove(*name);
        }
        Step::Fsync { .. } => {}
    }
}

/// Does `step` in the directory `root` (through a mount or not). Errors mean the
/// filesystem went away (the daemon was killed).
pub fn perform(root: &Path, step: &Step) -> std::io::Result<()> {
    let path = |name: &str| root.join(name);
    // Errors other than "not there" (the mount died) must end the workload.
    let exists = |name: &str| match fs::symlink_metadata(path(name)) {
        Ok(_) => Ok(true),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(error) => Err(error),
    };
    match step {
        Step::Write {
            name,
            offset,
            len,
            byte,
        } => {
            let file = fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(false)
                .open(path(name))?;
            file.write_all_at(&vec![*byte; *len], *offset)
        }
        Step::Append { name, len, byte } => {
            let mut file = fs::OpenOptions::new()
                .append(true)
                .create(true)
                .open(path(name))?;
            file.seek(SeekFrom::End(0))?;
            file.write_all(&vec![*byte; *len])
        }
        Step::Truncate { name, size } => fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(path(name))?
            .set_len(*size),
        Step::Rename { from, to } => {
            if from == to || !exists(from)? {
                return Ok(());
            }
            fs::rename(path(from), path(to))
        }
        Step::Unlink { name } => {
            if !exists(name)? {
                return Ok(());
            }
            fs::remove_file(path(name))
        }
        Step::Fsync { name } => {
            if !exists(name)? {
                return Ok(());
            }
            fs::File::open(path(name))?.sync_all()
        }
    }
}

/// The files under `root` (the `d` directory included), by name, with contents.
pub fn contents(root: &Path) -> Model {
    let mut tree = Model::new();
    for name in NAMES {
        if let Ok(data) = fs::read(root.join(name)) {
            tree.insert(name.to_string(), data);
        }
    }
    tree
}

/// Makes the directories the workload's names need.
pub fn prepare(root: &Path) {
    fs::create_dir_all(root.join("d")).unwrap();
}

/// The first difference between two trees, for a readable failure.
pub fn difference(expected: &Model, actual: &Model) -> Option<String> {
    for name in NAMES {
        match (expected.get(name), actual.get(name)) {
            (None, None) => {}
            (Some(_), None) => return Some(format!("{name} missing")),
            (None, Some(_)) => return Some(format!("{name} should not exist")),
            (Some(a), Some(b)) if a != b => {
                let at = a.iter().zip(b).position(|(x, y)| x != y);
                return Some(format!(
                    "{name}: {} bytes expected, {} found, first difference at {at:?}",
                    a.len(),
                    b.len()
                ));
            }
            _ => {}
        }
    }
    None
}
