from __future__ import annotations

import os
import shutil

import pytest

from .helpers import Mounts

needs_fuse = pytest.mark.skipif(
    not os.path.exists("/dev/fuse") or os.geteuid() != 0 or shutil.which("fusermount3") is None,
    reason="needs root, /dev/fuse and fusermount3",
)


@pytest.fixture
def mounts():
    m = Mounts()
    try:
        yield m
    finally:
        m.close()
