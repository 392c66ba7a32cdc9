"""FUSE passthrough: which open files the kernel reads, writes and maps itself, from which file.

With passthrough (kernel >= 6.9, libfuse >= 3.16 and the pyfuse3 that scripts/setup.sh builds),
an OPEN or CREATE reply may name a backing file registered on the session; the kernel then serves
that open's data straight from it, with no request to this server. The kernel holds one backing
file per inode while any passthrough open of it lasts, and fails (EIO) every open of that inode
that is not passed through to the same file, or that would pass through while page-cached opens
of it last. So:

- Only files of the upper layer are passed through. A lower file may be copied up while it is
  open: the open for writing must then reach the upper file while the reading one still holds
  the lower file, and the kernel would refuse one of them. Lower files keep the page cache.
- While passthrough opens of an inode are held, a new open shares their backing file (the upper
  file of a node never changes); while page-cached ones are (opened before the copy-up), a new
  open is page-cached too; otherwise a new open registers its own descriptor.

Where the kernel refuses a registration (no CAP_SYS_ADMIN in the initial namespace, a backing
file on a stacked file system), the mount goes on without passthrough, as before.
"""

from __future__ import annotations

import logging

import pyfuse3

log = logging.getLogger(__name__)


class Passthrough:
    """The backing files registered for the open files of one mount."""

    def __init__(self, wanted: bool) -> None:
        self.wanted = wanted and getattr(pyfuse3, "passthrough_built", False)
        self.refused = False
        self.by_ino: dict[int, list[int]] = {}  # inode -> [backing id, opens]
        self.of_fh: dict[int, int] = {}  # passed-through handle -> its inode

    @property
    def active(self) -> bool:
        """Asked for, negotiated with the kernel at INIT, and never refused since."""
        return self.wanted and not self.refused and getattr(pyfuse3, "passthrough_enabled", False)

    def attach(self, ino: int, fd: int, upper: bool, held: int) -> int:
        """The backing id that serves the new open *fd* of inode *ino* (0: none, the page cache);
        *upper* says *fd* is a file of the upper layer, *held* how many other opens *ino* has."""
        entry = self.by_ino.get(ino)
        if entry is not None:
            entry[1] += 1
            self.of_fh[fd] = ino
            return entry[0]
        if held or not upper or not self.active:
            return 0
        try:
            backing_id = pyfuse3.backing_open(fd)
        except OSError as e:
            self.refused = True
            log.warning("FUSE passthrough refused (%s): serving file data through the server", e.strerror)
            return 0
        self.by_ino[ino] = [backing_id, 1]
        self.of_fh[fd] = ino
        return backing_id

    def detach(self, fh: int) -> None:
        """The handle *fh* is released: the last open of an inode drops its backing file."""
        ino = self.of_fh.pop(fh, None)
        if ino is None:
            return
        entry = self.by_ino[ino]
        entry[1] -= 1
        if entry[1] == 0:
            del self.by_ino[ino]
            try:
                pyfuse3.backing_close(entry[0])
            except OSError as e:  # (the kernel dropped it with the session: nothing leaks)
                log.warning("closing backing file %d: %s", entry[0], e.strerror)
