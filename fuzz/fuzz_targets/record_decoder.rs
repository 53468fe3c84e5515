//! Any bytes given to the frame decoder, both as raw frames and as payloads wrapped in a
//! frame with a correct checksum (so the record decoder behind the checksum is reached):
//! it must return a record, "incomplete" or "corrupt", never panic; a record it accepts
//! names only paths inside the volume and encodes to a frame that decodes to the same record.

#![no_main]

use libfuzzer_sys::fuzz_target;
use mirrorfs::log::{Decoded, decode_frame, encode_frame};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode % 2 == 0 {
        rest.to_vec()
    } else {
        let length = (rest.len() as u32).to_le_bytes();
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&length);
        hasher.update(rest);
        let mut framed = length.to_vec();
        framed.extend_from_slice(&hasher.finalize().to_le_bytes());
        framed.extend_from_slice(rest);
        framed
    };
    if let Decoded::Record(record, len) = decode_frame(&bytes) {
        for path in [Some(record.op.path()), record.op.new_path()]
            .into_iter()
            .flatten()
        {
            assert!(!path.as_bytes().starts_with(b"/"));
            assert!(path.components().all(|part| part != b".." && part != b"."));
        }
        // Varints may arrive in a longer form than ours; the meaning must survive.
        let mut again = Vec::new();
        encode_frame(&record, &mut again).expect("a decoded record encodes");
        match decode_frame(&again) {
            Decoded::Record(same, used) => {
                assert_eq!(same, record);
                assert_eq!(used, again.len());
            }
            other => panic!("re-encoded record does not decode: {other:?}"),
        }
        assert!(len <= bytes.len());
    }
});
