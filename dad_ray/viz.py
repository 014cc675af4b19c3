"""Depth maps as images: :func:`colorize` (matplotlib colormaps) and :func:`make_grid` (rows of images)."""

from __future__ import annotations

import matplotlib
import numpy as np

DEFAULT_PERCENTILES = (2.0, 98.0)


def colorize(
    disparity: np.ndarray, cmap: str = "Spectral_r", vmin: float | None = None, vmax: float | None = None
) -> np.ndarray:
    """(H, W) float map → uint8 (H, W, 3) RGB through a matplotlib colormap.

    The range defaults to the 2nd–98th percentile of the finite values (robust to outliers); values outside are
    clipped; non-finite pixels are black. A constant map gets the colormap's low end.
    """
    d = np.asarray(disparity, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"colorize expects an (H, W) map, got shape {d.shape}")
    finite = np.isfinite(d)
    if vmin is None or vmax is None:
        values = d[finite]
        lo, hi = np.percentile(values, DEFAULT_PERCENTILES) if values.size else (0.0, 1.0)
        vmin = float(lo) if vmin is None else vmin
        vmax = float(hi) if vmax is None else vmax
    scale = vmax - vmin
    norm = np.clip((d - vmin) / scale, 0.0, 1.0) if scale > 0 else np.zeros_like(d)
    rgb = matplotlib.colormaps[cmap](np.where(finite, norm, 0.0), bytes=True)[..., :3]
    rgb[~finite] = 0
    return np.ascontiguousarray(rgb, dtype=np.uint8)


def make_grid(rows: list[list[np.ndarray]], pad: int = 2, fill: int = 255) -> np.ndarray:
    """Rows of uint8 images ((H, W, 3) or (H, W) grey) → one uint8 (H_total, W_total, 3) image.

    Every cell is placed top-left in a slot as large as the largest cell, with ``pad`` pixels of ``fill`` between
    slots; short rows are filled with blank slots.
    """
    if not rows or not any(rows):
        raise ValueError("make_grid needs at least one image")
    cells: list[list[np.ndarray]] = []
    for r, row in enumerate(rows):
        cells.append([])
        for c, image in enumerate(row):
            image = np.asarray(image)
            if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] != 3):
                raise ValueError(
                    f"make_grid cell [{r}][{c}]: expected uint8 (H, W, 3) or (H, W), got {image.dtype} {image.shape}"
                )
            cells[-1].append(np.repeat(image[..., None], 3, axis=2) if image.ndim == 2 else image)
    slot_h = max(im.shape[0] for row in cells for im in row)
    slot_w = max(im.shape[1] for row in cells for im in row)
    n_cols = max(len(row) for row in cells)
    grid = np.full((len(cells) * (slot_h + pad) - pad, n_cols * (slot_w + pad) - pad, 3), fill, dtype=np.uint8)
    for r, row in enumerate(cells):
        for c, image in enumerate(row):
            y, x = r * (slot_h + pad), c * (slot_w + pad)
            grid[y : y + image.shape[0], x : x + image.shape[1]] = image
    return grid
