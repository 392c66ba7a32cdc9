"""A pull SIGKILLed at its file-changing system calls leaves a store that the next command finds
consistent, and the next pull completes (the kill points as tests/store/test_killpoints.py finds
and hits them)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.helpers import strata
from tests.store.test_killpoints import _survives

from .conftest import RegistryInfo


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")
def test_killed_pull_leaves_a_consistent_store(registry: RegistryInfo, tmp_path: Path) -> None:
    assert registry.work is not None
    empty = tmp_path / "empty"
    strata(empty, "images")
    ref = f"{registry.host}/layered"
    work = tmp_path / "work"
    work.mkdir()
    # (its downloads run in threads, whose system calls interleave differently from run to run:
    # fewer of the traced points come again)
    n = _survives(empty, work, registry.work / "oci" / "layered", ["pull", ref], [["pull", ref]], hit=0.5)
    print(f"pull: killed at {n} points, the store survived each")
