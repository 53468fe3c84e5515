#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this), on a fresh Debian
# machine as root:
#   1. install what is missing (fuse3, pjdfstest, fsx, the test user `tests`);
#   2. cargo fmt --check and cargo clippy -D warnings;
#   3. the external judges, pjdfstest and fsx, on a real mirrorfs mount (scripts/conformance.sh);
#   4. cargo test: unit tests and the real-mount integration tests, last, so that its
#      summary closes the output.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --test
echo "== fmt and clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

echo "== conformance on a mirrorfs mount"
cargo build --release --locked
work=$(mktemp -d /tmp/mirrorfs-ci.XXXXXX)
chmod 755 "$work"
mkdir -m 755 "$work/origin" "$work/mnt"
target/release/mirrorfs mount "$work/origin" "$work/mnt" --state-dir "$work/state" --allow-other \
  2>"$work/daemon.log" &
daemon=$!
stop_daemon() {
  if kill -0 "$daemon" 2>/dev/null; then
    kill -TERM "$daemon"
    wait "$daemon" || true
  fi
  rm -rf "$work"
}
trap stop_daemon EXIT
for _ in $(seq 100); do
  grep -q " $work/mnt .* fuse.mirrorfs " /proc/self/mountinfo && break
  kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon.log" >&2; exit 1; }
  sleep 0.1
done
scripts/conformance.sh "$work/mnt"
stop_daemon
trap - EXIT

echo "== cargo test"
cargo test --locked
