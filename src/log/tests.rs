use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;

use super::*;

fn path(text: &str) -> LogPath {
    LogPath::try_from(text.as_bytes().to_vec()).unwrap()
}

fn write_op(name: &str, offset: u64, len: usize) -> Op {
    Op::Write {
        path: path(name),
        offset,
        data: vec![(offset % 251) as u8; len],
    }
}

fn options(segment_bytes: u64) -> LogOptions {
    LogOptions {
        segment_bytes,
        epoch: 1,
    }
}

fn all(log: &Log) -> Vec<Record> {
    log.view()
        .records(log.view().stats().first_offset)
        .unwrap()
        .collect::<Result<_>>()
        .unwrap()
}

/// The encoding is a format: these bytes must keep meaning this record.
#[test]
fn golden_bytes() {
    let record = Record {
        offset: 300,
        epoch: 1,
        op: Op::Write {
            path: path("d/f"),
            offset: 5,
            data: b"hi".to_vec(),
        },
    };
    let mut bytes = Vec::new();
    let len = frame::encode(&record, &mut bytes).unwrap();
    assert_eq!(len, bytes.len());
    // length 12 | crc32 (= Python's zlib.crc32 of length and payload) | payload
    let golden = "0c000000f757fd86ac02010803642f6605026869";
    assert_eq!(to_hex(&bytes), golden);
    match frame::decode(&bytes) {
        frame::Decoded::Record(decoded, used) => {
            assert_eq!(decoded, record);
            assert_eq!(used, bytes.len());
        }
        other => panic!("{other:?}"),
    }
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn decoding_rejects_paths_outside_the_volume() {
    // A frame whose checksum is right but whose path climbs out: never a record.
    let record = Record {
        offset: 0,
        epoch: 1,
        op: Op::Unlink { path: path("x") },
    };
    let mut bytes = Vec::new();
    frame::encode(&record, &mut bytes).unwrap();
    let payload_at = frame::HEADER_LEN;
    // The path is the last field: length 1, then b'x'. Make it "..".
    let mut payload = bytes[payload_at..bytes.len() - 2].to_vec();
    payload.extend_from_slice(&[2, b'.', b'.']);
    let mut forged = Vec::new();
    forged.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut hasher = crc32fast::Hasher::new();
    hasher.update(&(payload.len() as u32).to_le_bytes());
    hasher.update(&payload);
    forged.extend_from_slice(&hasher.finalize().to_le_bytes());
    forged.extend_from_slice(&payload);
    assert!(matches!(
        frame::decode(&forged),
        frame::Decoded::Corrupt(FrameError::Payload(_))
    ));
}

#[test]
fn appends_read_back_across_segments_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(64 * 1024)).unwrap();
    for i in 0..200 {
        assert_eq!(log.append(&write_op("a", i, 1000)).unwrap(), i);
    }
    let stats = log.view().stats();
    assert_eq!((stats.first_offset, stats.next_offset), (0, 200));
    assert!(stats.segments > 2, "{stats:?}");
    let records = all(&log);
    assert_eq!(records.len(), 200);
    assert!(
        records
            .iter()
            .enumerate()
            .all(|(i, r)| r.offset == i as u64)
    );
    assert_eq!(records[7].op, write_op("a", 7, 1000));
    // From the middle of a segment, found through the index.
    let from: Vec<u64> = log
        .view()
        .records(150)
        .unwrap()
        .map(|r| r.unwrap().offset)
        .collect();
    assert_eq!(from, (150..200).collect::<Vec<_>>());
    drop(log);

    let log = Log::open(dir.path(), options(64 * 1024)).unwrap();
    assert_eq!(log.torn_bytes(), 0);
    assert_eq!(log.append(&write_op("a", 200, 10)).unwrap(), 200);
    assert_eq!(all(&log).len(), 201);
}

#[test]
fn batches_and_single_writes_interleave_in_order_across_segments() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(16 * 1024)).unwrap();
    let mut expected = Vec::new();
    for round in 0..40u64 {
        let batch: Vec<Op> = (0..round % 4)
            .map(|i| write_op("b", round * 10 + i, 900))
            .collect();
        assert_eq!(log.append_all(&batch).unwrap(), expected.len() as u64);
        expected.extend(batch);
        // A write's frame and data go out in one pwritev.
        let data = vec![round as u8; 3000];
        let appended = log.append_write(&path("w"), round, &data).unwrap();
        assert_eq!(appended.offset, expected.len() as u64);
        expected.push(Op::Write {
            path: path("w"),
            offset: round,
            data,
        });
    }
    assert!(log.view().stats().segments > 2);
    let check = |log: &Log| {
        let records = all(log);
        assert_eq!(records.len(), expected.len());
        for (i, (record, op)) in records.iter().zip(&expected).enumerate() {
            assert_eq!((record.offset, &record.op), (i as u64, op));
        }
    };
    check(&log);
    drop(log);
    let log = Log::open(dir.path(), options(16 * 1024)).unwrap();
    assert_eq!(log.torn_bytes(), 0);
    check(&log);
}

#[test]
fn a_torn_tail_is_cut_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    for i in 0..10 {
        log.append(&write_op("t", i, 100)).unwrap();
    }
    let segment = log.view().segments[0].clone();
    drop(log);
    // A crash mid-append: half a frame at the end.
    let file = OpenOptions::new().write(true).open(&segment.path).unwrap();
    let full = segment.len;
    let cut = full - 60;
    file.set_len(cut).unwrap();

    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    let kept = all(&log);
    assert_eq!(kept.len(), 9);
    assert!(log.torn_bytes() > 0 && log.torn_bytes() < 200);
    assert_eq!(log.append(&write_op("t", 9, 1)).unwrap(), 9);
    assert_eq!(all(&log).len(), 10);
}

#[test]
fn zeros_after_the_last_record_are_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    log.append(&write_op("z", 0, 100)).unwrap();
    let segment = log.view().segments[0].clone();
    drop(log);
    let file = OpenOptions::new().write(true).open(&segment.path).unwrap();
    file.write_all_at(&[0; 4096], segment.len).unwrap();

    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    assert_eq!(log.torn_bytes(), 4096);
    assert_eq!(all(&log).len(), 1);
}

#[test]
fn a_flipped_bit_before_the_tail_stops_recovery_and_names_the_place() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    for i in 0..10 {
        log.append(&write_op("f", i, 100)).unwrap();
    }
    let segment = log.view().segments[0].clone();
    drop(log);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&segment.path)
        .unwrap();
    // Inside record 4's payload.
    let frame = (segment.len - segment::HEADER_LEN) / 10;
    let at = segment::HEADER_LEN + 4 * frame + 40;
    let mut byte = [0];
    file.read_exact_at(&mut byte, at).unwrap();
    file.write_all_at(&[byte[0] ^ 0x10], at).unwrap();

    let error = Log::open(dir.path(), options(1 << 20)).unwrap_err();
    match &error {
        LogError::Corrupt {
            path,
            offset,
            position,
            error,
        } => {
            assert_eq!(path, &segment.path);
            assert_eq!(*offset, 4);
            assert_eq!(*position, segment::HEADER_LEN + 4 * frame);
            assert_eq!(*error, ScanError::Frame(FrameError::Checksum));
        }
        other => panic!("{other:?}"),
    }
    let message = error.to_string();
    assert!(message.contains("offset 4"), "{message}");
    // The file is left as it was for the operator.
    assert_eq!(std::fs::metadata(&segment.path).unwrap().len(), segment.len);
}

#[test]
fn a_damaged_sealed_segment_is_refused_even_at_its_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(4096)).unwrap();
    for i in 0..20 {
        log.append(&write_op("s", i, 1000)).unwrap();
    }
    let sealed = log.view().segments[0].clone();
    drop(log);
    std::fs::remove_file(sealed.index_path()).unwrap();
    let file = OpenOptions::new().write(true).open(&sealed.path).unwrap();
    file.set_len(sealed.len - 10).unwrap();
    assert!(matches!(
        Log::open(dir.path(), options(4096)),
        Err(LogError::Corrupt { .. })
    ));
}

#[test]
fn an_offset_gap_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(4096)).unwrap();
    for i in 0..20 {
        log.append(&write_op("g", i, 1000)).unwrap();
    }
    let segments = log.view().segments.clone();
    drop(log);
    // Losing a whole middle segment leaves offsets that do not follow on.
    std::fs::remove_file(&segments[1].path).unwrap();
    let error = Log::open(dir.path(), options(4096)).unwrap_err();
    match error {
        LogError::Gap {
            first, expected, ..
        } => {
            assert_eq!(first, segments[2].first);
            assert_eq!(expected, segments[0].next);
        }
        other => panic!("{other:?}"),
    }

    // A record whose offset skips ahead inside a segment.
    let dir = tempfile::tempdir().unwrap();
    let first = dir.path().join(segment::file_name(0));
    let mut bytes = segment::header(0).to_vec();
    for offset in [0, 1, 3] {
        let record = Record {
            offset,
            epoch: 1,
            op: Op::Unlink { path: path("u") },
        };
        frame::encode(&record, &mut bytes).unwrap();
    }
    std::fs::write(&first, &bytes).unwrap();
    match Log::open(dir.path(), options(4096)).unwrap_err() {
        LogError::Corrupt { offset, error, .. } => {
            assert_eq!(offset, 2);
            assert_eq!(error, ScanError::Gap { found: 3 });
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_missing_or_wrong_index_is_rebuilt_from_the_segment() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(200 * 1024)).unwrap();
    for i in 0..500 {
        log.append(&write_op("i", i, 1000)).unwrap();
    }
    let sealed = log.view().segments[0].clone();
    assert!(sealed.index.len() > 1);
    drop(log);
    std::fs::write(sealed.index_path(), b"nonsense").unwrap();
    let log = Log::open(dir.path(), options(200 * 1024)).unwrap();
    assert_eq!(log.view().segments[0].index, sealed.index);
    assert_eq!(all(&log).len(), 500);
}

#[test]
fn delete_before_keeps_what_a_consumer_still_needs() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(4096)).unwrap();
    for i in 0..20 {
        log.append(&write_op("r", i, 1000)).unwrap();
    }
    let before = log.view().segments.clone();
    // A replica still needs record before[1].first: its segment and later ones stay.
    log.retain_from(before[1].first);
    assert_eq!(log.delete_before(u64::MAX).unwrap(), 1);
    assert!(!before[0].path.exists() && before[1].path.exists());
    log.retain_from(u64::MAX);
    let deleted = log.delete_before(before[2].first + 1).unwrap();
    assert_eq!(deleted, 1);
    assert!(!before[0].path.exists() && !before[0].index_path().exists());
    assert_eq!(log.view().stats().first_offset, before[2].first);
    assert!(matches!(
        log.view().records(0),
        Err(LogError::Deleted { .. })
    ));
    // Never the active segment, whatever the offset.
    log.delete_before(u64::MAX).unwrap();
    assert_eq!(log.view().stats().segments, 1);
    assert_eq!(log.append(&write_op("r", 20, 1)).unwrap(), 20);
    drop(log);
    let log = Log::open(dir.path(), options(4096)).unwrap();
    assert_eq!(log.next_offset(), 21);
}

#[test]
fn retention_by_size_keeps_the_newest_segments_within_the_bound() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(4096)).unwrap();
    for i in 0..20 {
        log.append(&write_op("r", i, 1000)).unwrap();
    }
    let view = log.view();
    let segments = view.segments.clone();
    assert!(segments.len() >= 4, "{segments:?}");
    let active = segments.last().unwrap();
    // Nothing but the active segment fits in one byte; it is kept all the same.
    assert_eq!(view.first_within(1), active.first);
    // Exactly the last two segments' bytes keep those two, one byte less only the last.
    let two = segments[segments.len() - 2..]
        .iter()
        .map(|s| s.len)
        .sum::<u64>();
    assert_eq!(view.first_within(two), segments[segments.len() - 2].first);
    assert_eq!(view.first_within(two - 1), active.first);
    assert_eq!(view.first_within(u64::MAX), 0);
    // Lag in bytes: everything from the start, nothing from the end, a segment and more
    // from a later segment's first record.
    let total: u64 = segments.iter().map(|s| s.len).sum();
    let header = segment::HEADER_LEN;
    assert_eq!(view.bytes_from(0), total - header);
    assert_eq!(view.bytes_from(log.next_offset()), 0);
    let from_last_two = two - header;
    assert_eq!(
        view.bytes_from(segments[segments.len() - 2].first),
        from_last_two
    );
}

#[test]
fn group_commit_makes_every_waiter_durable() {
    let dir = tempfile::tempdir().unwrap();
    let log = Arc::new(Log::open(dir.path(), options(1 << 20)).unwrap());
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                for i in 0..50 {
                    let offset = log.append(&write_op("c", t * 100 + i, 64)).unwrap();
                    log.sync_to(offset).unwrap();
                    assert!(log.durable_offset() > offset);
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
    assert_eq!(log.durable_offset(), 400);
    assert_eq!(all(&log).len(), 400);
}

#[test]
fn inspect_reads_a_log_that_is_still_being_written() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    for i in 0..5 {
        log.append(&write_op("l", i, 10)).unwrap();
    }
    let view = inspect(dir.path()).unwrap();
    log.append(&write_op("l", 5, 10)).unwrap();
    assert_eq!(view.stats().next_offset, 5);
    let offsets: Vec<u64> = view
        .records(2)
        .unwrap()
        .map(|r| r.unwrap().offset)
        .collect();
    assert_eq!(offsets, vec![2, 3, 4]);
}

#[test]
fn a_record_too_large_is_refused_and_leaves_the_log_usable() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    let huge = write_op("h", 0, frame::PAYLOAD_LEN_MAX + 1);
    assert!(matches!(log.append(&huge), Err(LogError::Encode { .. })));
    assert_eq!(log.append(&write_op("h", 0, 1)).unwrap(), 0);
    assert_eq!(all(&log).len(), 1);
}

#[test]
fn a_write_encoded_from_borrowed_bytes_is_the_same_record_and_ends_its_frame() {
    let (path, data) = (path("d/f"), b"borrowed bytes".to_vec());
    let mut owned = Vec::new();
    let op = Op::Write {
        path: path.clone(),
        offset: 77,
        data: data.clone(),
    };
    frame::encode_parts(9, 1, &op, &mut owned).unwrap();
    let mut borrowed = Vec::new();
    let len = frame::encode_write_head(9, 1, &path, 77, &data, &mut borrowed).unwrap();
    borrowed.extend_from_slice(&data);
    assert_eq!(owned, borrowed);
    assert_eq!(len, owned.len());
    // A length of several LEB128 bytes too.
    let big = vec![3u8; 300_000];
    let mut owned = Vec::new();
    let op_big = Op::Write {
        path: path.clone(),
        offset: 1 << 40,
        data: big.clone(),
    };
    frame::encode_parts(1 << 33, 7, &op_big, &mut owned).unwrap();
    let mut head = Vec::new();
    frame::encode_write_head(1 << 33, 7, &path, 1 << 40, &big, &mut head).unwrap();
    head.extend_from_slice(&big);
    assert_eq!(owned, head);

    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    log.append(&Op::Unlink { path: path.clone() }).unwrap();
    let appended = log.append_write(&path, 77, &data).unwrap();
    assert_eq!(appended.offset, 1);
    let mut back = vec![0; data.len()];
    appended
        .file
        .read_exact_at(&mut back, appended.end - data.len() as u64)
        .unwrap();
    assert_eq!(back, data);
    assert_eq!(all(&log)[1].op, op);
}

/// A replica's log: it begins where its snapshot ended and keeps the primary's offsets and
/// epochs; a record out of order is refused and changes nothing.
#[test]
fn a_copied_log_keeps_offsets_and_epochs_and_refuses_gaps() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_at(dir.path(), options(1 << 20), 500).unwrap();
    assert_eq!(log.next_offset(), 500);
    for offset in 500..510u64 {
        let record = Record {
            offset,
            epoch: 3,
            op: write_op("f", offset, 10),
        };
        assert_eq!(log.append_record(&record).unwrap(), offset);
    }
    let gap = Record {
        offset: 512,
        epoch: 3,
        op: write_op("f", 0, 1),
    };
    let error = log.append_record(&gap).unwrap_err();
    assert!(
        matches!(
            error,
            LogError::OutOfOrder {
                offset: 512,
                next: 510
            }
        ),
        "{error}"
    );
    drop(log);
    let log = Log::open_at(dir.path(), options(1 << 20), 0).unwrap();
    let records = all(&log);
    assert_eq!(records.len(), 10);
    assert_eq!((records[0].offset, records[0].epoch), (500, 3));
    assert_eq!(log.next_offset(), 510, "an existing log keeps its offsets");
}

#[test]
fn a_reader_extended_with_newer_views_follows_the_log_without_gaps_or_repeats() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(4096)).unwrap();
    log.append(&write_op("r", 0, 100)).unwrap();
    let mut reader = log.view_from(0).records(0).unwrap();
    let mut seen = Vec::new();
    for round in 0..40u64 {
        for record in reader.by_ref() {
            seen.push(record.unwrap().offset);
        }
        assert_eq!(reader.next_offset(), log.next_offset());
        // Appends that cross into new segments now and then.
        for i in 0..(round % 3 + 1) {
            log.append(&write_op("r", i, 700)).unwrap();
        }
        reader.extend(&log.view_from(reader.next_offset()));
    }
    seen.extend(reader.map(|record| record.unwrap().offset));
    assert!(log.view().stats().segments > 5);
    assert_eq!(seen, (0..log.next_offset()).collect::<Vec<_>>());
}

fn history(log: &Log) -> Vec<(u32, u64)> {
    log.epochs()
        .entries()
        .iter()
        .map(|entry| (entry.epoch, entry.start))
        .collect()
}

#[test]
fn the_epoch_history_follows_the_records_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    assert_eq!(
        history(&log),
        [(1, 0)],
        "a new log begins in its first epoch"
    );
    for offset in 0..5 {
        log.append(&write_op("f", offset, 10)).unwrap();
    }
    // A promotion: the next records are stamped with the new epoch.
    log.begin_epoch(2).unwrap();
    log.append(&write_op("f", 5, 10)).unwrap();
    assert_eq!(all(&log)[5].epoch, 2);
    assert!(matches!(
        log.begin_epoch(1),
        Err(LogError::Epochs(EpochsError::Backwards { .. }))
    ));
    drop(log);
    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    assert_eq!(history(&log), [(1, 0), (2, 5)]);
    assert_eq!(log.epoch(), 2);
    assert_eq!(log.epochs().end_of(1, log.next_offset()), Some((1, 5)));
}

#[test]
fn a_copied_log_learns_epochs_from_its_records_and_refuses_older_ones() {
    let dir = tempfile::tempdir().unwrap();
    let copy = LogOptions {
        segment_bytes: 1 << 20,
        epoch: 0,
    };
    let log = Log::open_at(dir.path(), copy, 10).unwrap();
    assert_eq!(log.epoch(), 0);
    let record = |offset, epoch| Record {
        offset,
        epoch,
        op: write_op("f", offset, 4),
    };
    log.append_record(&record(10, 1)).unwrap();
    log.append_record(&record(11, 1)).unwrap();
    log.append_record(&record(12, 3)).unwrap();
    let error = log.append_record(&record(13, 2)).unwrap_err();
    assert!(
        matches!(
            error,
            LogError::StaleEpoch {
                offset: 13,
                epoch: 2,
                latest: 3
            }
        ),
        "{error}"
    );
    drop(log);
    let log = Log::open_at(dir.path(), copy, 0).unwrap();
    assert_eq!(history(&log), [(1, 10), (3, 12)]);
    assert_eq!(log.next_offset(), 13);
}

#[test]
fn a_log_without_a_history_gets_one_from_its_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    for offset in 0..3 {
        log.append(&write_op("f", offset, 10)).unwrap();
    }
    drop(log);
    // A log from before epoch histories existed.
    std::fs::remove_file(dir.path().join(epochs::FILE_NAME)).unwrap();
    let later = LogOptions {
        segment_bytes: 1 << 20,
        epoch: 7,
    };
    let log = Log::open(dir.path(), later).unwrap();
    assert_eq!(
        history(&log),
        [(1, 0)],
        "the records say epoch 1, not the option"
    );
    assert!(dir.path().join(epochs::FILE_NAME).exists());
}

#[test]
fn an_epoch_whose_start_was_cut_off_begins_at_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    for offset in 0..4 {
        log.append(&write_op("f", offset, 100)).unwrap();
    }
    log.begin_epoch(2).unwrap();
    log.append(&write_op("f", 4, 100)).unwrap();
    let segment = log.view().segments[0].clone();
    drop(log);
    // A crash cut the only record of epoch 2 in half.
    let file = OpenOptions::new().write(true).open(&segment.path).unwrap();
    file.set_len(segment.len - 50).unwrap();
    let log = Log::open(dir.path(), options(1 << 20)).unwrap();
    assert_eq!(log.next_offset(), 4);
    assert_eq!(history(&log), [(1, 0), (2, 4)], "epoch 2 is still accepted");
}

#[test]
fn a_damaged_history_is_refused_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    drop(Log::open(dir.path(), options(1 << 20)).unwrap());
    let path = dir.path().join(epochs::FILE_NAME);
    let text = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, &text[..text.len() - 2]).unwrap();
    let error = Log::open(dir.path(), options(1 << 20))
        .unwrap_err()
        .to_string();
    assert!(
        error.contains(&path.display().to_string()) && error.contains("cut short"),
        "{error}"
    );
}

#[test]
fn truncation_cuts_back_to_an_offset_across_segments_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open(dir.path(), options(4096)).unwrap();
    for offset in 0..20 {
        log.append(&write_op("f", offset, 300)).unwrap();
    }
    log.begin_epoch(2).unwrap();
    for offset in 20..40 {
        log.append(&write_op("f", offset, 300)).unwrap();
    }
    log.sync_to(40).unwrap();
    let segments = log.view().segments.len();
    assert!(segments > 3, "{segments} segments");
    assert_eq!(log.truncate_to(13).unwrap(), 27);
    assert_eq!(log.next_offset(), 13);
    assert!(log.durable_offset() <= 13);
    assert!(log.view().segments.len() < segments);
    let kept = all(&log);
    assert_eq!(kept.len(), 13);
    assert_eq!(kept.last().unwrap().offset, 12);
    // Epoch 2 began past the cut: its records are gone, but it is still the latest.
    assert_eq!(history(&log), [(1, 0), (2, 13)]);
    assert_eq!(log.append(&write_op("g", 0, 10)).unwrap(), 13);
    assert_eq!(all(&log)[13].epoch, 2);
    assert_eq!(log.truncate_to(20).unwrap(), 0, "nothing past the end");
    drop(log);
    let log = Log::open(dir.path(), options(4096)).unwrap();
    assert_eq!(log.next_offset(), 14);
    assert_eq!(all(&log).len(), 14);
    assert!(matches!(log.truncate_to(0), Ok(14)));
    assert_eq!(log.next_offset(), 0);
    log.delete_before(0).unwrap();
}

#[test]
fn truncation_stops_at_the_oldest_kept_record() {
    let dir = tempfile::tempdir().unwrap();
    let log = Log::open_at(dir.path(), options(1 << 20), 100).unwrap();
    log.append(&write_op("f", 0, 10)).unwrap();
    assert!(matches!(
        log.truncate_to(50),
        Err(LogError::Deleted {
            offset: 50,
            first: 100
        })
    ));
    assert_eq!(log.next_offset(), 101);
}
