//! Any bytes as what a replica node reads from a connection after the handshake: frames
//! are reassembled into messages and decoded until the bytes run out or something is
//! refused, and nothing panics or holds more than a message's limit.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorfs::replication::{MESSAGE_MAX, Receiving, ToNode, decode_message as decode};

fuzz_target!(|data: &[u8]| {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a runtime");
    runtime.block_on(async {
        let mut receiving = Receiving::plaintext(data);
        while let Ok(message) = receiving.receive().await {
            assert!(message.len() <= MESSAGE_MAX);
            let _ = decode::<ToNode>(&message);
        }
    });
});
