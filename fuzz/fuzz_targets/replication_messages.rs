//! Any bytes as a message from a primary or from a replica node: decoding never panics,
//! and a record that decodes names only paths inside the volume.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorfs::replication::{ToNode, ToPrimary, decode_message as decode};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<ToPrimary>(data);
    let ops = match decode::<ToNode>(data) {
        Ok(ToNode::Records { records, .. }) => records.into_iter().map(|r| r.op).collect(),
        Ok(ToNode::SnapshotOps(ops) | ToNode::ResyncOps(ops)) => ops,
        _ => return,
    };
    for op in ops {
        for path in [Some(op.path()), op.new_path()].into_iter().flatten() {
            for component in path.components() {
                assert!(component != b".." && component != b"." && !component.contains(&0));
            }
        }
    }
});
