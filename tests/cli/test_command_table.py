"""The `strata` group imports a command's module only when the command runs."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click

from cli.main import COMMANDS


def test_the_table_names_what_each_module_registers() -> None:
    for module, names in COMMANDS.items():
        group = click.Group()
        importlib.import_module(module).register(group)
        assert tuple(sorted(group.commands)) == tuple(sorted(names)), module


def test_a_local_command_does_not_load_the_registry_client(tmp_path) -> None:
    code = (
        "import sys; from click.testing import CliRunner; from cli.main import cli;"
        f"r = CliRunner().invoke(cli, ['--root', {str(tmp_path)!r}, 'images']);"
        "assert r.exit_code == 0, r.output;"
        "print(sorted(m for m in ('httpx', 'trio', 'cli.registry') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert out.stdout.strip() == "[]"
    code = "from click.testing import CliRunner; from cli.main import cli; r = CliRunner().invoke(cli, ['pull', '-h'])"
    code += "; print(r.output)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert "Download an image" in out.stdout
