#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this), on a fresh Debian
# machine as root:
#   1. install what is missing (fuse3, pjdfstest, fsx, the test user `tests`);
#   2. cargo fmt --check and cargo clippy -D warnings;
#   3. the external judges, pjdfstest and fsx, on a real mirrorfs mount in each write
#      policy (scripts/conformance.sh);
#   4. cargo test: unit tests and the real-mount integration tests, last, so that its
#      summary closes the output.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --test
echo "== fmt and clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

cargo build --release --locked
# Both write policies face the judges: write-behind with a short flush interval, so the
# flusher runs under the workload rather than only at unmount.
conformance_on() {
  local mode=$1 work daemon
  echo "== conformance on a mirrorfs mount, $mode"
  work=$(mktemp -d /tmp/mirrorfs-ci.XXXXXX)
  chmod 755 "$work"
  mkdir -m 755 "$work/origin" "$work/mnt"
  printf '[write]\nmode = "%s"\nflush_interval = "200ms"\n' "$mode" > "$work/mount.toml"
  target/release/mirrorfs mount "$work/origin" "$work/mnt" --state-dir "$work/state" \
    --allow-other --config "$work/mount.toml" 2>"$work/daemon.log" &
  daemon=$!
  # shellcheck disable=SC2064 # expand now: this mount's daemon and directory
  trap "kill -TERM $daemon 2>/dev/null; wait $daemon; rm -rf '$work'" EXIT
  for _ in $(seq 100); do
    grep -q " $work/mnt .* fuse.mirrorfs " /proc/self/mountinfo && break
    kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon.log" >&2; exit 1; }
    sleep 0.1
  done
  scripts/conformance.sh "$work/mnt"
  kill -TERM "$daemon"
  wait "$daemon"
  trap - EXIT
  rm -rf "$work"
}
conformance_on write-through
conformance_on write-behind

echo "== cargo test"
cargo test --locked
