#!/usr/bin/env bash
# Scale benchmark: FILES small files (default a million) created through a mount with one
# replica (acks = "all", the node on the same machine), and what that costs as the volume
# grows:
#   - the create rate of each 100,000 (the last no slower than 0.8x the first);
#   - the daemon's resident memory per file (its growth over the creates / files);
#   - the bytes the daemon writes per change, measured at CHANGED files rewritten once the
#     tree is in, against the same at a tenth of the files (stored hashes saved per change,
#     not per volume: the two figures should match);
#   - `mirrorfs verify` (quick) of the whole volume, its seconds;
#   - a remount: from `mirrorfs mount` to the first stat served.
# The peer is the same creates straight into a directory of the same filesystem. Everything
# lives on a fresh ext4 filesystem in a sparse image made for the run: ext4 slows its inode
# allocation for minutes after many files are deleted (recently_deleted() scans for inodes
# freed within the last few minutes; after a 200,000-file run here, creates fell from 6,000
# to 1,000 per second for both native and FUSE), so a filesystem of its own keeps one run
# from measuring what the last one left behind.
#
#   scripts/bench-scale.sh [FILES] [CHANGED]      (defaults 1000000, 2000)
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-1000000}
changed=${2:-2000}

scripts/install-deps.sh --bench
cargo build --release --locked --quiet
cargo bench --bench scale --no-run --quiet 2>/dev/null
scale=$(find target/release/deps -maxdepth 1 -type f -executable -name 'scale-*' -printf '%T@ %p\n' | sort -n | tail -1 | cut -d' ' -f2)
mirrorfs="$PWD/target/release/mirrorfs"

base=$(mktemp -d /var/tmp/mirrorfs-bench-scale.XXXXXX)
truncate -s 64G "$base/fs.img"
mkfs.ext4 -q -F -i 8192 "$base/fs.img"
mkdir "$base/fs"
mount -o loop "$base/fs.img" "$base/fs"
work="$base/fs"
node_pid=""
mount_pid=""
stop_mount() {
  if grep -q " $work/mnt " /proc/self/mountinfo; then
    "$mirrorfs" unmount "$work/mnt" || umount -l "$work/mnt"
  fi
  [ -n "$mount_pid" ] && { kill -TERM "$mount_pid" 2>/dev/null || true; wait "$mount_pid" 2>/dev/null || true; }
  mount_pid=""
}
cleanup() {
  stop_mount
  [ -n "$node_pid" ] && { kill -TERM "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; }
  [ -n "${BENCH_KEEP:-}" ] && return
  umount "$base/fs" || umount -l "$base/fs"
  rm -rf "$base"
}
trap cleanup EXIT
mkdir -p "$work/origin" "$work/mnt" "$work/replicas"
"$mirrorfs" keygen > "$work/key"
cat > "$work/volume.toml" <<EOF
[volume]
id = "scale"
source = "$work/origin"
mountpoint = "$work/mnt"
state_dir = "$work/state"
[cache]
revalidate_after = "1d"
[replication]
acks = "all"
key_file = "$work/key"
[[replication.replicas]]
name = "r0"
address = "127.0.0.1:7392"
EOF
"$mirrorfs" replica serve --listen 127.0.0.1:7392 --dir "$work/replicas" \
  --volume "scale=$work/key" 2>"$work/node.log" &
node_pid=$!

now() { date +%s.%N; }
since() { awk -v s="$1" -v e="$(now)" 'BEGIN { printf "%.3f", e - s }'; }
# Mounts, and sets mounted_s to the seconds until the mount served its first stat.
mount_and_wait() {
  local start
  start=$(now)
  "$mirrorfs" mount --foreground --config "$work/volume.toml" >/dev/null 2>>"$work/daemon.log" &
  mount_pid=$!
  until grep -q " $work/mnt .* fuse.mirrorfs " /proc/self/mountinfo && stat "$work/mnt/tree" >/dev/null 2>&1; do
    kill -0 "$mount_pid" 2>/dev/null || { echo "the mount failed:"; tail -20 "$work/daemon.log"; exit 1; }
    sleep 0.01
  done
  mounted_s=$(since "$start")
}
# Waits until both sides' stored hashes are current and the replica holds everything.
settle() {
  until "$mirrorfs" status --config "$work/volume.toml" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
r = s["replication"]["replicas"][0]
sys.exit(0 if s["verify"]["pending_files"] == 0 and r["state"] == "in sync" and r.get("lag", 0) == 0 else 1)'; do
    sleep 1
  done
  # A save happens within 5 s of the last change.
  sleep 6
}

# Rewrites the first bytes of $changed of the first $1 files, waits until the stored
# hashes hold the change and are saved, and prints the bytes the daemon wrote to storage
# meanwhile (the files' blocks, the log's records, the stored hashes).
# Also prints the stored hashes' files before and after (inode, bytes): a snapshot
# rewritten shows as a new inode.
change_and_settle() {
  local before hashes_before
  before=$(awk '/^write_bytes:/ { print $2 }' "/proc/$mount_pid/io")
  hashes_before=$(stored_hashes)
  "$scale" change "$work/mnt/tree" "$1" "$changed" "$mount_pid" > /dev/null
  settle
  echo $(( $(awk '/^write_bytes:/ { print $2 }' "/proc/$mount_pid/io") - before ))
  echo "$hashes_before"
  stored_hashes
}
stored_hashes() {
  local f
  for f in "$work"/state/hashes*; do
    [ -e "$f" ] && printf '%s %s %s  ' "$(basename "$f")" "$(stat -c '%i %s' "$f" | cut -d' ' -f1)" "$(stat -c %s "$f")"
  done
  echo
}
mkdir "$work/origin/tree"
mount_and_wait
tenth=$((files / 10))
echo "== native: creating $files files of 100 bytes in a directory of the same filesystem"
"$scale" create "$work/native" 0 "$files" "$tenth" 0 | tee "$work/native.jsonl"
echo "== creating $files files of 100 bytes through the mount (acks = all, one replica)"
"$scale" create "$work/mnt/tree" 0 "$tenth" "$tenth" "$mount_pid" | tee "$work/create.jsonl"
settle
echo "== $changed changes at $tenth files"
change_and_settle "$tenth" > "$work/change-tenth"
cat "$work/change-tenth"
"$scale" create "$work/mnt/tree" "$tenth" "$files" "$tenth" "$mount_pid" | tee -a "$work/create.jsonl"
settle
echo "== $changed changes at $files files"
change_and_settle "$files" > "$work/change"
cat "$work/change"
ls -l "$work/state" > "$work/state.ls"
rss_full=$(awk '/VmRSS:/ { print $2 }' "/proc/$mount_pid/status")
echo "== verify (quick) of the volume, warm, then with every cache dropped"
start=$(now)
"$mirrorfs" verify --config "$work/volume.toml" --json > "$work/verify.json" || { cat "$work/verify.json"; exit 1; }
verify_s=$(since "$start")
# The kernel lets go of its inodes (as under memory pressure): each FORGET drops the
# daemon's entry for it, and what is left per file is the stored hashes.
sync
echo 3 > /proc/sys/vm/drop_caches
sleep 3
rss_forgotten=$(awk '/VmRSS:/ { print $2 }' "/proc/$mount_pid/status")
start=$(now)
"$mirrorfs" verify --config "$work/volume.toml" --json > "$work/verify.json" || { cat "$work/verify.json"; exit 1; }
verify2_s=$(since "$start")
# The peer for the cold walk: find stats every entry of both trees, one after the other.
sync
echo 3 > /proc/sys/vm/drop_caches
start=$(now)
find "$work/origin" "$work/replicas/scale/data" -printf '%s %T@ %C@ %m\n' > /dev/null
find_cold_s=$(since "$start")
echo "== remount"
stop_mount
sync
mount_and_wait
remount_s=$mounted_s
rss_after_mount=$(awk '/VmRSS:/ { print $2 }' "/proc/$mount_pid/status")
stop_mount

python3 - "$work" "$files" "$changed" "$verify_s" "$verify2_s" "$remount_s" "$rss_after_mount" \
  "$rss_full" "$rss_forgotten" "$find_cold_s" <<'EOF'
import json, sys
work, files, changed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
verify_s, verify2_s, remount_s, rss_mount = float(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6]), int(sys.argv[7])
rss_full, rss_forgotten, find_cold = int(sys.argv[8]), int(sys.argv[9]), float(sys.argv[10])
steps = [json.loads(line) for line in open(f"{work}/create.jsonl")]
native = [json.loads(line) for line in open(f"{work}/native.jsonl")]
change, *hashes_files = open(f"{work}/change").read().splitlines()
change_tenth, *hashes_files_tenth = open(f"{work}/change-tenth").read().splitlines()
change, change_tenth = int(change), int(change_tenth)
verify = json.load(open(f"{work}/verify.json"))
assert verify["exit_code"] == 0, verify
print()
print(f"{'files':>10}{'native/s':>12}{'mirrorfs/s':>12}{'ratio':>8}{'daemon RSS MiB':>16}")
for n, s in zip(native, steps):
    print(f"{s['files']:>10}{n['rate']:>12}{s['rate']:>12}{s['rate'] / n['rate']:>8.2f}{s['rss_kib'] / 1024:>16.0f}")
first, last = steps[0]["rate"], steps[-1]["rate"]
print(f"native: last step / first step {native[-1]['rate'] / native[0]['rate']:.2f}")
per_file = (steps[-1]["rss_kib"] - steps[0]["rss_kib"]) * 1024 / (steps[-1]["files"] - steps[0]["files"])
print()
print(f"last step / first step create rate: {last / first:.2f} (target >= 0.80: {'met' if last / first >= 0.8 else 'MISSED'})")
print(f"daemon memory per file: {per_file:.0f} bytes (RSS growth over the creates)")
print(f"daemon RSS: {rss_full / 1024:.0f} MiB with every inode held by the kernel, "
      f"{rss_forgotten / 1024:.0f} MiB once it let go of them (drop_caches; freed memory the "
      f"allocator keeps still counts), "
      f"{rss_mount / 1024:.0f} MiB just after a remount")
print(f"bytes written by the daemon per changed file: {change_tenth / changed:.0f} at {files // 10} files, "
      f"{change / changed:.0f} at {files} files (each change dirties its file's 4 KiB page)")
print("stored hashes' files (name, inode, bytes) before and after the changes:")
for line in hashes_files_tenth + hashes_files:
    print(f"  {line}")
print(f"verify (quick) of {verify['figures']['entries']} entries: {verify_s:.2f} s warm, {verify2_s:.2f} s cold "
      f"(every cache dropped; target < 10 s: {'met' if max(verify_s, verify2_s) < 10 else 'MISSED'}); "
      f"find over both trees, cold: {find_cold:.2f} s")
print(f"remount: {remount_s:.2f} s to the first stat served (target < 2 s: {'met' if remount_s < 2 else 'MISSED'})")
print()
print(open(f"{work}/state.ls").read())
EOF
