#!/usr/bin/env bash
# Replication benchmark, in one run on loopback (primary and nodes on this machine, every
# directory on the same disk except the slow replica's):
#   - targets: the native directory; mirrorfs without replicas (local-only); acks = "none"
#     and "all" with one replica; "all" and "quorum" (min_insync = 1) with two replicas, one
#     of them slow (its node's directory on an ext4 image throttled to 20 MB/s, 200 IOPS,
#     with the cgroup v1 blkio controller); and local-only and "all" with one replica again
#     as two machines would run them: the primary (daemon and fio) on CPU 0, the node on
#     CPU 1 with its directory on a tmpfs, its own storage. On loopback the node otherwise
#     takes its CPU from the primary and, worse, its disk: a replica writes each byte twice
#     (its log, its tree) as the primary does (log, origin), so on one disk acks = "all"
#     must halve what a disk-bound writer gets;
#   - workloads: 1 MiB sequential writes with fsync every 64 MiB (fio), and the small-file
#     workload (benches/smallfiles.rs: create, stat, read, delete);
#   - replication lag under the sequential writes (status sampled every 0.5 s: the largest
#     lag in bytes and seconds per replica);
#   - catch-up: a replica stopped while CATCHUP_MB are written, then started: how fast it
#     takes the backlog; the peer is rsync of the same data to an empty directory;
#   - snapshot: a replica joining a volume whose origin already holds 2,000 small files
#     and 512 MiB in 8 large ones; the peers are rsync and cp -a of the same tree.
# Every mirrorfs target is write-through with the default cache. Prints MB/s and ops/s,
# the ratios to local-only, and the target: acks = "all" with one replica >= 0.70 of
# local-only for sequential writes. The sequential runs go ROUNDS times, interleaved, and
# the medians are reported: this machine is noisy.
#
#   scripts/bench-replication.sh [SEQ_MB] [CATCHUP_MB] [SMALL_FILES] [ROUNDS]
#                                (defaults 1024, 1024, 5000, 3)
#   BENCH_TARGETS="native local all1" BENCH_ONLY_TARGETS=1 ...   some targets, and nothing else
set -euo pipefail
cd "$(dirname "$0")/.."
seq_mb=${1:-1024}
catch_mb=${2:-1024}
small=${3:-5000}
rounds=${4:-3}

scripts/install-deps.sh --bench
cargo build --release --locked --quiet
cargo bench --locked --no-run --bench smallfiles --quiet 2>/dev/null
smallfiles=$(ls -t target/release/deps/smallfiles-* | grep -v '\.d$' | head -n 1)
mirrorfs="$PWD/target/release/mirrorfs"
# shellcheck source=scripts/slow-disk.sh
. scripts/slow-disk.sh

work=$(mktemp -d /var/tmp/mirrorfs-bench-replication.XXXXXX)
results="$work/results.jsonl"
nodes=()
mount_pid=""
mount_point=""
cleanup() {
  if [ -n "$mount_point" ] && grep -q " $mount_point " /proc/self/mountinfo; then
    "$mirrorfs" unmount "$mount_point" || umount -l "$mount_point"
  fi
  [ -n "$mount_pid" ] && { kill -TERM "$mount_pid" 2>/dev/null || true; wait "$mount_pid" 2>/dev/null || true; }
  for pid in "${nodes[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${nodes[@]}"; do wait "$pid" 2>/dev/null || true; done
  if grep -q " $work/pinned-node " /proc/self/mountinfo; then umount -l "$work/pinned-node"; fi
  slow_disk_remove
  rm -rf "$work"
}
trap cleanup EXIT

slow_disk_make "$work" 8G $((20 * 1000 * 1000)) 200
"$mirrorfs" keygen > "$work/key"

# Seconds since START (a date +%s.%N), with a leading zero (JSON wants one).
since() {
  awk -v start="$1" -v end="$(date +%s.%N)" 'BEGIN { printf "%.3f", end - start }'
}

# Seconds a copy made by COMMAND... takes from cold caches until it is on disk.
timed_copy() {
  settle
  local start
  start=$(date +%s.%N)
  "$@"
  sync
  since "$start"
}

settle() {
  sync
  echo 3 > /proc/sys/vm/drop_caches
}

# Every volume a node keeps: each target's own per round (a copy follows one primary's
# log; a fresh primary under the same id would be another history, and refused).
node_volumes=(catch snap)
for round in $(seq "$rounds"); do
  for target in none1 all1 all2 quorum2 all1pin; do node_volumes+=("$target-$round"); done
done

# start_node NAME ADDRESS DIR PREFIX... : a replica node keeping every benchmark volume.
fast_node=""
slow_node=""
start_node() {
  local name=$1 address=$2 dir=$3
  shift 3
  local args=()
  for volume in "${node_volumes[@]}"; do args+=(--volume "$volume=$work/key"); done
  "$@" "$mirrorfs" replica serve --listen "$address" --dir "$dir" "${args[@]}" 2>>"$work/$name-node.log" &
  local pid=$!
  nodes+=("$pid")
  for _ in $(seq 100); do
    grep -q "replica node serving" "$work/$name-node.log" 2>/dev/null && break
    sleep 0.1
  done
  printf -v "${name}_node" '%s' "$pid"
}
start_node fast 127.0.0.1:7181 "$work/fast-node"
start_node slow 127.0.0.1:7182 "$slow_mount/node" "${slow_throttled[@]}"
mkdir -p "$work/pinned-node"
mount -t tmpfs -o size=$(((seq_mb * rounds * 3 + 1024) << 20)) mirrorfs-bench "$work/pinned-node"
start_node pinned 127.0.0.1:7183 "$work/pinned-node" taskset -c 1
pinned_replica='[[replication.replicas]]\nname = "pinned"\naddress = "127.0.0.1:7183"\n'
# The primary's side of a pinned target runs with this prefix.
on_cpu0=()
fast_replica='[[replication.replicas]]\nname = "fast"\naddress = "127.0.0.1:7181"\n'
slow_replica='[[replication.replicas]]\nname = "slow"\naddress = "127.0.0.1:7182"\n'

# mount_volume ID [REPLICATION]: mounts a fresh origin of volume ID; REPLICATION is the
# [replication] section's body (printf escapes), none for local-only.
mount_volume() {
  local id=$1 replication=${2:-}
  rm -rf "${work:?}/$id"
  mkdir -p "$work/$id/origin" "$work/$id/mnt"
  if [ -n "${3:-}" ]; then cp -a "$3"/. "$work/$id/origin/"; fi
  {
    printf '[volume]\nid = "%s"\nsource = "%s"\nmountpoint = "%s"\nstate_dir = "%s"\n' \
      "$id" "$work/$id/origin" "$work/$id/mnt" "$work/$id/state"
    if [ -n "$replication" ]; then
      printf "[replication]\nkey_file = \"%s\"\n$replication" "$work/key"
    fi
  } > "$work/$id.toml"
  settle
  mount_started=$(date +%s.%N)
  "${on_cpu0[@]}" "$mirrorfs" mount --foreground --config "$work/$id.toml" 2>"$work/$id.log" &
  mount_pid=$!
  mount_point="$work/$id/mnt"
  for _ in $(seq 200); do
    grep -q " $mount_point " /proc/self/mountinfo && return 0
    kill -0 "$mount_pid" 2>/dev/null || { cat "$work/$id.log" >&2; return 1; }
    sleep 0.1
  done
  echo "bench-replication: $id did not mount" >&2
  return 1
}

unmount_volume() {
  "$mirrorfs" unmount "$mount_point"
  wait "$mount_pid"
  mount_pid=""
  mount_point=""
}

status_json() {
  "$mirrorfs" status --config "$work/$1.toml" --json
}

# seq TARGET DIR [ID]: fio's sequential writes; with ID, samples replication lag meanwhile.
seq_run() {
  local target=$1 dir=$2 id=${3:-} out sampler=""
  if [ -n "$id" ]; then
    (while true; do status_json "$id" >> "$work/$id.samples" 2>/dev/null || true; sleep 0.5; done) &
    sampler=$!
  fi
  out=$("${on_cpu0[@]}" fio --name=seq --directory="$dir" --rw=write --bs=1M --size="${seq_mb}M" --fsync=64 \
    --end_fsync=1 --ioengine=psync --output-format=json)
  [ -n "$sampler" ] && { kill "$sampler"; wait "$sampler" 2>/dev/null || true; }
  rm -f "$dir"/seq.*
  python3 - "$target" "$out" >> "$results" <<'PY'
import json, sys
job = json.loads(sys.argv[2])["jobs"][0]["write"]
print(json.dumps({"target": sys.argv[1], "workload": "seq", "mb_per_s": job["bw_bytes"] / 1e6}))
PY
  echo "bench-replication: $target seq $(tail -n 1 "$results")"
}

small_run() {
  local target=$1 dir=$2 out
  out=$("${on_cpu0[@]}" "$smallfiles" "$dir" "$small")
  python3 -c 'import json,sys; r=json.loads(sys.argv[2]); r.update(target=sys.argv[1], workload="small"); print(json.dumps(r))' \
    "$target" "$out" >> "$results"
  echo "bench-replication: $target small $out"
}

# wait_caught_up ID REPLICA_INDEX: until that replica has acknowledged the whole log.
wait_caught_up() {
  for _ in $(seq 6000); do
    status_json "$1" | python3 -c '
import json, sys
s = json.load(sys.stdin)
r = s["replication"]["replicas"][int(sys.argv[1])]
sys.exit(0 if r["acknowledged"] >= s["log"]["next_offset"] and r["state"] == "in sync" else 1)' "$2" && return 0
    sleep 0.1
  done
  echo "bench-replication: $1 replica $2 did not catch up" >&2
  return 1
}

declare -A config=(
  [none1]="acks = \"none\"\n$fast_replica"
  [all1]="acks = \"all\"\nmin_insync = 1\n$fast_replica"
  [all2]="acks = \"all\"\nmin_insync = 1\n$fast_replica$slow_replica"
  [quorum2]="acks = \"quorum\"\nmin_insync = 1\n$fast_replica$slow_replica"
  [all1pin]="acks = \"all\"\nmin_insync = 1\n$pinned_replica"
)

mkdir -p "$work/native"
for round in $(seq "$rounds"); do
  for target in ${BENCH_TARGETS:-native local none1 all1 all2 quorum2 localpin all1pin}; do
    case $target in *pin) on_cpu0=(taskset -c 0) ;; *) on_cpu0=() ;; esac
    if [ "$target" = native ]; then
      settle
      seq_run native "$work/native"
      [ "$round" = 1 ] && small_run native "$work/native"
      continue
    fi
    id="$target-$round"
    mount_volume "$id" "${config[$target]:-}"
    replicated=$([ -n "${config[$target]:-}" ] && echo "$id" || true)
    seq_run "$target" "$mount_point" "$replicated"
    [ "$round" = 1 ] && small_run "$target" "$mount_point"
    # The first replica's backlog is not charged to the next target.
    [ -z "$replicated" ] || wait_caught_up "$id" 0
    unmount_volume
  done
done
on_cpu0=()

if [ -n "${BENCH_ONLY_TARGETS:-}" ]; then
  python3 -c '
import json, statistics, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
for t in dict.fromkeys(r["target"] for r in rows):
    print(t, "seq MB/s median", round(statistics.median(r["mb_per_s"] for r in rows if r["target"] == t and r["workload"] == "seq"), 1))
' "$results"
  exit 0
fi

# Catch-up: the fast node stopped while CATCHUP_MB are written, then started again.
mount_volume catch "acks = \"none\"\n$fast_replica"
echo warm > "$mount_point/first"
wait_caught_up catch 0
kill -TERM "$fast_node"
wait "$fast_node" || true
fio --name=catch --directory="$mount_point" --rw=write --bs=1M --size="${catch_mb}M" \
  --end_fsync=1 --ioengine=psync --output-format=json > /dev/null
lag_bytes=$(status_json catch | python3 -c 'import json,sys; print(json.load(sys.stdin)["replication"]["replicas"][0]["lag_bytes"])')
settle
start=$(date +%s.%N)
start_node fast 127.0.0.1:7181 "$work/fast-node"
wait_caught_up catch 0
catch_seconds=$(since "$start")
rsync_seconds=$(timed_copy rsync -a "$work/catch/origin/" "$work/rsync-catch/")
unmount_volume
echo "{\"workload\": \"catchup\", \"bytes\": $lag_bytes, \"seconds\": $catch_seconds, \"rsync_seconds\": $rsync_seconds, \"data_bytes\": $((catch_mb << 20))}" >> "$results"
rm -rf "$work/rsync-catch" "$work/catch"

# Snapshot: a new replica of a volume whose origin held files before its log began.
python3 - "$work/tree" <<'PY'
import os, random, sys
root = sys.argv[1]
rng = random.Random(7)
for d in range(20):
    os.makedirs(f"{root}/d{d}", exist_ok=True)
    for f in range(100):
        with open(f"{root}/d{d}/f{f}", "wb") as out:
            out.write(rng.randbytes(rng.randrange(16 << 10)))
chunk = rng.randbytes(1 << 20)
for n in range(8):
    with open(f"{root}/large{n}", "wb") as out:
        for _ in range(64):
            out.write(chunk)
PY
tree_bytes=$(du -sb "$work/tree" | cut -f1)
mount_volume snap "acks = \"none\"\n$fast_replica" "$work/tree"
wait_caught_up snap 0
snap_seconds=$(since "$mount_started")
unmount_volume
grep -c "snapshot complete volume=snap" "$work/fast-node.log" > /dev/null \
  || { echo "bench-replication: no snapshot was sent" >&2; exit 1; }
rsync_seconds=$(timed_copy rsync -a "$work/tree/" "$work/rsync-tree/")
cp_seconds=$(timed_copy cp -a "$work/tree" "$work/cp-tree")
echo "{\"workload\": \"snapshot\", \"bytes\": $tree_bytes, \"files\": 2008, \"seconds\": $snap_seconds, \"rsync_seconds\": $rsync_seconds, \"cp_seconds\": $cp_seconds}" >> "$results"

python3 - "$results" "$work" "$seq_mb" "$rounds" "$small" <<'PY'
import glob, json, os, statistics, sys
results, work, seq_mb, rounds, small = sys.argv[1:]
rows = [json.loads(line) for line in open(results)]
labels = {
    "native": "native directory", "local": "mirrorfs local-only",
    "none1": "acks none, 1 replica", "all1": "acks all, 1 replica",
    "all2": "acks all, 2 (1 slow)", "quorum2": "acks quorum, 2 (1 slow)",
    "localpin": "local-only, 1 CPU", "all1pin": "acks all, 1, own CPU+store",
}
seq = {t: statistics.median(r["mb_per_s"] for r in rows if r.get("target") == t and r["workload"] == "seq") for t in labels}
smallr = {r["target"]: r for r in rows if r["workload"] == "small"}
local = seq["local"]
print(f"\nsequential: {seq_mb} MiB in 1 MiB writes, fsync every 64 MiB (median of {rounds}); "
      f"small files: {small} files of 0-16 KiB")
print("/local: to local-only (the pinned rows: to local-only on 1 CPU)")
print(f"{'target':26} {'seq MB/s':>9} {'/local':>7}  {'create/s':>9} {'stat/s':>9} {'read/s':>9} {'delete/s':>9}  lag under seq (max)")
for t, name in labels.items():
    s = smallr.get(t, {})
    worst = {}
    for path in glob.glob(f"{work}/{t}-*.samples"):
        if not os.path.exists(path):
            continue
        for line in open(path):
            try:
                status = json.loads(line)
            except ValueError:
                continue
            for r in status["replication"]["replicas"]:
                b, sec = worst.get(r["name"], (0, 0.0))
                worst[r["name"]] = (max(b, r["lag_bytes"]), max(sec, r["lag_seconds"] or 0.0))
    lag = ", ".join(f"{n} {b / 1e6:.0f} MB / {sec:.1f} s" for n, (b, sec) in worst.items())
    base = seq["localpin"] if t.endswith("pin") else local
    print(f"{name:26} {seq[t]:9.1f} {seq[t] / base:7.2f}  "
          + " ".join(f"{s.get(k, 0):9.0f}" for k in ("create", "stat", "read", "delete"))
          + f"  {lag}")
catch = next(r for r in rows if r["workload"] == "catchup")
snap = next(r for r in rows if r["workload"] == "snapshot")
print(f"\ncatch-up: {catch['bytes'] / 1e6:.0f} MB of log in {catch['seconds']:.1f} s = "
      f"{catch['bytes'] / 1e6 / catch['seconds']:.0f} MB/s; rsync of the same {catch['data_bytes'] / 1e6:.0f} MB: "
      f"{catch['data_bytes'] / 1e6 / catch['rsync_seconds']:.0f} MB/s")
print(f"snapshot: {snap['files']} files, {snap['bytes'] / 1e6:.0f} MB in {snap['seconds']:.1f} s = "
      f"{snap['bytes'] / 1e6 / snap['seconds']:.0f} MB/s; rsync {snap['bytes'] / 1e6 / snap['rsync_seconds']:.0f} MB/s, "
      f"cp -a {snap['bytes'] / 1e6 / snap['cp_seconds']:.0f} MB/s")
print(f"\nacks all, 1 replica / local-only, sequential: {seq['all1'] / local:.2f} (target >= 0.70)")
print(f"the same as two machines would (primary on CPU 0; node on CPU 1, its files on its own "
      f"storage, a tmpfs): {seq['all1pin'] / seq['localpin']:.2f}")
PY
