"""Progress bars on a terminal (Rich, on stderr); silence when stderr is not a terminal."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator


@contextlib.contextmanager
def progress(
    total: int | None, description: str, *, unit: str | None = None
) -> Iterator[Callable[..., None]]:
    """Yield `advance(n=1, description=None)`. A no-op unless stderr is a terminal.
    With `unit` (e.g. "images"), the bar also shows the rate in units per second."""
    if not sys.stderr.isatty():
        yield lambda *a, **k: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class RateColumn(ProgressColumn):
        def render(self, task: object) -> Text:
            speed = getattr(task, "finished_speed", None) or getattr(task, "speed", None)
            return Text(f"{speed:.2f} {unit}/s" if speed else f"- {unit}/s", style="progress.data.speed")

    columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn()]
    if unit:
        columns.insert(3, RateColumn())
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)

        def advance(n: int = 1, description: str | None = None) -> None:
            if description:
                bar.update(task, advance=n, description=description)
            else:
                bar.update(task, advance=n)

        yield advance
