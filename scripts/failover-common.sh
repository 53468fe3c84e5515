# Shared by the failover benchmarks (sourced, after `mirrorfs` is set): a scratch directory
# `work` under /var/tmp named for $1, the daemons (`pids`) and mounts (`mounts`) to stop
# and undo at exit, and timing helpers.
work=$(mktemp -d "/var/tmp/mirrorfs-bench-$1.XXXXXX")
pids=()
mounts=()
cleanup() {
  for point in "${mounts[@]}"; do
    if grep -q " $point " /proc/self/mountinfo; then umount -l "$point" || true; fi
  done
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

now() { date +%s.%N; }
# Seconds since START (a `now`).
since() { awk -v start="$1" -v end="$(now)" 'BEGIN { printf "%.3f", end - start }'; }

# wait_logged LOG TEXT: until LOG says TEXT (a daemon started; 10 s at most, else exit).
wait_logged() {
  for _ in $(seq 200); do
    grep -q "$2" "$1" 2>/dev/null && return 0
    sleep 0.05
  done
  echo "$1 never said: $2" >&2
  cat "$1" >&2
  exit 1
}

# wait_mounted POINT LOG: until POINT is a mirrorfs mount (30 s at most; else LOG, exit).
wait_mounted() {
  for _ in $(seq 3000); do
    grep " $1 " /proc/self/mountinfo | grep -q " fuse.mirrorfs " && return 0
    sleep 0.01
  done
  echo "not mounted: $1" >&2
  cat "$2" >&2
  exit 1
}
