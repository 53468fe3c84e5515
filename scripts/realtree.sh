#!/usr/bin/env bash
# A real-tree workload on a mounted directory, as users run it: cp -a of a system tree
# with symlinks, then ACLs (access and default), xattrs and hard links given to parts of
# it; git clone of a local repository; tar -x of an archive (xattrs and ACLs kept); rsync
# -aHAX of another tree; then moves over directories, chown of symlinks, FIFOs, device
# nodes and a socket. It checks nothing itself: scripts/judge-copies.sh compares the
# copies afterwards.
#
#   scripts/realtree.sh MOUNTPOINT      (TREES="/usr/share/doc ..." to choose the trees)
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 1 ] && [ -d "$1" ] || { echo "usage: scripts/realtree.sh MOUNTPOINT" >&2; exit 2; }
mnt=$(cd "$1" && pwd)
trees=${TREES:-/usr/share/doc /usr/include/linux}
scratch=$(mktemp -d /tmp/mirrorfs-realtree.XXXXXX)
trap 'rm -rf "$scratch"' EXIT
root="$mnt/realtree"
mkdir "$root"
started=$SECONDS

# cp -a: modes, owners, times, symlinks and the hard links among what is copied.
mkdir "$root/cp"
for tree in $trees; do
  [ -d "$tree" ] && cp -a "$tree" "$root/cp/"
done
# ACLs and xattrs on some of it, hard links between parts of it.
n=0
while IFS= read -r -d '' path; do
  n=$((n + 1))
  case $((n % 7)) in
    0) setfacl -m u:nobody:r,g:nogroup:rw "$path" ;;
    1) setfattr -n user.mirrorfs.tag -v "file-$n" "$path" ;;
    2) ln "$path" "$path.hardlink" ;;
    3) chmod 0600 "$path" ;;
  esac
done < <(find "$root/cp" -type f -size -64k -print0 | head -z -n 700)
while IFS= read -r -d '' dir; do
  setfacl -d -m u::rwx,g::r-x,o::--- "$dir"
  setfacl -m u:nobody:rx "$dir"
  touch "$dir/made-under-default-acl"
  mkdir "$dir/dir-under-default-acl"
done < <(find "$root/cp" -mindepth 2 -type d -print0 | head -z -n 40)
# Symlinks chowned (chown -h), as cp -a of any tree with symlinks does as root.
find "$root/cp" -type l -print0 | head -z -n 200 | xargs -0 -r chown -h nobody:nogroup

# git clone of a local repository (this project's, when run from a clone).
if [ -d .git ] && command -v git >/dev/null; then
  git clone -q --no-hardlinks "$PWD" "$root/git"
  git -C "$root/git" log --oneline -1 > /dev/null
fi

# tar -x of an archive, with xattrs and ACLs.
first=${trees%% *}
tar -C "$(dirname "$first")" --xattrs --acls -cf "$scratch/tree.tar" "$(basename "$first")"
mkdir "$root/tar"
tar -C "$root/tar" --xattrs --xattrs-include='*' --acls -xpf "$scratch/tree.tar"

# rsync -aHAX of a tree with hard links, ACLs and xattrs (the one made above).
rsync -aHAX "$root/cp/" "$root/rsync/"

# Names moved over names: a directory over an empty one, a file over a file.
mkdir -p "$root/moves/a/inner" "$root/moves/b"
echo a > "$root/moves/a/inner/f"
mv -T "$root/moves/a" "$root/moves/b"
echo one > "$root/moves/x"
echo two > "$root/moves/y"
mv "$root/moves/x" "$root/moves/y"
# Special files.
mkfifo -m 0640 "$root/fifo"
mknod -m 0600 "$root/null" c 1 3
mknod -m 0600 "$root/loop" b 7 200
python3 -c 'import socket, sys; s = socket.socket(socket.AF_UNIX); s.bind(sys.argv[1])' "$root/socket"
chown -h nobody:nogroup "$root/fifo"
chmod 1777 "$root/moves"
files=$(find "$root" | wc -l)
echo "realtree: $files paths in $((SECONDS - started)) s"
