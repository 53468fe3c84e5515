#!/usr/bin/env bash
# Replication across data centers, emulated on this machine: the replica node in a network
# namespace of its own behind a link of 50 ms round trip (benches/wan.rs holds every frame
# 25 ms each way between two veth pairs, in a namespace between them; this kernel has no
# netem) and 100 Mbit/s each way (tc tbf on both ends). The peer is rsync over the same
# link (rsync -a and -az to an rsync daemon on the far side).
#
# Figures, each against the link:
#   - busy: 1 MiB sequential writes of incompressible data with acks = "none", from the
#     first byte to the replica holding the last: how busy the link was (bytes on the wire
#     over the time, against 100 Mbit/s), beside rsync -a of the same file;
#   - compression: a text-heavy tree (repeated lines of text) written through the mount
#     with compression = "none" and "zstd": bytes on the wire against the tree's bytes,
#     beside rsync -a and rsync -az of the same tree;
#   - copy: the file copied inside the mount (cp: copy_file_range), the replica copying
#     locally: the bytes on the wire against the file's;
#   - rate_bytes_max = "4MiB": the sequential run again, capped.
#
#   scripts/bench-wan.sh [SEQ_MB] [TEXT_MB]       (defaults 256 and 150)
set -euo pipefail
cd "$(dirname "$0")/.."
seq_mb=${1:-256}
text_mb=${2:-150}
[ "$(id -u)" = 0 ] || { echo "bench-wan: run as root (namespaces, tc)" >&2; exit 2; }

scripts/install-deps.sh --bench
cargo build --release --locked --quiet
cargo bench --locked --no-run --bench wan --quiet 2>/dev/null
wan=$(ls -t target/release/deps/wan-* | grep -v '\.d$' | head -n 1)
mirrorfs="$PWD/target/release/mirrorfs"

work=$(mktemp -d /var/tmp/mirrorfs-wan.XXXXXX)
tag=$$
mid=mfswan-mid-$tag
far=mfswan-far-$tag
near_if=mwn$tag
pids=()
mount_pid=""
cleanup() {
  if [ -n "$mount_pid" ]; then kill -TERM "$mount_pid" 2>/dev/null || true; wait "$mount_pid" 2>/dev/null || true; fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for mnt in "$work"/*/mnt; do
    if grep -q " $mnt " /proc/self/mountinfo; then umount -l "$mnt"; fi
  done
  ip link del "$near_if" 2>/dev/null || true
  ip netns del "$mid" 2>/dev/null || true
  ip netns del "$far" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# The link: near end here (10.99.0.1), far end in $far (10.99.0.2), frames held in $mid.
ip netns add "$mid"
ip netns add "$far"
ip link add "$near_if" type veth peer name l1 netns "$mid"
ip link add r0 netns "$far" type veth peer name r1 netns "$mid"
ip addr add 10.99.0.1/24 dev "$near_if"
ip -n "$far" addr add 10.99.0.2/24 dev r0
ip link set "$near_if" up
for link in l1 r1; do ip -n "$mid" link set "$link" up; done
ip -n "$far" link set r0 up
ip -n "$far" link set lo up
# Frames cross the forwarder as they are: whole (no segmentation offload) and with their
# checksums filled in (no checksum offload).
ethtool -K "$near_if" tx off tso off gso off gro off >/dev/null
ip netns exec "$far" ethtool -K r0 tx off tso off gso off gro off >/dev/null
for link in l1 r1; do ip netns exec "$mid" ethtool -K "$link" tx off tso off gso off gro off >/dev/null; done
tc qdisc add dev "$near_if" root tbf rate 100mbit burst 64kb latency 200ms
ip netns exec "$far" tc qdisc add dev r0 root tbf rate 100mbit burst 64kb latency 200ms
ip netns exec "$mid" "$wan" l1 r1 25 2>"$work/wan.log" &
pids+=($!)
link_bytes_per_s=$((100 * 1000 * 1000 / 8))
wire() { cat "/sys/class/net/$near_if/statistics/tx_bytes"; }

"$mirrorfs" keygen > "$work/key"
volumes=()
for name in seq text-none text-zstd capped; do volumes+=(--volume "$name=$work/key"); done
mkdir -p "$work/node"
ip netns exec "$far" "$mirrorfs" replica serve --listen 10.99.0.2:7071 --dir "$work/node" \
  "${volumes[@]}" 2>"$work/node.log" &
pids+=($!)
mkdir -p "$work/rsync"
printf 'uid = root\ngid = root\nuse chroot = no\n[bench]\npath = %s\nread only = false\n' \
  "$work/rsync" > "$work/rsyncd.conf"
ip netns exec "$far" rsync --daemon --no-detach --config="$work/rsyncd.conf" \
  --address=10.99.0.2 --port=8730 &
pids+=($!)
sleep 1

now() { date +%s.%N; }
results="$work/results.jsonl"
record() { # name bytes seconds wire_bytes
  printf '{"name": "%s", "bytes": %s, "seconds": %s, "wire": %s}\n' "$@" >> "$results"
  echo "bench-wan: $(tail -n 1 "$results")"
}

# mount_volume ID EXTRA: a fresh origin of volume ID replicating over the link, acks none.
mount_volume() {
  local id=$1 extra=$2
  mkdir -p "$work/$id/origin" "$work/$id/mnt"
  printf '[volume]\nid = "%s"\nsource = "%s"\nmountpoint = "%s"\nstate_dir = "%s"\n[replication]\nkey_file = "%s"\nacks = "none"\nlag_max = "1h"\n%b[[replication.replicas]]\nname = "far"\naddress = "10.99.0.2:7071"\n' \
    "$id" "$work/$id/origin" "$work/$id/mnt" "$work/$id/state" "$work/key" "$extra" > "$work/$id.toml"
  "$mirrorfs" mount --foreground --config "$work/$id.toml" 2>"$work/$id.log" &
  mount_pid=$!
  for _ in $(seq 200); do
    grep -q " $work/$id/mnt " /proc/self/mountinfo && break
    sleep 0.1
  done
  wait_caught_up "$id"
}

unmount_volume() {
  "$mirrorfs" unmount "$work/$1/mnt"
  wait "$mount_pid"
  mount_pid=""
}

wait_caught_up() {
  for _ in $(seq 60000); do
    "$mirrorfs" status --config "$work/$1.toml" --json | python3 -c '
import json, sys
s = json.load(sys.stdin)
r = s["replication"]["replicas"][0]
sys.exit(0 if r["acknowledged"] >= s["log"]["next_offset"] and r["state"] == "in sync" else 1)' && return 0
    sleep 0.05
  done
  echo "bench-wan: $1 did not catch up" >&2
  return 1
}

# replicate NAME ID WRITE...: runs WRITE (into the mount) and waits for the replica; records
# the bytes written, the time from start to the replica holding them, and the wire bytes.
replicate() {
  local name=$1 id=$2 start wire_before bytes
  shift 2
  wire_before=$(wire)
  start=$(now)
  "$@"
  wait_caught_up "$id"
  bytes=$(du -sb --apparent-size "$work/$id/origin" | cut -f1)
  record "$name" "$bytes" "$(python3 -c "print($(now) - $start)")" $(($(wire) - wire_before))
}

# by_rsync NAME SOURCE FLAGS: rsync of SOURCE to the far side, timed, with its wire bytes.
by_rsync() {
  local name=$1 source=$2 flags=$3 start wire_before
  rm -rf "${work:?}/rsync/"*
  wire_before=$(wire)
  start=$(now)
  rsync "$flags" "$source" rsync://10.99.0.2:8730/bench/
  record "$name" "$(du -sb --apparent-size "$source" | cut -f1)" \
    "$(python3 -c "print($(now) - $start)")" $(($(wire) - wire_before))
}

head -c "$((seq_mb << 20))" /dev/urandom > "$work/random.dat"
mount_volume seq ''
replicate "mirrorfs seq, acks none" seq cp "$work/random.dat" "$work/seq/mnt/random.dat"
# A copy inside the mount: copy_file_range, recorded as a copy; the replica copies locally.
copy_replicated() {
  cp "$work/seq/mnt/random.dat" "$work/seq/mnt/copy.dat"
  rm -f "$work/seq/mnt/random.dat"
}
replicate "mirrorfs cp inside the mount" seq copy_replicated
unmount_volume seq
by_rsync "rsync -a seq" "$work/random.dat" -a

# A text-heavy tree: 20 directories of files cut from repeated lines of text.
python3 - "$work/text" "$text_mb" <<'PY'
import os, sys
root, total = sys.argv[1], int(sys.argv[2]) << 20
lines = [f"{i:06d} the quick brown fox jumps over the lazy dog; config key_{i % 97} = {i * 31 % 1000}\n"
         for i in range(5000)]
block = "".join(lines).encode()
made, n = 0, 0
while made < total:
    d = os.path.join(root, f"d{n % 20:02d}")
    os.makedirs(d, exist_ok=True)
    size = min(total - made, 256 << 10 if n % 3 else 2 << 20)
    with open(os.path.join(d, f"f{n:05d}.txt"), "wb") as f:
        f.write((block * (size // len(block) + 1))[n % 1000:][:size])
    made += size
    n += 1
PY
for mode in none zstd; do
  mount_volume "text-$mode" "compression = \"$mode\"\n"
  replicate "mirrorfs text, compression $mode" "text-$mode" cp -a "$work/text/." "$work/text-$mode/mnt/"
  unmount_volume "text-$mode"
done
by_rsync "rsync -a text" "$work/text/" -a
by_rsync "rsync -az text" "$work/text/" -az

mount_volume capped 'rate_bytes_max = "4MiB"\n'
replicate "mirrorfs seq, rate_bytes_max 4MiB" capped cp "$work/random.dat" "$work/capped/mnt/random.dat"
unmount_volume capped

python3 - "$results" "$link_bytes_per_s" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
link = int(sys.argv[2])
print(f'{"run":<38}{"MB":>9}{"s":>8}{"MB/s":>8}{"wire MB":>10}{"wire/data":>11}{"link busy":>11}')
for r in rows:
    busy = r["wire"] / r["seconds"] / link
    print(f'{r["name"]:<38}{r["bytes"] / 1e6:>9.1f}{r["seconds"]:>8.1f}{r["bytes"] / 1e6 / r["seconds"]:>8.2f}'
          f'{r["wire"] / 1e6:>10.1f}{r["wire"] / r["bytes"]:>11.3f}{busy:>10.0%}')
PY
