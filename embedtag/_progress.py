"""One progress bar for long loops (embedding, indexing): ``with progress_bar(on, total, label) as advance``."""

from __future__ import annotations


class progress_bar:
    """A rich progress bar (items, items/s, ETA) when ``enabled``, else a no-op. ``advance(n)`` moves it."""

    def __init__(self, enabled: bool, total: int, label: str, unit: str = "clips", transient: bool = False):
        self.enabled, self.total, self.label, self.unit, self.transient = enabled, total, label, unit, transient
        self.bar = None

    def __enter__(self):
        if not self.enabled:
            return lambda n: None
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        self.bar = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                            MofNCompleteColumn(), TextColumn("{task.fields[rate]}"), TimeElapsedColumn(),
                            TextColumn("ETA"), TimeRemainingColumn(), transient=self.transient)
        self.bar.start()
        task = self.bar.add_task(self.label, total=self.total, rate="")

        def advance(n: int) -> None:
            self.bar.advance(task, n)
            speed = self.bar.tasks[0].speed
            self.bar.update(task, rate=f"{speed:.1f} {self.unit}/s" if speed else "")

        return advance

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
        return False
