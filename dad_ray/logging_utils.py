"""Logging, set up once per process, with the Ray Train rank in every line when there is one."""

from __future__ import annotations

import logging
import os

_FORMAT = "%(asctime)s %(levelname).1s [%(rank)s] %(name)s: %(message)s"


class _RankFilter(logging.Filter):
    def __init__(self, rank: str) -> None:
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return True


def setup_logging(level: int | str | None = None, rank: int | None = None) -> None:
    """Configure the ``dad_ray`` logger (idempotent; call again with ``rank=`` inside a Train worker)."""
    level = level or os.environ.get("DAD_RAY_LOG_LEVEL", "INFO")
    logger = logging.getLogger("dad_ray")
    logger.setLevel(level)
    label = "driver" if rank is None else f"rank {rank}"
    for handler in logger.handlers:
        if getattr(handler, "_dad_ray", False):
            handler.filters.clear()
            handler.addFilter(_RankFilter(label))
            return
    handler = logging.StreamHandler()
    handler._dad_ray = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(_FORMAT, datefmt="%H:%M:%S"))
    handler.addFilter(_RankFilter(label))
    logger.addHandler(handler)
    logger.propagate = False
