"""System calls that the os module lacks, through ctypes (loaded when a write first needs them:
ctypes costs every mount ~2.5 ms)."""

from __future__ import annotations

import functools
import os

AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


@functools.cache
def _libc():
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    return libc


def _raise_errno() -> None:
    import ctypes

    e = ctypes.get_errno()
    raise OSError(e, os.strerror(e))


def renameat2(src: bytes, dst: bytes, flags: int, src_dir_fd: int = AT_FDCWD, dst_dir_fd: int = AT_FDCWD) -> None:
    """renameat2(2) (os.rename has no flags)."""
    if _libc().renameat2(src_dir_fd, src, dst_dir_fd, dst, flags) != 0:
        _raise_errno()


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    """fallocate(2) with its mode (os.posix_fallocate has none)."""
    if _libc().fallocate(fd, mode, offset, length) != 0:
        _raise_errno()
