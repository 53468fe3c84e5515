# Sourced by the benchmarks: a slow disk made of an ext4 image on a loop device, throttled
# with the cgroup v1 blkio controller for the processes put in its cgroup.
#
#   slow_disk_make DIR SIZE BPS IOPS   makes DIR/slow.img, mounts it at DIR/slow, and sets
#                                      slow_loop, slow_group and slow_throttled (a command
#                                      prefix that runs a command inside the cgroup: an
#                                      array, not a function, so that a daemon started with
#                                      it in the background is $! itself)
#   slow_disk_remove                   undoes it (call from the EXIT trap, after the
#                                      processes using it are stopped)

slow_loop=""
slow_group=""
slow_mount=""
slow_throttled=()

slow_disk_make() {
  local dir=$1 size=$2 bps=$3 iops=$4 blkio=/sys/fs/cgroup/blkio device rule
  [ -d "$blkio" ] || { echo "slow-disk: no cgroup v1 blkio controller at $blkio" >&2; return 1; }
  truncate -s "$size" "$dir/slow.img"
  mkfs.ext4 -q -F "$dir/slow.img"
  slow_loop=$(losetup --find --show "$dir/slow.img")
  slow_mount="$dir/slow"
  mkdir -p "$slow_mount"
  mount "$slow_loop" "$slow_mount"
  device=$(lsblk -dno MAJ:MIN "$slow_loop" | tr -d ' ')
  slow_group="$blkio/mirrorfs-bench-$$"
  mkdir "$slow_group"
  for rule in read_bps_device write_bps_device; do echo "$device $bps" > "$slow_group/blkio.throttle.$rule"; done
  for rule in read_iops_device write_iops_device; do echo "$device $iops" > "$slow_group/blkio.throttle.$rule"; done
  slow_throttled=(sh -c 'echo $$ > "$0/cgroup.procs"; exec "$@"' "$slow_group")
}

slow_disk_remove() {
  if [ -n "$slow_mount" ] && grep -q " $slow_mount " /proc/self/mountinfo; then umount -l "$slow_mount"; fi
  [ -n "$slow_loop" ] && losetup -d "$slow_loop" 2>/dev/null || true
  [ -n "$slow_group" ] && [ -d "$slow_group" ] && rmdir "$slow_group" 2>/dev/null || true
}
