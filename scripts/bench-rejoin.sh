#!/usr/bin/env bash
# Rejoin benchmark (issue 15), on loopback: a primary P over a volume of SIZE_MB of mixed
# files (256 KiB to 64 MiB) with one replica r1. r1's node stops; P writes DIVERGE_MB more
# (never acknowledged) and is killed with -9; r1 is promoted, and the new primary writes
# DIVERGE_MB of its own; P rejoins as a replica of the new primary (`mirrorfs rejoin`, then
# a node on its directory), which resyncs it: P's extra file goes, the new one comes. Measured, in one run: the resync's bytes sent and time against
#   - a full snapshot of the same volume to an empty replica (bytes: the volume's data;
#     time: until that replica holds the log's end), and
#   - `rsync -a` of the new primary's tree into an empty directory (time).
# Before the divergence, one `verify --content` stores each side's file hashes, as a
# scheduled verify would, so that the resync reads only what no stored root vouches for.
# Targets: at most 5% of the snapshot's bytes, and faster than rsync.
#
#   scripts/bench-rejoin.sh [SIZE_MB] [DIVERGE_MB]    (defaults 2048, 10)
set -euo pipefail
cd "$(dirname "$0")/.."
size_mb=${1:-2048}
diverge_mb=${2:-10}
scripts/install-deps.sh --bench
cargo build --release --locked --quiet
mirrorfs="$PWD/target/release/mirrorfs"

# shellcheck source=scripts/failover-common.sh
. scripts/failover-common.sh rejoin

# start_node NAME PORT: a node keeping volume "vol" in $work/NAME.
start_node() {
  mkdir -p "$work/$1"
  "$mirrorfs" replica serve --listen "127.0.0.1:$2" --dir "$work/$1" --volume "vol=$work/key" \
    2>>"$work/$1.log" &
  pids+=("$!")
  eval "node_$1=$!"
  wait_logged "$work/$1.log" "replica node serving"
}

# wait_acked CONFIG REPLICA: until REPLICA has acknowledged the whole log (10 min at most).
wait_acked() {
  python3 - "$mirrorfs" "$1" "$2" <<'EOF'
import json, subprocess, sys, time
binary, config, name = sys.argv[1:]
deadline = time.time() + 600
while time.time() < deadline:
    out = subprocess.run([binary, "status", "--config", config, "--json"], capture_output=True, text=True)
    if out.returncode == 0:
        status = json.loads(out.stdout)
        end = status["log"]["next_offset"]
        for replica in (status.get("replication") or {}).get("replicas", []):
            if replica["name"] == name and replica["acknowledged"] == end and replica["state"] == "in sync":
                sys.exit(0)
    time.sleep(0.1)
sys.exit(f"{name} did not catch up")
EOF
}

"$mirrorfs" keygen > "$work/key"
mkdir -p "$work/origin" "$work/mnt" "$work/new-mnt" "$work/home"
echo "== a volume of $size_mb MiB of mixed files"
python3 - "$work/origin" "$size_mb" <<'EOF'
import os, sys
root, total = sys.argv[1], int(sys.argv[2]) << 20
sizes = [64 << 20, 8 << 20, 1 << 20, 256 << 10]
written, n = 0, 0
block = os.urandom(1 << 20)
while written < total:
    size = min(sizes[n % len(sizes)], total - written)
    directory = os.path.join(root, f"d{n % 16}")
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, f"f{n}"), "wb") as out:
        left = size
        while left > 0:
            chunk = block[: min(left, len(block))]
            out.write(chunk)
            left -= len(chunk)
    written += size
    n += 1
EOF
start_node r1 7401
printf '[volume]\nid = "vol"\nsource = "%s"\nmountpoint = "%s"\nstate_dir = "%s"\n[replication]\nkey_file = "%s"\nacks = "all"\n[[replication.replicas]]\nname = "r1"\naddress = "127.0.0.1:7401"\n' \
  "$work/origin" "$work/mnt" "$work/state" "$work/key" > "$work/old.toml"
"$mirrorfs" mount --foreground --config "$work/old.toml" 2>"$work/old.log" &
old=$!
pids+=("$old")
mounts+=("$work/mnt")
wait_mounted "$work/mnt" "$work/old.log"
wait_acked "$work/old.toml" r1
echo "== verify --content once, as a schedule would: each side stores its files' hashes"
verify_start=$(now)
"$mirrorfs" verify --config "$work/old.toml" --content >/dev/null
verify_s=$(since "$verify_start")
# The primary's hasher saves what verify stored within 10 s; the node saves at its stop.
sleep 11

echo "== $diverge_mb MiB written on the old primary only, then it dies"
kill -TERM "$node_r1"
wait "$node_r1" 2>/dev/null || true
head -c $((diverge_mb << 20)) /dev/urandom > "$work/mnt/diverged"
kill -KILL "$old"
wait "$old" 2>/dev/null || true
umount -l "$work/mnt"
start_node r1 7401
start_node fresh 7403
"$mirrorfs" promote --dir "$work/r1" --volume vol --write-config "$work/new.toml" \
  --mountpoint "$work/new-mnt" --replica home=127.0.0.1:7402 >/dev/null
"$mirrorfs" mount --foreground --config "$work/new.toml" 2>"$work/new.log" &
new_pid=$!
pids+=("$new_pid")
mounts+=("$work/new-mnt")
wait_mounted "$work/new-mnt" "$work/new.log"
# The new primary goes on too: the rejoin must bring these over.
head -c $((diverge_mb << 20)) /dev/urandom > "$work/new-mnt/after-promotion"
sync -f "$work/new-mnt"

echo "== the old primary restarts, learns it is fenced, and rejoins: resync"
if "$mirrorfs" mount --foreground --config "$work/old.toml" 2>>"$work/old.log"; then
  echo "the old primary was not fenced" >&2
  exit 1
fi
"$mirrorfs" rejoin --config "$work/old.toml" --dir "$work/home" >/dev/null
start=$(now)
start_node home 7402
wait_acked "$work/new.toml" home
resync_s=$(since "$start")
resync_bytes=$(grep "resync complete" "$work/new.log" | head -n 1 | sed 's/.*bytes=\([0-9]*\).*/\1/' || true)
if [ -z "$resync_bytes" ]; then echo "no resync:"; cat "$work/new.log" "$work/home.log"; exit 1; fi
# Files compared by their chunk hashes: those no current stored root vouched for.
resync_hashed=$(grep "resync complete" "$work/new.log" | head -n 1 | sed 's/.*hashed=\([0-9]*\).*/\1/' || true)
volume_files=$(find "$work/r1/vol/data" -type f | wc -l)

echo "== rsync -a of the new primary's tree into an empty directory"
mkdir -p "$work/rsynced"
start=$(now)
rsync -a "$work/r1/vol/data/" "$work/rsynced/"
rsync_s=$(since "$start")

echo "== a snapshot of the same volume to an empty replica"
snapshot_bytes=$(du -sb --apparent-size "$work/r1/vol/data" | cut -f1)
"$mirrorfs" unmount "$work/new-mnt"
wait "$new_pid" 2>/dev/null || true
printf '[[replication.replicas]]\nname = "fresh"\naddress = "127.0.0.1:7403"\n' >> "$work/new.toml"
start=$(now)
"$mirrorfs" mount --foreground --config "$work/new.toml" 2>>"$work/new.log" &
pids+=("$!")
wait_mounted "$work/new-mnt" "$work/new.log"
wait_acked "$work/new.toml" fresh
snapshot_s=$(since "$start")

awk -v rb="$resync_bytes" -v rs="$resync_s" -v sb="$snapshot_bytes" -v ss="$snapshot_s" -v ys="$rsync_s" \
  -v rh="$resync_hashed" -v vf="$volume_files" -v vs="$verify_s" 'BEGIN {
  printf "resync:   %12d bytes in %6.2f s; %s of %d files compared by their hashes (the rest vouched for by stored roots)\n", rb, rs, rh, vf
  printf "snapshot: %12d bytes in %6.2f s\n", sb, ss
  printf "rsync -a:                    %6.2f s\n", ys
  printf "(the verify --content before:  %6.2f s)\n", vs
  printf "resync bytes / snapshot bytes: %.4f (target at most 0.05)\n", rb / sb
  printf "resync time / rsync time:      %.2f (target below 1)\n", rs / ys
}'
