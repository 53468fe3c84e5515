#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it (.ci/run calls this), on a fresh Debian
# machine as root:
#   1. install what is missing (fuse3, pjdfstest, fsx, the test user `tests`);
#   2. cargo fmt --check and cargo clippy -D warnings;
#   3. the external judges, pjdfstest and fsx, on a real mirrorfs mount in each write
#      policy and several cache configurations (scripts/conformance.sh);
#   4. cargo test: unit tests and the real-mount integration tests, last, so that its
#      summary closes the output.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh --test
echo "== fmt and clippy"
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings

cargo build --release --locked
# The judges run against several configurations. Both write policies face pjdfstest and
# fsx with the default cache (a 256 MiB memory tier); write-behind with a short flush
# interval, so the flusher runs under the workload rather than only at unmount. fsx alone
# then runs with the cache off, with a tiny memory and disk tier (blocks evicted, written
# to disk and read back all the time) in each policy, and with FUSE passthrough.
conformance_on() {
  local name=$1 config=$2 work daemon
  echo "== conformance on a mirrorfs mount: $name"
  work=$(mktemp -d /tmp/mirrorfs-ci.XXXXXX)
  chmod 755 "$work"
  mkdir -m 755 "$work/origin" "$work/mnt"
  printf '%b' "${config//@DISK@/$work/disk}" > "$work/mount.toml"
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
behind='[write]\nmode = "write-behind"\nflush_interval = "200ms"\n'
tiny='[cache]\nmemory_bytes = "1MiB"\nblock_size = "64KiB"\nreadahead_max = "256KiB"\n'
disk='disk_dir = "@DISK@"\ndisk_bytes = "2MiB"\n'
conformance_on "write-through" '[write]\nmode = "write-through"\n'
conformance_on "write-behind" "$behind"
export PJDFSTEST=0 FSX_OPS=30000
conformance_on "write-through, no cache" '[cache]\nmemory_bytes = 0\n'
conformance_on "write-through, tiny memory and disk tiers" "$tiny$disk"
conformance_on "write-behind, tiny memory and disk tiers" "$tiny$disk$behind"
conformance_on "write-through, passthrough" '[cache]\npassthrough = "auto"\n'
unset PJDFSTEST FSX_OPS

echo "== cargo test"
cargo test --locked
