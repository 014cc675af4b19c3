"""How a sample is stored in a shard, and the checks every sample passes before it is written.

- ``image``: RGB encoded as JPEG (quality 95, 4:4:4 chroma, the default: ~5x smaller and ~2x faster to decode than
  PNG) or lossless PNG (``image_format="png"``); the manifest records which. Decoding sniffs the format.
- ``depth``: raw little-endian float32 metres (lossless, decoded by ``np.frombuffer`` at no cost), compressed by the
  Parquet writer (zstd). 0 = invalid. Non-finite or negative source values become 0 when a sample is validated.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from dad_ray.data.errors import DataError

IMAGE_FORMATS = ("jpeg", "png")
JPEG_QUALITY = 95


def encode_image(image: np.ndarray, image_format: str = "jpeg") -> bytes:
    buf = io.BytesIO()
    pil = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8), mode="RGB")
    if image_format == "jpeg":
        pil.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    elif image_format == "png":
        pil.save(buf, format="PNG", compress_level=1)
    else:
        raise ValueError(f"image_format must be one of {IMAGE_FORMATS}, got {image_format!r}")
    return buf.getvalue()


def decode_image(data, name: str = "<bytes>") -> np.ndarray:
    """(H, W, 3) uint8 from encoded bytes (or any buffer); a truncated or unreadable image raises :class:`DataError`
    naming it."""
    try:
        with Image.open(io.BytesIO(data)) as pil:
            pil.load()  # forces a full decode: a truncated file fails here, not later
            return np.asarray(pil.convert("RGB"))
    except (OSError, ValueError, SyntaxError) as err:  # PIL's errors for unreadable/truncated data
        raise DataError(f"{name}: unreadable or truncated image ({err})") from err


def read_image_file(path: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a PNG/JPEG file; errors name the file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read image ({err})") from err
    return decode_image(data, path)


def read_depth_png(path: str, scale: float) -> np.ndarray:
    """Depth in metres from a 16-bit PNG storing ``metres * scale`` (NYU: millimetres, scale 1000)."""
    try:
        with Image.open(path) as pil:
            pil.load()
            raw = np.asarray(pil)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{path}: unreadable or truncated depth PNG ({err})") from err
    if raw.ndim != 2 or raw.dtype not in (np.uint16, np.int32, np.uint8):
        raise DataError(f"{path}: depth PNG must be single-channel 16-bit, got shape {raw.shape} dtype {raw.dtype}")
    return raw.astype(np.float32) / np.float32(scale)


def read_depth_npy(path: str) -> np.ndarray:
    try:
        depth = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: unreadable depth .npy ({err})") from err
    if depth.ndim != 2:
        raise DataError(f"{path}: depth .npy must be 2-D (H, W) metres, got shape {depth.shape}")
    return depth.astype(np.float32)


def encode_depth(depth: np.ndarray) -> bytes:
    return np.ascontiguousarray(depth, dtype="<f4").tobytes()


def decode_depth(data, height: int, width: int, name: str = "<bytes>") -> np.ndarray:
    """(H, W) float32 view of raw little-endian float32 bytes (or any buffer: no copy; read-only)."""
    size = memoryview(data).nbytes
    if size != 4 * height * width:
        raise DataError(f"{name}: depth has {size} bytes, expected 4 x {height} x {width}")
    return np.frombuffer(data, dtype="<f4").reshape(height, width)


def validate_sample(name: str, image: np.ndarray, depth: np.ndarray) -> np.ndarray:
    """Check one sample; returns the depth with non-finite / negative values set to 0 (invalid).

    Raises :class:`DataError` naming ``name`` for a non-RGB image, an RGB/depth size mismatch, or a depth map
    without a single valid pixel.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DataError(f"{name}: image must be (H, W, 3) uint8, got shape {image.shape} dtype {image.dtype}")
    if depth.shape != image.shape[:2]:
        raise DataError(f"{name}: RGB/depth size mismatch: image {image.shape[:2]} vs depth {depth.shape}")
    depth = np.asarray(depth, dtype=np.float32)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0.0))
    if not (depth > 0).any():
        raise DataError(f"{name}: depth map has no valid pixel (all zero, negative or non-finite)")
    return depth
