#!/usr/bin/env python3
"""Compares directory trees exactly, independently of mirrorfs's own code: the judge that
says whether a replica's copy (or a replayed origin) equals the origin.

    scripts/treecmp.py [--no-owner] [--ignore NAME]... REFERENCE COPY [COPY...]

For every path under each root (the root itself included): its kind, permission bits,
owner and group, size, content (sha256), symlink target, device number, modification
time (files, directories and symlinks, to the nanosecond), every extended attribute with
its value (ACLs included: system.posix_acl_access and _default), and which paths are
names of one file (hard links). Prints each difference, one per line, and a summary;
exits 0 when every copy equals the reference, 1 when one differs, 2 on bad usage.
"""

import argparse
import hashlib
import os
import stat
import sys

SHOWN_MAX = 50


def xattrs(path):
    """Every extended attribute of `path` (not following a symlink), as name -> value."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    found = {}
    for name in sorted(names):
        try:
            found[name] = os.getxattr(path, name, follow_symlinks=False).hex()
        except OSError as error:
            found[name] = f"<unreadable: {error.strerror}>"
    return found


def content_hash(path):
    digest = hashlib.sha256()
    with open(path, "rb", buffering=0) as file:
        while True:
            block = file.read(1 << 20)
            if not block:
                return digest.hexdigest()
            digest.update(block)


def describe(root, relative, owners):
    """What one path is, as comparable fields."""
    path = os.path.join(root, relative) if relative else root
    meta = os.lstat(path)
    kind = stat.S_IFMT(meta.st_mode)
    fields = {"kind": stat.filemode(meta.st_mode)[0]}
    if kind != stat.S_IFLNK:
        fields["mode"] = oct(stat.S_IMODE(meta.st_mode))
        fields["xattrs"] = xattrs(path)
    if owners:
        fields["owner"] = f"{meta.st_uid}:{meta.st_gid}"
    fields["mtime"] = meta.st_mtime_ns
    if kind == stat.S_IFREG:
        fields["size"] = meta.st_size
        fields["content"] = content_hash(path)
    elif kind == stat.S_IFLNK:
        fields["target"] = os.readlink(path)
    elif kind in (stat.S_IFCHR, stat.S_IFBLK):
        fields["rdev"] = meta.st_rdev
    return fields, (meta.st_dev, meta.st_ino) if kind == stat.S_IFREG and meta.st_nlink > 1 else None


def walk(root, ignored, owners):
    """Every path under `root` (relative, "" for the root) with its fields, and for each
    path of a file with several names, the first of them (in sorted order)."""
    described = {}
    inodes = {}
    pending = [""]
    while pending:
        relative = pending.pop()
        fields, inode = describe(root, relative, owners)
        described[relative] = fields
        if inode is not None:
            inodes.setdefault(inode, []).append(relative)
        if fields["kind"] == "d":
            directory = os.path.join(root, relative) if relative else root
            for entry in sorted(os.listdir(directory)):
                if entry in ignored and not relative:
                    continue
                pending.append(os.path.join(relative, entry) if relative else entry)
    links = {}
    for names in inodes.values():
        names.sort()
        for name in names:
            links[name] = names[0]
    return described, links


def compare(reference, copy, ignored, owners):
    """The differences of `copy` from `reference`, as lines."""
    ours, our_links = walk(reference, ignored, owners)
    theirs, their_links = walk(copy, ignored, owners)
    differences = []
    for relative in sorted(set(ours) | set(theirs)):
        shown = "/" + relative
        if relative not in theirs:
            differences.append(f"{shown}: missing in the copy")
            continue
        if relative not in ours:
            differences.append(f"{shown}: only in the copy")
            continue
        a, b = ours[relative], theirs[relative]
        for field in sorted(set(a) | set(b)):
            if a.get(field) != b.get(field):
                differences.append(
                    f"{shown}: {field}: reference {a.get(field)!r}, copy {b.get(field)!r}"
                )
        if our_links.get(relative) != their_links.get(relative):
            differences.append(
                f"{shown}: hard link of: reference {our_links.get(relative)!r}, "
                f"copy {their_links.get(relative)!r}"
            )
    return differences, len(ours)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--no-owner", action="store_true", help="do not compare owners")
    parser.add_argument("--ignore", action="append", default=[], help="a top-level name to skip")
    parser.add_argument("reference")
    parser.add_argument("copies", nargs="+")
    args = parser.parse_args()
    for root in [args.reference, *args.copies]:
        if not os.path.isdir(root):
            print(f"treecmp: {root} is not a directory", file=sys.stderr)
            return 2
    failed = False
    for copy in args.copies:
        differences, paths = compare(args.reference, copy, set(args.ignore), not args.no_owner)
        for line in differences[:SHOWN_MAX]:
            print(f"treecmp: {copy}{line}")
        if len(differences) > SHOWN_MAX:
            print(f"treecmp: ... and {len(differences) - SHOWN_MAX} more")
        verdict = "equal" if not differences else f"{len(differences)} difference(s)"
        print(f"treecmp: {copy} against {args.reference}: {paths} paths, {verdict}")
        failed |= bool(differences)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
