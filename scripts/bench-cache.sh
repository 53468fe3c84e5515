#!/usr/bin/env bash
# Read-cache benchmark over a slow origin, in one run:
#   - the slow origin: an ext4 image on a loop device, throttled with the cgroup v1 blkio
#     controller to 20 MB/s and 200 IOPS for the processes put in its cgroup (the reader
#     itself, or the FUSE daemon serving it);
#   - the fast disk: the disk tier, rclone's cache and a copy of the data live on it.
# Targets: the slow origin read directly; mirrorfs with a 64 MiB memory tier and a 1 GiB
# disk tier (1 MiB blocks, scan-resistant admission); the peer, rclone mount
# --vfs-cache-mode full with a 1 GiB cache. Workloads (benches/readcache.rs):
#   1. cold sequential read of a BIG file (default 1 GiB) with 4 KiB reads, caches dropped:
#      MB/s against the origin's 20 MB/s limit (target >= 0.90);
#   2. random O_DIRECT 4 KiB re-reads of a 256 MiB working set (4x the memory tier, within
#      the disk tier), after one pass over it: IOPS against the origin's 200 (target >= 10x);
#   3. a 32 MiB hot set re-read at random while a SCAN file (default 2 GiB) is read once:
#      the hot set's hit ratio during the scan over its ratio alone (target >= 0.90);
#   4. warm sequential read of the 256 MiB working set, cached by the target (the kernel's
#      pages of the mount dropped first, so the target itself serves it), against the same
#      file read from the fast disk's page cache (target >= 0.90). Also shown: the same with
#      the kernel's pages of the mount kept, and mirrorfs with passthrough = "auto".
#
#   scripts/bench-cache.sh            (BIG_MIB=1024 SCAN_MIB=2048 to change the sizes)
set -euo pipefail
cd "$(dirname "$0")/.."
big_mib=${BIG_MIB:-1024}
scan_mib=${SCAN_MIB:-2048}
ws_mib=256
hot_mib=32
limit_bps=$((20 * 1000 * 1000))
limit_iops=200

scripts/install-deps.sh --bench
cargo build --release --locked --quiet
cargo bench --locked --no-run --bench readcache --quiet 2>/dev/null
bench=$(ls -t target/release/deps/readcache-* | grep -v '\.d$' | head -n 1)
blkio=/sys/fs/cgroup/blkio
[ -d "$blkio" ] || { echo "bench-cache: no cgroup v1 blkio controller at $blkio" >&2; exit 1; }

work=$(mktemp -d /var/tmp/mirrorfs-bench-cache.XXXXXX)
group="$blkio/mirrorfs-bench-$$"
loop=""
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for mnt in "$work"/*-mnt "$work/slow"; do
    if grep -q " $mnt " /proc/self/mountinfo; then umount -l "$mnt"; fi
  done
  [ -n "$loop" ] && losetup -d "$loop" 2>/dev/null || true
  [ -d "$group" ] && rmdir "$group" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

truncate -s $(( (big_mib + scan_mib + 1024) * 1024 * 1024 )) "$work/slow.img"
mkfs.ext4 -q -F "$work/slow.img"
loop=$(losetup --find --show "$work/slow.img")
mkdir -p "$work/slow" "$work/fast"
mount "$loop" "$work/slow"
device=$(lsblk -dno MAJ:MIN "$loop" | tr -d ' ')
mkdir "$group"
for rule in read_bps_device write_bps_device; do echo "$device $limit_bps" > "$group/blkio.throttle.$rule"; done
for rule in read_iops_device write_iops_device; do echo "$device $limit_iops" > "$group/blkio.throttle.$rule"; done
throttled=(sh -c 'echo $$ > "$0/cgroup.procs"; exec "$@"' "$group")

# The data, written unthrottled (the throttle applies only to the cgroup's processes).
echo "bench-cache: writing ${big_mib} MiB + ${scan_mib} MiB + ${ws_mib} MiB + ${hot_mib} MiB to the slow origin"
mkdir "$work/slow/data"
for spec in "big:$big_mib" "scan:$scan_mib" "ws:$ws_mib" "hot:$hot_mib"; do
  head -c "$(( ${spec#*:} * 1024 * 1024 ))" /dev/urandom > "$work/slow/data/${spec%%:*}"
done
cp "$work/slow/data/ws" "$work/fast/ws"
sync

wait_mounted() {
  for _ in $(seq 200); do
    grep -q " $1 " /proc/self/mountinfo && return 0
    sleep 0.1
  done
  echo "bench-cache: $1 did not mount" >&2; return 1
}
settle() {
  sync
  echo 3 > /proc/sys/vm/drop_caches
}

declare -A result
# measure NAME THROTTLED ARGS...: runs the workload, keeps its JSON under NAME.
measure() {
  local name=$1 throttle=$2 out
  shift 2
  if [ "$throttle" = yes ]; then
    out=$("${throttled[@]}" "$bench" "$@")
  else
    out=$("$bench" "$@")
  fi
  result[$name]=$out
  echo "bench-cache: $name $out"
}

# The four workloads against a mounted target; THROTTLED says whether the reader itself
# goes in the cgroup (only when it reads the origin directly).
workloads() {
  local target=$1 dir=$2 throttle=$3
  settle
  measure "$target-cold" "$throttle" seq "$dir/big"
  "$bench" seq "$dir/ws" > /dev/null
  measure "$target-rand" "$throttle" rand "$dir/ws" $((ws_mib << 20)) 20000
  [ "$target" = origin ] && return 0
  "$bench" seq "$dir/hot" > /dev/null
  measure "$target-hot" "$throttle" hot "$dir/hot" $((hot_mib << 20)) "$dir/scan" 10
  "$bench" seq "$dir/ws" > /dev/null
  "$bench" drop "$dir/ws" > /dev/null
  measure "$target-warm" no seq "$dir/ws"
  measure "$target-warm-kernel" no seq "$dir/ws"
}

# The slow origin itself: fewer random reads, at 200 per second.
settle
measure origin-cold yes seq "$work/slow/data/big"
measure origin-rand yes rand "$work/slow/data/ws" $((ws_mib << 20)) 1000
"$bench" seq "$work/fast/ws" > /dev/null
measure fast-warm no seq "$work/fast/ws"

mount_mirrorfs() {
  local name=$1 extra=$2
  printf '[cache]\nmemory_bytes = "64MiB"\nblock_size = "1MiB"\nreadahead_max = "16MiB"\ndisk_dir = "%s"\ndisk_bytes = "1GiB"\nrevalidate_after = "1h"\n%b' \
    "$work/fast/$name-disk" "$extra" > "$work/$name.toml"
  mkdir -p "$work/$name-mnt"
  "${throttled[@]}" target/release/mirrorfs mount --foreground "$work/slow/data" "$work/$name-mnt" \
    --state-dir "$work/fast/$name-state" --config "$work/$name.toml" 2>"$work/$name.log" &
  pids+=("$!")
  wait_mounted "$work/$name-mnt"
}
mount_mirrorfs mirrorfs ""
workloads mirrorfs "$work/mirrorfs-mnt" no
target/release/mirrorfs status --state-dir "$work/fast/mirrorfs-state"
# Read-ahead's effect on the origin: few, large reads, and how much of what was read
# ahead the readers used (the test suite asserts only that read-ahead is used, since
# these figures depend on how fast the reader is against the prefetch threads).
target/release/mirrorfs status --state-dir "$work/fast/mirrorfs-state" --json | python3 -c '
import json, sys
cache = json.load(sys.stdin)["cache"]
reads = max(cache["origin_reads"], 1)
average = cache["origin_bytes"] / reads / 1024
print(f"bench-cache: mirrorfs origin reads {reads}, average {average:.0f} KiB")
ahead = max(cache["prefetched_bytes"], 1)
used = 100 * cache["prefetch_used_bytes"] / ahead
print(f"bench-cache: read ahead {ahead / 2**20:.1f} MiB, used {used:.0f}%")'
kill -TERM "${pids[-1]}"; wait "${pids[-1]}"

mount_mirrorfs passthrough 'passthrough = "auto"\n'
"$bench" seq "$work/passthrough-mnt/ws" > /dev/null
measure passthrough-warm no seq "$work/passthrough-mnt/ws"
kill -TERM "${pids[-1]}"; wait "${pids[-1]}"

mkdir -p "$work/rclone-mnt"
RCLONE_CONFIG=/dev/null "${throttled[@]}" rclone mount "$work/slow/data" "$work/rclone-mnt" \
  --vfs-cache-mode full --vfs-cache-max-size 1G --cache-dir "$work/fast/rclone-cache" \
  --read-only 2>"$work/rclone.log" &
pids+=("$!")
wait_mounted "$work/rclone-mnt"
workloads rclone "$work/rclone-mnt" no

python3 - "$big_mib" "$scan_mib" <<PY
import json, sys
r = {}
for name, text in {
$(for key in "${!result[@]}"; do printf '    "%s": r"""%s""",\n' "$key" "${result[$key]}"; done)
}.items():
    r[name] = json.loads(text)
def get(name, key):
    value = r.get(name, {}).get(key)
    return value if value is not None else float("nan")
limit_mb, limit_iops = 20.0, 200.0
print(f"\norigin limited to {limit_mb:.0f} MB/s and {limit_iops:.0f} IOPS; memory tier 64 MiB, disk tier 1 GiB")
print(f"{'':34} {'slow origin':>12} {'mirrorfs':>12} {'rclone full':>12}  target")
def row(label, key, field, scale, fmt, target):
    cells = [get(f"{t}-{key}", field) / scale for t in ("origin", "mirrorfs", "rclone")]
    print(f"{label:34} " + " ".join(f"{c:12{fmt}}" for c in cells) + f"  {target}")
row(f"1. cold seq {sys.argv[1]} MiB, MB/s / 20", "cold", "mb_per_s", limit_mb, ".2f", ">= 0.90")
row("2. random 4K re-reads, IOPS / 200", "rand", "iops", limit_iops, ".1f", ">= 10")
row(f"3. hot hit ratio kept, {sys.argv[2]} MiB scan", "hot", "kept", 1, ".3f", ">= 0.90")
fast = get("fast-warm", "mb_per_s")
row("4. warm seq / fast page cache", "warm", "mb_per_s", fast, ".2f", ">= 0.90")
row("   (kernel pages of the mount kept)", "warm-kernel", "mb_per_s", fast, ".2f", "")
print(f"   mirrorfs passthrough = auto:       {get('passthrough-warm', 'mb_per_s') / fast:.2f}")
print(f"\nabsolute: fast page cache {fast:.0f} MB/s; cold seq MB/s origin {get('origin-cold','mb_per_s'):.1f}, "
      f"mirrorfs {get('mirrorfs-cold','mb_per_s'):.1f}, rclone {get('rclone-cold','mb_per_s'):.1f}; "
      f"random IOPS origin {get('origin-rand','iops'):.0f}, mirrorfs {get('mirrorfs-rand','iops'):.0f}, rclone {get('rclone-rand','iops'):.0f}")
for t in ("mirrorfs", "rclone"):
    h = r.get(f"{t}-hot", {})
    print(f"hot set {t}: alone {h.get('alone_hit_ratio', float('nan')):.3f} of {h.get('alone_reads')}, "
          f"during scan {h.get('during_hit_ratio', float('nan')):.3f} of {h.get('during_reads')}, scan {h.get('scan_mb_per_s')} MB/s")
PY
