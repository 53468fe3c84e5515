#!/usr/bin/env bash
# The lease's cost on steady-state fsync (issue 16), on loopback: one primary with a
# replica node (acks = "all") and a witness, mounted in turn with `[failover] mode =
# "manual"` and `mode = "auto"` (a 5 s lease, renewed about once a second with both voters).
# Each round writes FILES small files, each fsynced, and times them; rounds alternate
# between the two modes so that the machine's noise falls on both. Printed: files per second
# per round, the medians, and their ratio.
# Target: auto at least 0.98 of manual (the lease costs under 2%).
#
#   scripts/bench-lease.sh [FILES] [ROUNDS]    (defaults 2000, 5)
set -euo pipefail
cd "$(dirname "$0")/.."
files=${1:-2000}
rounds=${2:-5}
scripts/install-deps.sh --bench
cargo build --release --locked --quiet
mirrorfs="$PWD/target/release/mirrorfs"

# shellcheck source=scripts/failover-common.sh
. scripts/failover-common.sh lease

"$mirrorfs" keygen > "$work/key"
mkdir -p "$work/node" "$work/witness" "$work/origin" "$work/mnt"
"$mirrorfs" replica serve --listen 127.0.0.1:7501 --dir "$work/node" --volume "vol=$work/key" \
  2>"$work/node.log" &
pids+=("$!")
"$mirrorfs" witness serve --listen 127.0.0.1:7502 --dir "$work/witness" --volume "vol=$work/key" \
  2>"$work/witness.log" &
pids+=("$!")
wait_logged "$work/node.log" "replica node serving"
wait_logged "$work/witness.log" "witness serving"

# config MODE: the mount config with [failover] mode = MODE.
config() {
  printf '[volume]\nid = "vol"\nsource = "%s"\nmountpoint = "%s"\nstate_dir = "%s"\n' \
    "$work/origin" "$work/mnt" "$work/state"
  printf '[replication]\nkey_file = "%s"\nacks = "all"\n' "$work/key"
  printf '[[replication.replicas]]\nname = "r1"\naddress = "127.0.0.1:7501"\n'
  printf '[failover]\nmode = "%s"\nname = "p"\nlease = "5s"\n' "$1"
  printf '[[failover.witnesses]]\nname = "w"\naddress = "127.0.0.1:7502"\n'
}

# round MODE N: mounts in MODE, writes $files fsynced files into round-N/, prints files/s.
round() {
  config "$1" > "$work/$1.toml"
  "$mirrorfs" mount --foreground --config "$work/$1.toml" 2>>"$work/$1.log" &
  local pid=$!
  pids+=("$pid")
  mounts+=("$work/mnt")
  wait_mounted "$work/mnt" "$work/$1.log"
  if [ "$1" = auto ]; then
    # The lease must be held, by both voters' grants and its own: else nothing is measured.
    "$mirrorfs" status --config "$work/auto.toml" --json | python3 -c '
import json, sys
lease = json.load(sys.stdin)["replication"]["lease"]
sys.exit(0 if lease and lease["held_for_ms"] and lease["granted"] == 3 else f"lease not held: {lease}")'
  fi
  python3 - "$work/mnt/round-$2" "$files" <<'EOF'
import os, sys, time
directory, count = sys.argv[1], int(sys.argv[2])
os.makedirs(directory)
data = os.urandom(4096)
start = time.perf_counter()
for n in range(count):
    fd = os.open(os.path.join(directory, f"f{n}"), os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, data)
    os.fsync(fd)
    os.close(fd)
print(f"{count / (time.perf_counter() - start):.1f}")
EOF
  "$mirrorfs" unmount "$work/mnt" >/dev/null
  wait "$pid" 2>/dev/null || true
}

manual=()
auto=()
for n in $(seq "$rounds"); do
  m=$(round manual "m$n")
  a=$(round auto "a$n")
  echo "round $n: manual $m files/s, auto $a files/s"
  manual+=("$m")
  auto+=("$a")
done
median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
m=$(median "${manual[@]}")
a=$(median "${auto[@]}")
awk -v m="$m" -v a="$a" -v f="$files" 'BEGIN {
  printf "median of fsynced %d-file rounds: manual %.1f files/s, auto (lease held) %.1f files/s\n", f, m, a
  printf "auto / manual: %.3f (target at least 0.98)\n", a / m
}'
