#!/usr/bin/env bash
# The main job on its embedded default: installs what is missing, builds mirrorfs, mounts
# the demo volume of mount-configs/demo.toml (origin /var/tmp/mirrorfs-demo/origin at
# /var/tmp/mirrorfs-demo/mnt), and shows files going through it. Unmounts at the end
# unless --keep is given.
#
#   scripts/demo.sh [--keep]
set -euo pipefail
cd "$(dirname "$0")/.."
keep=false
[ "${1:-}" = "--keep" ] && keep=true

scripts/install-deps.sh
cargo build --release --locked --quiet
mirrorfs="$PWD/target/release/mirrorfs"
config="$PWD/mount-configs/demo.toml"
demo=/var/tmp/mirrorfs-demo
mkdir -p "$demo/origin" "$demo/mnt"
if grep -q " $demo/mnt " /proc/self/mountinfo; then
  "$mirrorfs" unmount "$demo/mnt"
fi
[ -f "$demo/origin/README.txt" ] || echo "This file was already in the origin." > "$demo/origin/README.txt"

"$mirrorfs" mount --config "$config" 2>"$demo/daemon.log" &
daemon=$!
for _ in $(seq 100); do
  grep -q " $demo/mnt .* fuse.mirrorfs " /proc/self/mountinfo && break
  kill -0 "$daemon" 2>/dev/null || { cat "$demo/daemon.log" >&2; exit 1; }
  sleep 0.1
done
if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
say() { printf '\n%s$ %s%s\n' "$bold" "$*" "$plain"; eval "$*"; }

echo "mirrorfs serves $demo/origin at $demo/mnt (daemon pid $daemon)"
say "cat $demo/mnt/README.txt"
say "echo 'written through the mount' > $demo/mnt/hello.txt"
say "cat $demo/origin/hello.txt"
say "mkdir -p $demo/mnt/photos && seq 1 100000 > $demo/mnt/photos/numbers.txt"
say "mv $demo/mnt/photos/numbers.txt $demo/mnt/photos/renamed.txt"
say "ls -li $demo/mnt/photos $demo/origin/photos"
say "sha256sum $demo/mnt/photos/renamed.txt $demo/origin/photos/renamed.txt"
say "grep fuse.mirrorfs /proc/self/mountinfo"
say "$mirrorfs log --config $config | tail -n 6"
say "$mirrorfs status --config $config"

if $keep; then
  echo
  echo "Still mounted. Unmount with: $mirrorfs unmount $demo/mnt"
else
  say "$mirrorfs unmount $demo/mnt"
  wait "$daemon"
  echo
  echo "Unmounted; the files stay in $demo/origin."
fi
