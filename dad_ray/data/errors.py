"""The one exception type of the data path: its message names the file, .mat index or row at fault."""

from __future__ import annotations


class DataError(ValueError):
    """Bad input data (unreadable image, size mismatch, no valid depth, missing file, bad manifest, ...)."""


class StaleShardsError(DataError):
    """The output directory holds shards made from another source or with other options."""
