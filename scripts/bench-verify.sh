#!/usr/bin/env bash
# verify benchmark, in one run on this machine (primary and one replica node, both trees on
# the same disk):
#   - the tree: BIG_MB of mixed-size files (256 MiB, 64 MiB, 8 MiB and 1 MiB ones, in
#     turn) and SMALL_FILES files of 1-16 KiB in 100 directories, written into the origin
#     before the first mount; the replica gets it as a snapshot;
#   - content check: `mirrorfs verify --content` (the daemon hashes the primary's tree, the
#     node its own, at once; only hashes cross) against b3sum over both trees (`find ...
#     | xargs b3sum`, which hashes large files on every core);
#   - quick check: `mirrorfs verify` (both trees' metadata walked and compared, stored
#     roots included) against `rsync -a --dry-run --delete` over the same two trees (size
#     and mtime, the "quick check" rsync does);
#   - each measured ROUNDS times, interleaved, with warm caches (a first pass of each is
#     not counted), medians reported. Targets: content check at least 0.80 of b3sum's
#     throughput; quick check faster than rsync's dry run (ratio above 1).
#
#   scripts/bench-verify.sh [BIG_MB] [SMALL_FILES] [ROUNDS]    (defaults 2048, 20000, 3;
#                                                              the issue's tree: 10240 100000)
set -euo pipefail
cd "$(dirname "$0")/.."
big_mb=${1:-2048}
small=${2:-20000}
rounds=${3:-3}

scripts/install-deps.sh --bench
cargo build --release --locked --quiet
mirrorfs="$PWD/target/release/mirrorfs"
b3sum=$(command -v b3sum || echo "$HOME/.cargo/bin/b3sum")

work=$(mktemp -d /var/tmp/mirrorfs-bench-verify.XXXXXX)
node_pid=""
mount_pid=""
cleanup() {
  if grep -q " $work/mnt " /proc/self/mountinfo; then
    "$mirrorfs" unmount "$work/mnt" || umount -l "$work/mnt"
  fi
  [ -n "$mount_pid" ] && { kill -TERM "$mount_pid" 2>/dev/null || true; wait "$mount_pid" 2>/dev/null || true; }
  [ -n "$node_pid" ] && { kill -TERM "$node_pid" 2>/dev/null || true; wait "$node_pid" 2>/dev/null || true; }
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

echo "== making the tree: $big_mb MiB in mixed sizes, $small small files"
mkdir -p "$work/origin" "$work/mnt" "$work/replicas"
python3 - "$work/origin" "$big_mb" "$small" <<'EOF'
import os, sys
root, big_mb, small = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
sizes = [256, 64, 8, 1]
left, n = big_mb, 0
os.makedirs(f"{root}/large", exist_ok=True)
while left > 0:
    size = min(sizes[n % len(sizes)], left)
    with open(f"{root}/large/f{n:04}", "wb") as f:
        for _ in range(size):
            f.write(os.urandom(1 << 20))
    left -= size
    n += 1
for d in range(100):
    os.makedirs(f"{root}/small/d{d:02}", exist_ok=True)
for i in range(small):
    with open(f"{root}/small/d{i % 100:02}/s{i:06}", "wb") as f:
        f.write(os.urandom(1024 * (1 + i % 16)))
EOF
"$mirrorfs" keygen > "$work/key"
cat > "$work/volume.toml" <<EOF
[volume]
id = "bench"
source = "$work/origin"
mountpoint = "$work/mnt"
state_dir = "$work/state"
[replication]
acks = "all"
key_file = "$work/key"
[[replication.replicas]]
name = "r0"
address = "127.0.0.1:7391"
EOF
"$mirrorfs" replica serve --listen 127.0.0.1:7391 --dir "$work/replicas" \
  --volume "bench=$work/key" 2>"$work/node.log" &
node_pid=$!
"$mirrorfs" mount --foreground --config "$work/volume.toml" 2>"$work/daemon.log" &
mount_pid=$!
for _ in $(seq 200); do
  grep -q " $work/mnt .* fuse.mirrorfs " /proc/self/mountinfo && break
  sleep 0.1
done
echo "== waiting for the replica's snapshot"
start=$(date +%s.%N)
until "$mirrorfs" status --config "$work/volume.toml" --json | python3 -c '
import json, sys
status = json.load(sys.stdin)
replica = status["replication"]["replicas"][0]
sys.exit(0 if replica["state"] == "in sync" and replica["snapshot"] is None else 1)'; do
  sleep 1
done
echo "snapshot in $(awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.1f", e - s }') s"
replica="$work/replicas/bench/data"

# A first content run fills both sides' stored hashes (the tree was written before the
# mount, so nothing was hashed as it was written) and warms the caches.
"$mirrorfs" verify --config "$work/volume.toml" --content --json > "$work/first.json" || {
  cat "$work/first.json"; exit 1; }

seconds_of() {
  local start
  start=$(date +%s.%N)
  "$@" > /dev/null
  awk -v s="$start" -v e="$(date +%s.%N)" 'BEGIN { printf "%.3f", e - s }'
}
b3sum_both() { find "$work/origin" "$replica" -type f -print0 | xargs -0 "$b3sum" > /dev/null; }
rsync_dry() { rsync -a --dry-run --delete "$work/origin/" "$replica/"; }
verify_quick() {
  "$mirrorfs" verify --config "$work/volume.toml" --json > "$work/quick.json"
}
verify_content() {
  "$mirrorfs" verify --config "$work/volume.toml" --content --json > "$work/content.json"
}
# Warm-up passes of the peers, not counted.
b3sum_both
rsync_dry > /dev/null

declare -a t_b3 t_content t_rsync t_quick
for round in $(seq "$rounds"); do
  t_b3+=("$(seconds_of b3sum_both)")
  t_content+=("$(seconds_of verify_content)")
  t_rsync+=("$(seconds_of rsync_dry)")
  t_quick+=("$(seconds_of verify_quick)")
  echo "round $round: b3sum ${t_b3[-1]} s, verify --content ${t_content[-1]} s, rsync -n ${t_rsync[-1]} s, verify ${t_quick[-1]} s"
done
median() { printf '%s\n' "$@" | sort -g | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }'; }

python3 - "$work" "$(median "${t_b3[@]}")" "$(median "${t_content[@]}")" \
  "$(median "${t_rsync[@]}")" "$(median "${t_quick[@]}")" <<'EOF'
import json, sys
work, b3, content, rsync, quick = sys.argv[1], *map(float, sys.argv[2:])
c = json.load(open(f"{work}/content.json"))
q = json.load(open(f"{work}/quick.json"))
assert c["exit_code"] == 0 and q["exit_code"] == 0, (c, q)
entries = q["figures"]["entries"]
both = 2 * c["figures"]["bytes_hashed"]
mib = 1 << 20
print()
print(f"tree: {entries} entries, {c['figures']['files_hashed']} files, "
      f"{c['figures']['bytes_hashed'] / mib:.0f} MiB per copy (both copies: {both / mib:.0f} MiB)")
print(f"{'':34}{'seconds':>9}{'MiB/s or entries/s':>22}")
print(f"{'b3sum over both trees':34}{b3:9.2f}{both / mib / b3:22.0f}")
print(f"{'mirrorfs verify --content':34}{content:9.2f}{both / mib / content:22.0f}")
print(f"{'rsync -a --dry-run (both trees)':34}{rsync:9.2f}{entries / rsync:22.0f}")
print(f"{'mirrorfs verify (quick)':34}{quick:9.2f}{entries / quick:22.0f}")
print()
content_ratio = b3 / content
quick_ratio = rsync / quick
print(f"content check / b3sum throughput: {content_ratio:.2f} (target >= 0.80: "
      f"{'met' if content_ratio >= 0.80 else 'MISSED'})")
print(f"quick check speed / rsync dry run: {quick_ratio:.2f} (target > 1: "
      f"{'met' if quick_ratio > 1 else 'MISSED'})")
EOF
