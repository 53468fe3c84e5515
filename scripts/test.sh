#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this), on a fresh Debian
# machine as root:
#   1. install what is missing (fuse3, pjdfstest, fsx, the test user `tests`);
#   2. cargo fmt --check and cargo clippy -D warnings;
#   3. the external judges, pjdfstest, fsx and a real-tree workload, on a real mirrorfs
#      mount with two replicas in each write policy and several cache configurations,
#      both copies compared with the origin after each judge (scripts/judge-copies.sh);
#   4. cargo test: unit tests and the real-mount integration tests, last, so that its
#      summary closes the output.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --test
echo "== fmt and clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

cargo build --release --locked
# The judges run against several configurations, and every run is also a replication
# run (scripts/judge-copies.sh): two replica nodes attached, one streaming from the start
# and one joining by snapshot mid-run, and after each judge both copies are compared with
# the origin (scripts/treecmp.py) and `mirrorfs verify --content` must agree. Both write
# policies face pjdfstest, fsx and a real-tree workload with the default cache (a 256 MiB
# memory tier); write-behind with a short flush interval, so the flusher runs under the
# workload rather than only at unmount. fsx alone then runs with the cache off, with a
# tiny memory and disk tier (blocks evicted, written to disk and read back all the time)
# in each policy, and with FUSE passthrough.
behind='[write]\nmode = "write-behind"\nflush_interval = "200ms"\n'
tiny='[cache]\nmemory_bytes = "1MiB"\nblock_size = "64KiB"\nreadahead_max = "256KiB"\n'
disk='disk_dir = "@DISK@"\ndisk_bytes = "2MiB"\n'
scripts/judge-copies.sh "write-through" '[write]\nmode = "write-through"\n'
scripts/judge-copies.sh "write-behind" "$behind"
# The kernel's writeback cache (on where nothing else writes the origin): its writes come
# late, in large requests, with the times and sizes the kernel kept.
ours='[cache]\nrevalidate_after = "1d"\n'
scripts/judge-copies.sh "write-through, kernel writeback" "$ours"
scripts/judge-copies.sh "write-behind, kernel writeback" "$ours$behind"
export FSX_OPS=30000
scripts/judge-copies.sh "write-through, no cache" '[cache]\nmemory_bytes = 0\n' fsx
scripts/judge-copies.sh "write-through, tiny memory and disk tiers" "$tiny$disk" fsx
scripts/judge-copies.sh "write-behind, tiny memory and disk tiers" "$tiny$disk$behind" fsx
scripts/judge-copies.sh "write-through, passthrough" '[cache]\npassthrough = "auto"\n' fsx
unset FSX_OPS

echo "== cargo test"
cargo test --locked
