#!/usr/bin/env bash
# Benchmark, in one run on one disk: the origin directory itself (native), mirrorfs, and
# libfuse's C passthrough_ll (with default_permissions, as mirrorfs), compiled here from
# Debian's libfuse3-dev example. Each FUSE filesystem runs in two modes with the same
# promise about the origin:
#   1s:  changes made directly in the origin show within 1 s (mirrorfs's default;
#        passthrough_ll cache=auto);
#   1d:  the origin changes only through the mount (mirrorfs [cache] revalidate_after = "1d";
#        passthrough_ll cache=always).
# Workloads: fio sequential write (1 MiB blocks, fsync at the end), warm sequential read
# (1 MiB), warm 4 KiB random read, and a small-file workload (create, stat, read, delete
# files of 0-16 KiB; benches/smallfiles.rs) at 15,000 files, a count the peer can hold
# (it keeps one descriptor per known inode), then a 20,000-file scale check on each target.
# Every target's origin is a freshly made ext4 filesystem of its own (an image on a loop
# device): on one shared filesystem, each target inherited the inode allocator state the
# previous ones left (after many creates and deletes, ext4 spent most of a later target's
# create time searching for free inodes), which made the order of targets matter.
# Prints each figure and its ratio to native, because this machine is noisy: compare
# ratios, not absolute numbers.
#
#   scripts/bench.sh [--quick]      (--quick: 256 MiB files, 5,000 small files)
#   BENCH_CACHE='memory_bytes = 0\n' scripts/bench.sh    (extra [cache] lines for mirrorfs)
set -euo pipefail
cd "$(dirname "$0")/.."

size=1G; files=15000; scale_files=20000; random_seconds=10
if [ "${1:-}" = "--quick" ]; then size=256M; files=5000; scale_files=5000; random_seconds=4; fi

scripts/install-deps.sh --bench
cargo build --release --locked --quiet
cargo bench --locked --no-run --bench smallfiles --quiet 2>/dev/null
smallfiles=$(ls -t target/release/deps/smallfiles-* | grep -v '\.d$' | head -n 1)
mkdir -p target/bench
peer=target/bench/passthrough_ll
examples=/usr/share/doc/libfuse3-dev/examples
if [ ! -x "$peer" ] || [ "$examples/passthrough_ll.c" -nt "$peer" ]; then
  gcc -O2 -o "$peer" -I"$examples" "$examples/passthrough_ll.c" $(pkg-config --cflags --libs fuse3)
fi

work=$(mktemp -d /var/tmp/mirrorfs-bench.XXXXXX)
pids=()
loops=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for mnt in "$work"/*-mnt "$work"/native "$work"/*-origin; do
    if grep -q " $mnt " /proc/self/mountinfo; then umount -l "$mnt"; fi
  done
  for loop in "${loops[@]}"; do losetup -d "$loop" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# A new, empty ext4 filesystem mounted at $1.
fresh_fs() {
  local dir=$1 image loop
  image="$work/$(basename "$dir").img"
  truncate -s 4G "$image"
  mkfs.ext4 -q -F "$image"
  loop=$(losetup --find --show "$image")
  loops+=("$loop")
  mkdir -p "$dir"
  mount "$loop" "$dir"
}
fresh_fs "$work/native"

wait_mounted() {
  for _ in $(seq 100); do
    grep -q " $1 " /proc/self/mountinfo && return 0
    sleep 0.1
  done
  echo "bench: $1 did not mount" >&2; return 1
}
targets=("native:$work/native")
for mode in 1s 1d; do
  fresh_fs "$work/mirrorfs-$mode-origin"
  mkdir -p "$work/mirrorfs-$mode-mnt"
  printf '[cache]\nrevalidate_after = "%s"\n%b' "$mode" "${BENCH_CACHE:-}" > "$work/mirrorfs-$mode.toml"
  target/release/mirrorfs mount "$work/mirrorfs-$mode-origin" "$work/mirrorfs-$mode-mnt" \
    --state-dir "$work/mirrorfs-$mode-state" --config "$work/mirrorfs-$mode.toml" \
    2>"$work/mirrorfs-$mode.log" &
  pids+=($!)
  peer_cache=$([ "$mode" = 1s ] && echo auto || echo always)
  fresh_fs "$work/peer-$mode-origin"
  mkdir -p "$work/peer-$mode-mnt"
  # default_permissions, as mirrorfs mounts: the kernel checks permissions for both, which
  # costs a GETATTR of a directory after each change in it (its attributes are invalidated).
  "$peer" -f -o "source=$work/peer-$mode-origin,cache=$peer_cache,default_permissions" \
    "$work/peer-$mode-mnt" 2>"$work/peer-$mode.log" &
  pids+=($!)
  wait_mounted "$work/mirrorfs-$mode-mnt"
  wait_mounted "$work/peer-$mode-mnt"
  targets+=("mirrorfs-$mode:$work/mirrorfs-$mode-mnt" "passthrough_ll-$mode:$work/peer-$mode-mnt")
done

results="$work/results.jsonl"
fio_run() { # target dir name rw bs extra...
  local target=$1 dir=$2 name=$3 rw=$4 bs=$5; shift 5
  fio --name="$name" --filename="$dir/fio.dat" --rw="$rw" --bs="$bs" --size="$size" \
      --ioengine=psync --output-format=json "$@" > "$work/fio.json"
  python3 - "$target" "$name" "$rw" "$work/fio.json" >> "$results" <<'PY'
import json, sys
target, name, rw, path = sys.argv[1:]
job = json.load(open(path))["jobs"][0]
side = job["write"] if "write" in rw else job["read"]
value = side["iops"] if name.startswith("rand") else side["bw_bytes"] / 2**20
unit = "IOPS" if name.startswith("rand") else "MiB/s"
print(json.dumps({"target": target, "workload": name, "value": value, "unit": unit}))
PY
}

for spec in "${targets[@]}"; do
  target=${spec%%:*}; dir=${spec#*:}
  echo "bench: $target"
  fio_run "$target" "$dir" "seq-write-1M" write 1M --end_fsync=1
  # Warm reads: the first pass fills the caches; fio's default invalidate=1 would drop the
  # file's page cache before each job, so the measured passes keep it (invalidate=0). Each
  # fio job opens the file anew: this measures whether a filesystem lets the kernel keep
  # pages across opens.
  fio --name=warm --filename="$dir/fio.dat" --rw=read --bs=1M --size="$size" --output-format=json >/dev/null
  fio_run "$target" "$dir" "seq-read-1M-warm" read 1M --invalidate=0
  fio_run "$target" "$dir" "rand-read-4K-warm" randread 4k --runtime="$random_seconds" \
    --time_based --invalidate=0
  rm -f "$dir/fio.dat"
  "$smallfiles" "$dir" "$files" | python3 -c '
import json, sys
result = json.load(sys.stdin)
if "error" in result:
    sys.exit("bench: small files on " + sys.argv[1] + " failed: " + result["error"])
for phase, value in result.items():
    print(json.dumps({"target": sys.argv[1], "workload": "small-" + phase, "value": value, "unit": "files/s"}))
' "$target" >> "$results"
  scale=$("$smallfiles" "$dir" "$scale_files")
  echo "$target: $scale" >> "$work/scale.txt"
done

python3 - "$results" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1])]
table = {}
units = {}
for row in rows:
    table.setdefault(row["workload"], {})[row["target"]] = row["value"]
    units[row["workload"]] = row["unit"]
names = ["native", "mirrorfs-1s", "passthrough_ll-1s", "mirrorfs-1d", "passthrough_ll-1d"]
print(f'{"workload":<18} {"unit":<8}' + "".join(f"{n:>18}" for n in names)
      + f'{"mfs/native":>11}{"mfs/pll 1s":>11}{"mfs/pll 1d":>11}')
for workload, v in table.items():
    row = f"{workload:<18} {units[workload]:<8}" + "".join(f"{v[n]:>18.0f}" for n in names)
    row += f'{v["mirrorfs-1s"]/v["native"]:>11.2f}'
    row += f'{v["mirrorfs-1s"]/v["passthrough_ll-1s"]:>11.2f}'
    row += f'{v["mirrorfs-1d"]/v["passthrough_ll-1d"]:>11.2f}'
    print(row)
PY
echo
echo "scale check, $scale_files small files (create, stat, read, delete):"
sed 's/^/  /' "$work/scale.txt"
cp "$results" target/bench/results.jsonl
