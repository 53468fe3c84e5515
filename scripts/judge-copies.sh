#!/usr/bin/env bash
# Every conformance run is also a replication run: the judges run on a mirrorfs mount --foreground with
# two replica nodes attached, and after each judge both copies must equal the origin.
#
#   scripts/judge-copies.sh NAME CONFIG [JUDGE...]
#
# NAME labels the run; CONFIG is extra mount config (TOML, with \n escapes; @DISK@ stands
# for a disk-tier directory of the run's own); JUDGEs are pjdfstest, fsx and realtree
# (default: all three). Replica r0 streams from the start; r1 starts a few seconds into
# the first judge and is brought up by a snapshot, read while the judge writes. After each
# judge:
#   1. the copies are waited for (both acknowledge the whole log; write-behind has put
#      every byte in the origin);
#   2. scripts/treecmp.py compares the origin with each copy: names, kinds, modes, owners,
#      sizes, content, xattrs and ACLs, symlink targets, device numbers, hard links, file,
#      directory and symlink mtimes;
#   3. `mirrorfs verify --content` must agree: exit 0.
# Exits non-zero at the first judge or comparison that fails, printing what differs.
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -ge 2 ] || { echo "usage: scripts/judge-copies.sh NAME CONFIG [pjdfstest|fsx|realtree]..." >&2; exit 2; }
name=$1
config=$2
shift 2
judges=("$@")
[ ${#judges[@]} -gt 0 ] || judges=(pjdfstest fsx realtree)
bin=target/release/mirrorfs
[ -x "$bin" ] || cargo build --release --locked --quiet

work=$(mktemp -d /tmp/mirrorfs-judge.XXXXXX)
chmod 755 "$work"
mkdir -m 755 "$work/origin" "$work/mnt"
pids=()
cleanup() {
  if grep -q " $work/mnt .* fuse.mirrorfs " /proc/self/mountinfo; then
    [ ${#pids[@]} -gt 0 ] && kill -TERM "${pids[0]}" 2>/dev/null || true
  fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if grep -q " $work/mnt " /proc/self/mountinfo; then umount -l "$work/mnt"; fi
  rm -rf "$work"
}
trap cleanup EXIT

echo "== judge-copies: $name (${judges[*]}), two replicas"
"$bin" keygen > "$work/volume.key"
chmod 600 "$work/volume.key"
# Two free ports, asked of the kernel (the nodes' addresses go in the mount config first).
read -r -a ports < <(python3 -c '
import socket
held = [socket.socket() for _ in range(2)]
for s in held: s.bind(("127.0.0.1", 0))
print(*(s.getsockname()[1] for s in held))')
# start_node N [DELAY]: node N, serving at once, or after DELAY seconds (the subshell
# becomes the node, so its pid is the node's).
start_node() {
  local n=$1 delay=${2:-0}
  (sleep "$delay"; exec "$bin" replica serve --listen "127.0.0.1:${ports[$n]}" \
    --dir "$work/node$n" --volume "judged=$work/volume.key" 2>>"$work/node$n.log") &
  pids+=("$!")
  [ "$delay" = 0 ] || return 0
  for _ in $(seq 100); do
    grep -q "replica node serving" "$work/node$n.log" 2>/dev/null && return 0
    sleep 0.1
  done
  echo "judge-copies: node $n did not start" >&2; cat "$work/node$n.log" >&2; exit 1
}

# The origin holds a file before the volume's log begins, so a new copy needs a snapshot:
# r0 gets one of the near-empty volume at once, r1 one of a busy volume later.
echo "seed" > "$work/origin/seed"
printf '[volume]\nid = "judged"\nsource = "%s"\nmountpoint = "%s"\nstate_dir = "%s"\nallow_other = true\n' \
  "$work/origin" "$work/mnt" "$work/state" > "$work/mount.toml"
printf '%b' "${config//@DISK@/$work/disk}" >> "$work/mount.toml"
printf '[replication]\nkey_file = "%s"\nacks = "all"\nmin_insync = 1\n' "$work/volume.key" >> "$work/mount.toml"
for n in 0 1; do
  printf '[[replication.replicas]]\nname = "r%s"\naddress = "127.0.0.1:%s"\n' "$n" "${ports[$n]}" >> "$work/mount.toml"
done

start_node 0
"$bin" mount --foreground --config "$work/mount.toml" 2>"$work/daemon.log" &
daemon=$!
pids=("$daemon" "${pids[@]}")
for _ in $(seq 100); do
  grep -q " $work/mnt .* fuse.mirrorfs " /proc/self/mountinfo && break
  kill -0 "$daemon" 2>/dev/null || { cat "$work/daemon.log" >&2; exit 1; }
  sleep 0.1
done

# Waits until both replicas hold the whole log and the origin holds every byte.
settle() {
  python3 - "$bin" "$work/state" <<'PY'
import json, subprocess, sys, time
binary, state = sys.argv[1], sys.argv[2]
deadline = time.time() + 600
while True:
    status = json.loads(subprocess.run([binary, "status", "--state-dir", state, "--json"],
                                       check=True, capture_output=True).stdout)
    end = status["log"]["next_offset"]
    replicas = status["replication"]["replicas"]
    behind = status.get("write_behind") or {}
    if all(r["acknowledged"] >= end for r in replicas) and not behind.get("dirty_bytes"):
        break
    if time.time() > deadline:
        sys.exit(f"judge-copies: copies not settled: {json.dumps(status['replication'])}")
    time.sleep(0.2)
PY
}

check_copies() {
  local judge=$1
  settle
  echo "judge-copies: $name after $judge: comparing the origin with both copies"
  if ! python3 scripts/treecmp.py "$work/origin" "$work/node0/judged/data" "$work/node1/judged/data"; then
    echo "judge-copies: $name after $judge: a copy differs from the origin" >&2
    tail -n 20 "$work/daemon.log" "$work/node0.log" "$work/node1.log" >&2
    exit 1
  fi
  local verdict=0
  "$bin" verify --config "$work/mount.toml" --content > "$work/verify.out" 2>&1 || verdict=$?
  tail -n 1 "$work/verify.out"
  if [ "$verdict" -ne 0 ]; then
    echo "judge-copies: $name after $judge: verify --content exit $verdict, the comparison found none" >&2
    cat "$work/verify.out" >&2
    exit 1
  fi
}

start_node 1 "${JOIN_AFTER:-5}"
for judge in "${judges[@]}"; do
  case "$judge" in
    pjdfstest) FSX=0 KEEP=1 scripts/conformance.sh "$work/mnt" ;;
    fsx) PJDFSTEST=0 KEEP=1 scripts/conformance.sh "$work/mnt" ;;
    realtree) scripts/realtree.sh "$work/mnt" ;;
    *) echo "judge-copies: unknown judge $judge" >&2; exit 2 ;;
  esac
  check_copies "$judge"
done
grep -q "snapshot complete" "$work/node1.log" || { echo "judge-copies: r1 got no snapshot" >&2; exit 1; }
kill -TERM "$daemon"
wait "$daemon"
echo "judge-copies: $name: both copies equal the origin after ${judges[*]}"
