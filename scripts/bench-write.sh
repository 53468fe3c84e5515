#!/usr/bin/env bash
# Write-policy benchmark over a slow origin, in one run:
#   - the slow origin: an ext4 image on a loop device, throttled with the cgroup v1 blkio
#     controller to 20 MB/s and 200 IOPS each way for the processes put in its cgroup
#     (the writer itself, or the FUSE daemon serving it);
#   - the fast disk: the state directories, caches and the image file live on it.
# Workload (benches/writeburst.rs): FILES files of 64 KiB-4 MiB, each written and fsynced.
# Targets: the fast disk directly, the slow origin directly, mirrorfs write-through,
# mirrorfs write-behind (dirty_bytes_max 1 GiB, so the burst fits), and the peer rclone
# mount --vfs-cache-mode full --vfs-write-back 2s (write-behind without a journal: its
# fsync does not wait for anything durable). Prints files/s and MB/s, and the ratios the
# targets are set in: write-behind / write-through and write-behind / fast disk. Also how
# long write-behind's unmount takes to bring the slow origin up to date. The fast disk and
# write-behind, the two a target compares, run ROUNDS times interleaved (write-behind on a
# fresh mount each time) and their medians are reported: this machine is noisy.
#
#   scripts/bench-write.sh [FILES] [ROUNDS]      (defaults 160 files, about 330 MB; 3 rounds)
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-160}
rounds=${2:-3}
limit_bps=$((20 * 1000 * 1000))
limit_iops=200

scripts/install-deps.sh --bench
cargo build --release --locked --quiet
cargo bench --locked --no-run --bench writeburst --quiet 2>/dev/null
burst=$(ls -t target/release/deps/writeburst-* | grep -v '\.d$' | head -n 1)
# shellcheck source=scripts/slow-disk.sh
. scripts/slow-disk.sh

work=$(mktemp -d /var/tmp/mirrorfs-bench-write.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for mnt in "$work"/*-mnt; do
    if grep -q " $mnt " /proc/self/mountinfo; then umount -l "$mnt"; fi
  done
  slow_disk_remove
  rm -rf "$work"
}
trap cleanup EXIT

slow_disk_make "$work" 4G "$limit_bps" "$limit_iops"
mkdir -p "$work/fast"
# Runs a command inside the throttled cgroup (it and every thread or child it starts).
throttled=("${slow_throttled[@]}")

wait_mounted() {
  for _ in $(seq 200); do
    grep -q " $1 " /proc/self/mountinfo && return 0
    sleep 0.1
  done
  echo "bench-write: $1 did not mount" >&2; return 1
}

settle() {
  sync
  echo 3 > /proc/sys/vm/drop_caches
}

declare -A result
run() {
  local name=$1 dir=$2 throttle=$3 out
  settle
  if [ "$throttle" = yes ]; then
    out=$("${throttled[@]}" "$burst" "$dir" "$files")
  else
    out=$("$burst" "$dir" "$files")
  fi
  result[$name]="${result[$name]:-}$out"$'\n'
  echo "bench-write: $name $out"
}

mkdir "$work/slow/direct"
run slow-origin "$work/slow/direct" yes

mirrorfs_run() {
  local mode=$1
  rm -rf "${work:?}/slow/$mode" "$work/$mode-state"
  mkdir -p "$work/slow/$mode" "$work/$mode-mnt"
  printf '[write]\nmode = "%s"\ndirty_bytes_max = "1GiB"\nflush_interval = "2s"\n' "$mode" > "$work/$mode.toml"
  "${throttled[@]}" target/release/mirrorfs mount --foreground "$work/slow/$mode" "$work/$mode-mnt" \
    --state-dir "$work/$mode-state" --config "$work/$mode.toml" 2>"$work/$mode.log" &
  local pid=$!
  pids+=("$pid")
  wait_mounted "$work/$mode-mnt"
  run "$mode" "$work/$mode-mnt" no
  local start
  start=$(date +%s.%N)
  kill -TERM "$pid"
  wait "$pid" || { echo "bench-write: $mode daemon failed:" >&2; cat "$work/$mode.log" >&2; exit 1; }
  echo "bench-write: $mode unmount (origin brought up to date) took $(echo "$(date +%s.%N) - $start" | bc) s"
}
mirrorfs_run write-through
for _ in $(seq "$rounds"); do
  run fast-disk "$work/fast" no
  mirrorfs_run write-behind
done

mkdir -p "$work/slow/rclone" "$work/rclone-mnt"
RCLONE_CONFIG=/dev/null "${throttled[@]}" rclone mount "$work/slow/rclone" "$work/rclone-mnt" \
  --vfs-cache-mode full --vfs-write-back 2s --cache-dir "$work/rclone-cache" 2>"$work/rclone.log" &
pids+=("$!")
wait_mounted "$work/rclone-mnt"
run rclone "$work/rclone-mnt" no

python3 - "$files" "$rounds" <<PY
import json, statistics, sys
def median(lines):
    runs = [json.loads(line) for line in lines.strip().splitlines()]
    if any("error" in run for run in runs):
        return next(run for run in runs if "error" in run)
    return {key: statistics.median(run[key] for run in runs) for key in ("files_per_s", "mb_per_s")}
r = {k: median(v) for k, v in {
    "fast disk directly": '''${result[fast-disk]}''',
    "slow origin directly": '''${result[slow-origin]}''',
    "mirrorfs write-through": '''${result[write-through]}''',
    "mirrorfs write-behind": '''${result[write-behind]}''',
    "rclone vfs full, write-back": '''${result[rclone]}''',
}.items()}
print(f"\n{sys.argv[1]} files of 64 KiB-4 MiB, each fsynced; origin limited to 20 MB/s, 200 IOPS")
print(f"fast disk and write-behind: medians of {sys.argv[2]} interleaved rounds")
print(f"{'target':30} {'files/s':>9} {'MB/s':>8}")
for name, v in r.items():
    if "error" in v:
        print(f"{name:30} failed: {v['error']}")
    else:
        print(f"{name:30} {v['files_per_s']:9.1f} {v['mb_per_s']:8.1f}")
wb, wt, fast = (r[k].get("mb_per_s") for k in ("mirrorfs write-behind", "mirrorfs write-through", "fast disk directly"))
if wb and wt and fast:
    print(f"\nwrite-behind / write-through: {wb / wt:.1f}x (target >= 5x)")
    print(f"write-behind / fast disk:     {wb / fast:.2f} (target >= 0.70)")
PY
