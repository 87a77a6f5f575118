"""The one way a long loop reports progress: a bar on a terminal, plain lines anywhere else.

A rich bar redraws itself in place, which only a terminal can show: in a CI log, a notebook or a ``nohup`` file
it either vanishes (``transient``) or floods. So when stderr is not a terminal, :func:`track` prints plain lines
such as ``sweeping: 12/40 (30%), 95 s elapsed, ~220 s left``, at most one every :data:`PLAIN_EVERY` seconds plus
the last one: a 40-minute sweep writes a few hundred lines, not thousands.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TextIO, TypeVar

T = TypeVar("T")

PLAIN_EVERY = 10.0
"""Seconds between two plain progress lines (the last one is always printed)."""


def is_terminal(stream: TextIO) -> bool:
    """Whether ``stream`` is an interactive terminal that can redraw a bar (not a pipe, file or notebook)."""
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


def plain_line(description: str, done: int, total: int, elapsed: float) -> str:
    """``"sweeping: 12/40 (30%), 95 s elapsed, ~220 s left"``; the last line has no estimate.

    Example:
        >>> plain_line("sweeping", 12, 40, 95.2)
        'sweeping: 12/40 (30%), 95 s elapsed, ~222 s left'
    """
    line = f"{description}: {done}/{total} ({done / total:.0%}), {elapsed:.0f} s elapsed"
    if done < total:
        line += f", ~{elapsed / done * (total - done):.0f} s left"  # the mean time per item so far
    return line


def track(
    items: Sequence[T],
    description: str,
    *,
    show: bool,
    stream: TextIO | None = None,
    every: float = PLAIN_EVERY,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[T]:
    """Yield ``items``, reporting progress on ``stream`` (default: ``sys.stderr`` at call time) when ``show``.

    On a terminal: a rich bar that disappears when done. Elsewhere: :func:`plain_line` after an item when
    ``every`` seconds have passed since the last line, and after the last item. An item counts as done when the
    loop asks for the next one.

    Example:
        >>> for cell in track(cells, "sweeping", show=len(cells) > 4):
        ...     run(cell)
    """
    if not show:
        yield from items
        return
    stream = sys.stderr if stream is None else stream
    if is_terminal(stream):
        from rich.console import Console
        from rich.progress import track as rich_track

        yield from rich_track(items, description=description, transient=True, console=Console(file=stream))
        return
    total = len(items)
    start = last = clock()
    for done, item in enumerate(items, 1):
        yield item
        now = clock()
        if done == total or now - last >= every:
            print(plain_line(description, done, total, now - start), file=stream, flush=True)
            last = now
