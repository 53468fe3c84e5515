#!/usr/bin/env bash
# Fuzzes the decoders of what mirrorfs reads from disk or the network with cargo fuzz
# (libFuzzer; needs a nightly toolchain and cargo-fuzz, both installed here if missing): the
# record/frame decoder, the segment scan that recovery runs, disk-tier block files, and
# replication messages and connection frames, and the stored-hashes file. Not part of CI, which has no nightly toolchain.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]    (default 60)
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
cd fuzz
for target in record_decoder segment_scan disk_block replication_messages replication_frames stored_hashes; do
  echo "== $target, ${seconds}s"
  cargo +nightly fuzz run "$target" -- -max_total_time="$seconds" 2>&1 | grep -E '^Done|SUMMARY|panicked' || true
done
rm -rf /tmp/mirrorfs-fuzz-*
