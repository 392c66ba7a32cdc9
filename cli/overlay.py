"""``strata-overlay``: a mount program with fuse-overlayfs's command line.

    strata-overlay [-f] [-d] -o lowerdir=L1:L2[,upperdir=U,workdir=W][,opts] MOUNTPOINT
    strata-overlay SOURCE MOUNTPOINT -o OPTS        (as called by mount.fuse3)

Without ``upperdir`` the mount is read-only.  ``\\:`` escapes a colon inside a lowerdir entry.
Extra options: ``strata_noindex`` (probe layers per lookup; also env ``STRATA_OVERLAY_NOINDEX=1``)
and ``strata_index=PATH`` (index cache file; default: inside the workdir).
"""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

PROG = "strata-overlay"

# accepted and ignored (fuse-overlayfs tuning knobs, kernel-overlay options, mount flags)
IGNORED_FLAGS = {
    "noacl",
    "default_permissions",
    "static_nlink",
    "ino32_t",
    "userxattr",
    "",
    "rw",
    "ro",
    "exec",
    "noexec",
    "atime",
    "noatime",
    "relatime",
    "strictatime",
    "nodiratime",
    "sync",
    "async",
    "dirsync",
    "auto",
    "noauto",
    "user",
    "nouser",
    "defaults",
    "_netdev",
    "nofail",
    "lazytime",
    "allow_root",
}
IGNORED_KEYS = {
    "fsync",
    "xino",
    "timeout",
    "threaded",
    "writeback",
    "fast_ino",
    "noxattrs",
    "plugins",
    "xattr_permissions",
    "redirect_dir",
    "index",
    "metacopy",
    "context",
    "fscontext",
    "defcontext",
    "rootcontext",
    "max_idle_threads",
    "force_mask",
    "max_read",
    "fsname",
    "subtype",
    "nfs_export",
}


class UsageError(Exception):
    pass


def split_escaped(s: str, sep: str) -> list[str]:
    """Split *s* on unescaped *sep*; a backslash escapes the next character."""
    if "\\" not in s:  # the common case, and a character loop over 1000 lowers costs ~10 ms
        return s.split(sep)
    out, cur, i = [], [], 0
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i + 1])
            i += 2
            continue
        if c == sep:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _split_options(s: str) -> list[str]:
    """Split an -o string on commas that are neither escaped nor inside double quotes
    (``context="...:c1,c2"``), keeping the escapes for later."""
    if "\\" not in s and '"' not in s:
        return s.split(",")
    out, cur, i = [], [], 0
    quoted = False
    while i < len(s):
        c = s[i]
        if c == "\\" and i + 1 < len(s):
            cur.append(s[i : i + 2])
            i += 2
            continue
        if c == '"':
            quoted = not quoted
        if c == "," and not quoted:
            out.append("".join(cur))
            cur = []
        else:
            cur.append(c)
        i += 1
    out.append("".join(cur))
    return out


def _identity_mapping(value: str) -> bool:
    nums = value.replace(":", " ").split()
    if len(nums) % 3 or not nums:
        raise UsageError(f"invalid id mapping '{value}'")
    try:
        triples = [tuple(int(x) for x in nums[i : i + 3]) for i in range(0, len(nums), 3)]
    except ValueError:
        raise UsageError(f"invalid id mapping '{value}'") from None
    return all(c == h for c, h, _n in triples)


def parse_args(argv: list[str]) -> dict:
    """Parse the command line into a dict of mount parameters (raises UsageError)."""
    opts: list[str] = []
    positional: list[str] = []
    foreground = debug = False
    it = iter(argv)
    for a in it:
        if a == "-o":
            try:
                opts.append(next(it))
            except StopIteration:
                raise UsageError("option -o needs an argument") from None
        elif a.startswith("-o"):
            opts.append(a[2:])
        elif a == "-f":
            foreground = True
        elif a == "-d":
            debug = foreground = True
        elif a in ("-h", "--help"):
            raise UsageError("usage: strata-overlay [-f] [-d] -o lowerdir=L1:L2[,upperdir=U,workdir=W] MOUNTPOINT")
        elif a.startswith("-") and a != "-":
            raise UsageError(f"unknown argument '{a}'")
        else:
            positional.append(a)
    if len(positional) == 2:  # mount.fuse3 style: SOURCE MOUNTPOINT
        positional = positional[1:]
    if len(positional) != 1:
        raise UsageError("expected exactly one mountpoint")
    res: dict = {
        "mountpoint": Path(positional[0]),
        "foreground": foreground,
        "debug": debug,
        "volatile": False,
        "lowers": None,
        "upper": None,
        "work": None,
        "index_cache": None,
        "use_index": not os.environ.get("STRATA_OVERLAY_NOINDEX"),
        "allow_other": os.geteuid() == 0,
        # a container's rootfs needs its device nodes and set-id programs, as with fuse-overlayfs
        "dev": True,
        "suid": True,
        "passthrough": True,
    }
    for group in opts:
        for o in _split_options(group):
            key, eq, value = o.partition("=")
            if key == "lowerdir":
                res["lowers"] = [p for p in split_escaped(value, ":") if p]
            elif key == "upperdir":
                res["upper"] = split_escaped(value, "\0")[0]
            elif key == "workdir":
                res["work"] = split_escaped(value, "\0")[0]
            elif key in ("uidmapping", "gidmapping"):
                if not _identity_mapping(value):
                    raise UsageError(f"{key}={value}: only identity id mappings are supported")
            elif key.startswith("squash_to_"):
                raise UsageError(f"{o}: squashing ownership is not supported")
            elif key == "allow_other":
                res["allow_other"] = True
            elif key in ("dev", "nodev", "suid", "nosuid"):
                res[key.removeprefix("no")] = not key.startswith("no")
            elif key == "strata_noindex":
                res["use_index"] = False
            elif key == "strata_index" and eq:
                res["index_cache"] = Path(value)
            elif key == "debug":
                res["debug"] = True
            elif key in ("passthrough", "nopassthrough") and not eq:
                res["passthrough"] = key == "passthrough"
            elif key == "volatile" and not eq:
                res["volatile"] = True
            elif (key in IGNORED_FLAGS and not eq) or (key in IGNORED_KEYS and eq):
                continue
            else:
                raise UsageError(f"unknown option '{o}'")
    if not res["lowers"]:
        raise UsageError("no lowerdir specified")
    if (res["upper"] is None) != (res["work"] is None):
        raise UsageError("upperdir and workdir must be given together")
    from unionfs.realpath import realpaths

    stats: list[os.stat_result | None] = []
    lowers = realpaths(res["lowers"], stats)
    for p, st in zip(res["lowers"], stats, strict=True):
        if st is None or not stat.S_ISDIR(st.st_mode):  # (resolved: lstat is stat)
            raise UsageError(f"lowerdir {p} does not exist or is not a directory")
    res["named"], res["lowers"], res["lower_stats"] = res["lowers"], lowers, stats
    for k in ("upper", "work"):
        if res[k] is not None:
            rp = os.path.realpath(res[k])
            if k == "upper" and not os.path.isdir(rp):
                raise UsageError(f"upperdir {res[k]} does not exist or is not a directory")
            res[k] = Path(rp)
    if not res["mountpoint"].is_dir():
        raise UsageError(f"mountpoint {res['mountpoint']} does not exist or is not a directory")
    return res


def main(argv: list[str] | None = None) -> int:
    from unionfs.mount import MountError, MountSpec, mount

    try:
        a = parse_args(sys.argv[1:] if argv is None else argv)
        spec = MountSpec(
            lowers=a["lowers"],
            lower_stats=a["lower_stats"],
            named=a["named"],
            upper=a["upper"],
            work=a["work"],
            index_cache=a["index_cache"],
            use_index=a["use_index"],
            allow_other=a["allow_other"],
            dev=a["dev"],
            suid=a["suid"],
            debug=a["debug"],
            volatile=a["volatile"],
            passthrough=a["passthrough"],
        )
        mount(spec, a["mountpoint"], foreground=a["foreground"])
    except (UsageError, MountError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    if argv is None and not a["foreground"]:
        # the mount answers and the server is on its own: skip the interpreter's teardown of pyfuse3,
        # trio and the index (~20 ms of the caller's wait)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
