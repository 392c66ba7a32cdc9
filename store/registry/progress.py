"""How pull and push report progress: Docker-style lines, or live bars on a terminal (rich)."""

from __future__ import annotations

import sys
from typing import TextIO


class Reporter:
    """Receives progress events; this base class prints nothing (`-q`)."""

    def header(self, text: str) -> None:
        """A line before the layer lines (`latest: Pulling from library/x`)."""

    def layer(self, short_id: str, status: str, current: int | None = None, total: int | None = None) -> None:
        """A layer's state changed: `Waiting`, `Downloading`, `Pushing` (with bytes), or a final state."""

    def line(self, text: str) -> None:
        """A line after the layer lines (`Digest: …`, `Status: …`)."""

    def close(self) -> None:
        """Stop any live display."""


FINAL = {"Already exists", "Pull complete", "Pushed", "Layer already exists"}


class TextReporter(Reporter):
    """Plain lines, one per layer when it reaches a final state (what Docker prints off a terminal)."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stdout

    def header(self, text: str) -> None:
        print(text, file=self.out, flush=True)

    def layer(self, short_id: str, status: str, current: int | None = None, total: int | None = None) -> None:
        if status in FINAL or status.startswith("Mounted from"):
            print(f"{short_id}: {status}", file=self.out, flush=True)

    def line(self, text: str) -> None:
        print(text, file=self.out, flush=True)


class RichReporter(Reporter):
    """A live table of layers with progress bars, left on screen in its final state."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console()
        self.progress = self._new_progress()
        self.tasks: dict[str, int] = {}
        self.started = False

    def _new_progress(self):  # type: ignore[no-untyped-def]
        from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            console=self.console,
            auto_refresh=True,
            refresh_per_second=8,
        )

    def header(self, text: str) -> None:
        self.console.print(text, highlight=False, soft_wrap=True)

    def layer(self, short_id: str, status: str, current: int | None = None, total: int | None = None) -> None:
        if not self.started:
            self.progress.start()
            self.started = True
        desc = f"{short_id}: {status}"
        final = status in FINAL or status.startswith("Mounted from")
        if short_id not in self.tasks:
            self.tasks[short_id] = self.progress.add_task(desc, total=total, completed=current or 0)
        task = self.tasks[short_id]
        kwargs: dict = {"description": desc}
        if total is not None:
            kwargs["total"] = total
        if current is not None:
            kwargs["completed"] = current
        if final:
            t = self.progress.tasks[self.progress.task_ids.index(task)]
            kwargs["total"] = t.total or 1
            kwargs["completed"] = t.total or 1
        self.progress.update(task, **kwargs)

    def line(self, text: str) -> None:
        self.close()
        self.console.print(text, highlight=False, soft_wrap=True)

    def close(self) -> None:
        if self.started:
            self.progress.stop()
            self.started = False
            self.tasks.clear()
            self.progress = self._new_progress()


def for_terminal(quiet: bool) -> Reporter:
    """The reporter a command should use: nothing with -q, bars on a terminal, lines otherwise."""
    if quiet:
        return Reporter()
    return RichReporter() if sys.stdout.isatty() else TextReporter()
