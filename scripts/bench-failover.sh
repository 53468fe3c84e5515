#!/usr/bin/env bash
# Failover benchmark (issue 15), on loopback: a primary with two replica nodes (acks =
# "all", min_insync = 1) writes FILES files of 256 KiB, each fsynced; the primary is killed
# with -9; then, timed, replica r1 is promoted through its running node, the new primary is
# mounted from the config the promotion wrote, and a first file is written and fsynced
# through it (acknowledged by r2, which follows it). Target: under 2 s from `promote` to
# that first acknowledged write. Printed per round and as the median; there is no peer to
# compare with here (the rejoin benchmark, which has rsync and a snapshot as peers, comes
# with the rejoin).
#
#   scripts/bench-failover.sh [FILES] [ROUNDS]    (defaults 200, 5)
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-200}
rounds=${2:-5}
scripts/install-deps.sh
cargo build --release --locked --quiet
mirrorfs="$PWD/target/release/mirrorfs"

# shellcheck source=scripts/failover-common.sh
. scripts/failover-common.sh failover

# start_node DIR PORT VOLUME: a replica node keeping VOLUME.
start_node() {
  "$mirrorfs" replica serve --listen "127.0.0.1:$2" --dir "$1" --volume "$3=$work/key" \
    2>>"$1.log" &
  pids+=("$!")
  wait_logged "$1.log" "replica node serving"
}

"$mirrorfs" keygen > "$work/key"
results=()
for round in $(seq "$rounds"); do
  volume="vol$round"
  base="$work/$round"
  mkdir -p "$base/origin" "$base/mnt" "$base/new-mnt"
  start_node "$base/r1" $((7300 + round * 2)) "$volume"
  start_node "$base/r2" $((7301 + round * 2)) "$volume"
  printf '[volume]\nid = "%s"\nsource = "%s"\nmountpoint = "%s"\nstate_dir = "%s"\n[replication]\nkey_file = "%s"\nacks = "all"\nmin_insync = 1\n[[replication.replicas]]\nname = "r1"\naddress = "127.0.0.1:%d"\n[[replication.replicas]]\nname = "r2"\naddress = "127.0.0.1:%d"\n' \
    "$volume" "$base/origin" "$base/mnt" "$base/state" "$work/key" $((7300 + round * 2)) $((7301 + round * 2)) \
    > "$base/old.toml"
  "$mirrorfs" mount --config "$base/old.toml" 2>"$base/old.log" &
  old=$!
  pids+=("$old")
  mounts+=("$base/mnt")
  wait_mounted "$base/mnt" "$base/old.log"
  for n in $(seq "$files"); do
    head -c 262144 /dev/urandom > "$base/mnt/f$n"
  done
  sync -f "$base/mnt"
  python3 - "$base/mnt" "$files" <<'EOF'
import os, sys
root, count = sys.argv[1], int(sys.argv[2])
for n in range(1, count + 1):
    fd = os.open(os.path.join(root, f"f{n}"), os.O_RDONLY)
    os.fsync(fd)
    os.close(fd)
EOF
  kill -KILL "$old"
  wait "$old" 2>/dev/null || true
  umount -l "$base/mnt"

  start=$(now)
  "$mirrorfs" promote --dir "$base/r1" --volume "$volume" --write-config "$base/new.toml" \
    --mountpoint "$base/new-mnt" > "$base/promote.out"
  promoted=$(since "$start")
  "$mirrorfs" mount --config "$base/new.toml" 2>"$base/new.log" &
  pids+=("$!")
  mounts+=("$base/new-mnt")
  wait_mounted "$base/new-mnt" "$base/new.log"
  mounted=$(since "$start")
  python3 - "$base/new-mnt/first" <<'EOF'
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
os.write(fd, b"the first write after the failover\n")
os.fsync(fd)
os.close(fd)
EOF
  acknowledged=$(since "$start")
  test -f "$base/r2/$volume/data/first"
  echo "round $round: promote ${promoted} s, mounted ${mounted} s, first write acknowledged ${acknowledged} s"
  results+=("$acknowledged")
  "$mirrorfs" unmount "$base/new-mnt"
done
median=$(printf '%s\n' "${results[@]}" | sort -n | awk '{ a[NR] = $1 } END { print a[int((NR + 1) / 2)] }')
echo "promote to the first write acknowledged with acks = \"all\": median ${median} s of ${rounds} rounds (target: under 2 s); ratio to the target: $(awk -v m="$median" 'BEGIN { printf "%.2f", m / 2 }')"
