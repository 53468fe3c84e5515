#!/usr/bin/env bash
# Benchmark, in one run on one disk: the origin directory itself (native), libfuse's C
# passthrough_ll (compiled here from Debian's libfuse3-dev example) without and with the
# kernel's writeback cache, and mirrorfs in both write policies. All under one promise:
# the origin changes only through the mount (passthrough_ll cache=always; mirrorfs
# [cache] revalidate_after = "1d"), with default_permissions for both.
#
# Every target's origin is a freshly made ext4 filesystem of its own (an image on a loop
# device): on one shared filesystem, each target inherited the inode allocator state the
# previous ones left, which made the order of targets matter. mirrorfs's state directory
# (its change log) is on the host disk, as a mount's state disk would be its own.
#
# Rows: fio sequential write (1 MiB blocks, fsync at the end), sequential read cold (the
# kernel's caches dropped) and warm (1 MiB), 4 KiB random read warm, 4 KiB random write
# with an fsync every 32 writes; the small-file workload (benches/smallfiles.rs: create,
# stat cold and warm, read, delete files of 0-16 KiB); `dd bs=4k` of 1 GiB with fsync;
# an untar of a source tree (/usr/include, tarred once) followed by `sync -f`; and a copy
# of the 1 GiB file inside the filesystem by `cp` (copy_file_range) and by dd.
# Rounds run interleaved (every target once per round, in a rotated order) and the table
# gives each figure's median with ratios to passthrough_ll, because this machine is
# noisy: compare ratios from one run, not absolute numbers across runs.
#
#   scripts/bench.sh [--quick] [--rounds N]   (--quick: 256 MiB files, 5,000 small files)
#   BENCH_CACHE='memory_bytes = 0\n' scripts/bench.sh    (extra [cache] lines for mirrorfs)
#   BENCH_ONLY='native mfs-wt' scripts/bench.sh           (a subset of the targets)
set -euo pipefail
cd "$(dirname "$0")/.."

size=1G; files=15000; random_seconds=10; rounds=3
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) size=256M; files=5000; random_seconds=4 ;;
    --rounds) rounds=$2; shift ;;
    *) echo "bench: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
[ "$(id -u)" = 0 ] || { echo "bench: run as root (loop devices, dropping caches)" >&2; exit 2; }

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
tarball=target/bench/source-tree.tar
[ -f "$tarball" ] || tar -C /usr -cf "$tarball" include

work=$(mktemp -d /var/tmp/mirrorfs-bench.XXXXXX)
pids=()
loops=()
cleanup() {
  local status=$?
  if [ "$status" != 0 ]; then
    for log in "$work"/*.log; do echo "== $log" >&2; tail -n 20 "$log" >&2; done
  fi
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for mnt in "$work"/*-mnt "$work"/*-origin; do
    if grep -q " $mnt " /proc/self/mountinfo; then umount -l "$mnt"; fi
  done
  for loop in "${loops[@]}"; do losetup -d "$loop" 2>/dev/null || true; done
  [ -n "${BENCH_KEEP:-}" ] || rm -rf "$work"
}
trap cleanup EXIT

# A new, empty ext4 filesystem mounted at $1.
fresh_fs() {
  local dir=$1 image loop
  image="$work/$(basename "$dir").img"
  truncate -s 8G "$image"
  mkfs.ext4 -q -F "$image"
  loop=$(losetup --find --show "$image")
  loops+=("$loop")
  mkdir -p "$dir"
  mount "$loop" "$dir"
}

wait_mounted() {
  for _ in $(seq 100); do
    grep -q " $1 " /proc/self/mountinfo && return 0
    sleep 0.1
  done
  echo "bench: $1 did not mount" >&2; return 1
}

all_targets="native pll pll-wb mfs-wt mfs-wb"
names=(${BENCH_ONLY:-$all_targets})
declare -A mounts
for name in "${names[@]}"; do
  fresh_fs "$work/$name-origin"
  case "$name" in
    native) mounts[$name]=$work/$name-origin; continue ;;
    pll|pll-wb)
      options="source=$work/$name-origin,cache=always,default_permissions"
      [ "$name" = pll-wb ] && options+=",writeback"
      mkdir -p "$work/$name-mnt"
      "$peer" -f -o "$options" "$work/$name-mnt" 2>"$work/$name.log" &
      pids+=($!) ;;
    mfs-wt|mfs-wb)
      policy=$([ "$name" = mfs-wt ] && echo write-through || echo write-behind)
      printf '[cache]\nrevalidate_after = "1d"\n%b[write]\nmode = "%s"\n' \
        "${BENCH_CACHE:-}" "$policy" > "$work/$name.toml"
      mkdir -p "$work/$name-mnt"
      target/release/mirrorfs mount --foreground "$work/$name-origin" "$work/$name-mnt" \
        --state-dir "$work/$name-state" --config "$work/$name.toml" 2>"$work/$name.log" &
      pids+=($!) ;;
    *) echo "bench: unknown target $name (targets: $all_targets)" >&2; exit 2 ;;
  esac
  mounts[$name]=$work/$name-mnt
  wait_mounted "$work/$name-mnt"
done

results="$work/results.jsonl"
record() { # target workload value unit
  printf '{"target": "%s", "workload": "%s", "value": %s, "unit": "%s"}\n' "$@" >> "$results"
}
drop_caches() { sync; echo 3 > /proc/sys/vm/drop_caches; }
fio_run() { # target dir name rw bs extra...
  local target=$1 dir=$2 name=$3 rw=$4 bs=$5; shift 5
  fio --name="$name" --filename="$dir/fio.dat" --rw="$rw" --bs="$bs" --size="$size" \
      --ioengine=psync --output-format=json "$@" > "$work/fio.json"
  record "$target" "$name" "$(python3 - "$rw" "$name" "$work/fio.json" <<'PY'
import json, sys
rw, name, path = sys.argv[1:]
job = json.load(open(path))["jobs"][0]
side = job["write"] if "write" in rw else job["read"]
print(side["iops"] if name.startswith("rand") else side["bw_bytes"] / 2**20)
PY
)" "$([[ $name == rand* ]] && echo IOPS || echo MiB/s)"
}
seconds() { python3 -c 'import sys, time; print(time.monotonic())'; }
timed() { # target workload bytes command...: records MiB/s of the command's run
  local target=$1 workload=$2 bytes=$3 start end
  shift 3
  start=$(seconds)
  "$@"
  end=$(seconds)
  record "$target" "$workload" "$(python3 -c "print($bytes / 2**20 / ($end - $start))")" MiB/s
}

run_target() { # target dir
  local target=$1 dir=$2 bytes
  fio_run "$target" "$dir" "seq-write-1M-fsync" write 1M --end_fsync=1
  drop_caches
  fio_run "$target" "$dir" "seq-read-1M-cold" read 1M --invalidate=0
  # Warm reads: the pass before filled the caches; fio's default invalidate=1 would drop
  # the file's page cache before each job. Each fio job opens the file anew: this measures
  # whether a filesystem lets the kernel keep pages across opens.
  fio_run "$target" "$dir" "seq-read-1M-warm" read 1M --invalidate=0
  fio_run "$target" "$dir" "rand-read-4K-warm" randread 4k --runtime="$random_seconds" \
    --time_based --invalidate=0
  fio_run "$target" "$dir" "rand-write-4K-fsync32" randwrite 4k --fsync=32 \
    --runtime="$random_seconds" --time_based
  # A copy inside the filesystem, durable: `cp` (copy_file_range(2), so a filesystem can
  # copy without the bytes crossing into its daemon), and the same bytes read and written
  # through it by dd, as a copy goes where the filesystem cannot do it itself.
  timed "$target" "copy-cp" "$(stat -c %s "$dir/fio.dat")" \
    bash -c 'cp "$1/fio.dat" "$1/copy.dat" && sync -f "$1/copy.dat"' _ "$dir"
  rm -f "$dir/copy.dat"
  timed "$target" "copy-through-dd" "$(stat -c %s "$dir/fio.dat")" \
    bash -c 'dd if="$1/fio.dat" of="$1/copy.dat" bs=1M status=none && sync -f "$1/copy.dat"' _ "$dir"
  rm -f "$dir/fio.dat" "$dir/copy.dat"
  bytes=$(numfmt --from=iec "$size")
  timed "$target" "dd-4K-fsync" "$bytes" dd if=/dev/zero of="$dir/dd.dat" bs=4k \
    count=$((bytes / 4096)) conv=fsync status=none
  rm -f "$dir/dd.dat"
  mkdir "$dir/untar"
  timed "$target" "untar-sync" "$(stat -c %s "$tarball")" \
    bash -c 'tar -C "$1" -xf "$2" && sync -f "$1"' _ "$dir/untar" "$tarball"
  rm -rf "$dir/untar"
  "$smallfiles" "$dir" "$files" --cold | python3 -c '
import json, sys
result = json.load(sys.stdin)
if "error" in result:
    sys.exit("bench: small files on " + sys.argv[1] + " failed: " + result["error"])
for phase, value in result.items():
    print(json.dumps({"target": sys.argv[1], "workload": "small-" + phase, "value": value, "unit": "files/s"}))
' "$target" >> "$results"
}

for round in $(seq "$rounds"); do
  # Rotate the order, so no target always runs first (or right after the same one).
  shift_by=$(( (round - 1) % ${#names[@]} ))
  order=("${names[@]:shift_by}" "${names[@]:0:shift_by}")
  for name in "${order[@]}"; do
    echo "bench: round $round/$rounds: $name"
    run_target "$name" "${mounts[$name]}"
  done
done

python3 - "$results" "${names[@]}" <<'PY'
import json, statistics, sys
path, names = sys.argv[1], sys.argv[2:]
values, units = {}, {}
for line in open(path):
    row = json.loads(line)
    values.setdefault(row["workload"], {}).setdefault(row["target"], []).append(row["value"])
    units[row["workload"]] = row["unit"]
ratios = [(a, b) for a, b in [("mfs-wt", "pll"), ("mfs-wb", "pll"), ("mfs-wt", "pll-wb"),
                              ("mfs-wb", "pll-wb"), ("mfs-wt", "native"), ("mfs-wb", "native"),
                              ("mfs-wb", "mfs-wt")] if a in names and b in names]
print(f'{"median of each":<22} {"unit":<8}' + "".join(f"{n:>10}" for n in names)
      + "".join(f'{a.removeprefix("mfs-") + "/" + b:>14}' for a, b in ratios))
for workload, by_target in values.items():
    median = {n: statistics.median(v) for n, v in by_target.items()}
    row = f"{workload:<22} {units[workload]:<8}" + "".join(f"{median.get(n, 0):>10.0f}" for n in names)
    row += "".join(f"{median[a] / median[b]:>14.2f}" for a, b in ratios)
    print(row)
PY
cp "$results" target/bench/results.jsonl
