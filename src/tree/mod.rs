//! A volume's tree over a directory (the origin, a replica's copy, a snapshot being
//! built), as the log names it: volume paths resolved without following symlinks, and log
//! records applied. write, replication, manifest and verify stand on it side by side.

mod apply;
mod ops;
mod place;
mod walk;

pub use apply::{ApplyError, apply, apply_op};
pub use ops::{WalkStats, mtimes_now, to_ops, to_ops_under};
pub use place::{open_regular, place};
pub use walk::{Visitor, WalkError, walk, xattrs};
