"""The collector's settings for a long-running process (serve, exec-filter, filter workers)."""

from __future__ import annotations

import gc


def settle_after_start() -> None:
    """Call once the schemas and validators are loaded: they live as long as the process,
    so `gc.freeze()` moves them out of the way of every later collection (each full one
    would otherwise walk them all again)."""
    gc.collect()
    gc.freeze()
