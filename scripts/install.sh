#!/usr/bin/env bash
# Installs mirrorfs on this machine (as root): the binary, the helper mount(8) calls for
# fstab lines and `mount -t fuse.mirrorfs`, and the systemd units.
#
#   scripts/install.sh [PREFIX]      (default /usr/local)
#     PREFIX/bin/mirrorfs                   the release build
#     /sbin/mount.fuse.mirrorfs             -> PREFIX/bin/mirrorfs (mount(8) looks in /sbin)
#     /etc/systemd/system/mirrorfs@.service, mirrorfs-replica@.service
#                                           (their ExecStart names PREFIX/bin/mirrorfs)
#     PREFIX/share/man/man8/mirrorfs.8      the man page
#     /usr/share/bash-completion/completions/mirrorfs   bash completions
#   scripts/install.sh --uninstall [PREFIX]  removes them again
set -euo pipefail
cd "$(dirname "$0")/.."
uninstall=false
if [ "${1:-}" = --uninstall ]; then uninstall=true; shift; fi
prefix=${1:-/usr/local}
helper=/sbin/mount.fuse.mirrorfs
units=/etc/systemd/system
man=$prefix/share/man/man8/mirrorfs.8
completions=/usr/share/bash-completion/completions/mirrorfs

if $uninstall; then
  rm -f "$prefix/bin/mirrorfs" "$helper" "$units/mirrorfs@.service" "$units/mirrorfs-replica@.service" \
    "$man" "$completions"
  echo "install: removed mirrorfs from $prefix/bin, $helper and $units"
  exit 0
fi
scripts/install-deps.sh
cargo build --release --locked --quiet
install -D -m 0755 target/release/mirrorfs "$prefix/bin/mirrorfs"
ln -sfn "$prefix/bin/mirrorfs" "$helper"
for unit in systemd/*.service; do
  sed "s|/usr/local/bin/mirrorfs |$prefix/bin/mirrorfs |" "$unit" > "$units/$(basename "$unit")"
  chmod 0644 "$units/$(basename "$unit")"
done
mkdir -p "$(dirname "$man")" "$(dirname "$completions")"
"$prefix/bin/mirrorfs" manpage > "$man"
"$prefix/bin/mirrorfs" completions bash > "$completions"
if [ -d /run/systemd/system ]; then systemctl daemon-reload; fi
echo "install: $prefix/bin/mirrorfs, $helper, $units/mirrorfs@.service, $units/mirrorfs-replica@.service, $man, $completions"
