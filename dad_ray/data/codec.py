"""How a sample is stored in a shard, and the checks every sample passes before it is written.

- ``image``: RGB encoded as JPEG (quality 95, 4:4:4 chroma, the default: ~5x smaller and ~2x faster to decode than
  PNG) or lossless PNG (``image_format="png"``); the manifest records which. Decoding sniffs the format.
- An image that arrives as an encoded file (JPEG, PNG, WebP: :class:`ImageFile`) is stored as its ORIGINAL bytes:
  lossless with respect to the source and the fastest conversion; it is fully decoded once to check it (a truncated
  file fails naming it) and to learn its size. Only ``--max-side`` (a resized copy) re-encodes it.
- ``depth``: raw little-endian float32 metres (lossless, decoded by ``np.frombuffer`` at no cost), compressed by the
  Parquet writer (zstd). 0 = invalid. Non-finite or negative source values become 0 when a sample is validated.
  Depth-less (unlabeled) samples store null.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

from dad_ray.data.errors import DataError

IMAGE_FORMATS = ("jpeg", "png")
JPEG_QUALITY = 95
IMAGE_FILE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp")  # encoded image files stored as they are


@dataclass(frozen=True)
class ImageFile:
    """An encoded image file's bytes (JPEG, PNG, WebP), kept as they are; ``name`` (file or archive member) for
    messages."""

    data: bytes
    name: str

    def decode(self) -> np.ndarray:
        return decode_image(self.data, self.name)


def checked_size(image: ImageFile) -> tuple[int, int]:
    """``(height, width)`` of an encoded image after decoding it completely (a truncated or corrupt file raises
    :class:`DataError` naming it). JPEGs are decoded at 1/8 scale (libjpeg's DCT scaling still reads every
    coefficient, so truncation is caught) — about 40 % less work for SA-1B-size photos."""
    try:
        with Image.open(io.BytesIO(image.data)) as pil:
            size = pil.size
            if pil.format == "JPEG":
                pil.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            pil.load()
            if pil.mode not in ("RGB", "RGBA", "L", "P", "LA", "CMYK", "YCbCr"):
                raise DataError(f"{image.name}: unsupported image mode {pil.mode} (expected 8-bit RGB or gray)")
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{image.name}: unreadable or truncated image ({err})") from err
    return size[1], size[0]


def resized_copy(image: ImageFile, max_side: int, image_format: str) -> tuple[bytes, int, int]:
    """The image scaled down (aspect kept, bicubic) so that its longer side is at most ``max_side``, re-encoded as
    ``image_format``; an image already small enough keeps its original bytes. Returns (bytes, height, width)."""
    height, width = checked_size(image)
    if max(height, width) <= max_side:
        return image.data, height, width
    scale = max_side / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    try:
        with Image.open(io.BytesIO(image.data)) as pil:
            pil.draft("RGB", size)  # JPEG: decode at the smallest DCT scale still >= the target (no-op otherwise)
            small = pil.convert("RGB").resize(size, Image.Resampling.BICUBIC, reducing_gap=None)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{image.name}: unreadable or truncated image ({err})") from err
    return encode_image(np.asarray(small), image_format), size[1], size[0]


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


def read_image_bytes(path: str) -> ImageFile:
    """A local image file's original bytes; errors name the file."""
    try:
        with open(path, "rb") as f:
            return ImageFile(f.read(), path)
    except OSError as err:
        raise DataError(f"{path}: cannot read image ({err})") from err


def read_depth_png(path: str, scale: float) -> np.ndarray:
    """Depth in metres from a 16-bit PNG storing ``metres * scale`` (NYU: millimetres, scale 1000)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(f"{path}: cannot read depth PNG ({err})") from err
    return decode_depth_png(data, scale, path)


def decode_depth_png(data: bytes, scale: float, name: str) -> np.ndarray:
    """Depth in metres from the bytes of a 16-bit PNG storing ``metres * scale`` (NYU, ScanNet: millimetres, scale
    1000; KITTI: scale 256). 0 stays 0 (missing)."""
    try:
        with Image.open(io.BytesIO(data)) as pil:
            pil.load()
            raw = np.asarray(pil)
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{name}: unreadable or truncated depth PNG ({err})") from err
    if raw.ndim != 2 or raw.dtype not in (np.uint16, np.int32, np.uint8):
        raise DataError(f"{name}: depth PNG must be single-channel 16-bit, got shape {raw.shape} dtype {raw.dtype}")
    return raw.astype(np.float32) / np.float32(scale)


def read_depth_npy(path: str) -> np.ndarray:
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as err:
        raise DataError(f"{path}: unreadable depth .npy ({err})") from err
    return decode_npy(data, path, "depth")


def decode_npy(data: bytes, name: str, what: str = "depth") -> np.ndarray:
    """A 2-D float32 array from ``.npy`` bytes; (H, W, 1) is squeezed to (H, W) (DIODE's layout)."""
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError) as err:
        raise DataError(f"{name}: unreadable {what} .npy ({err})") from err
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    if array.ndim != 2:
        raise DataError(f"{name}: {what} .npy must be 2-D (H, W) or (H, W, 1), got shape {array.shape}")
    return array.astype(np.float32)


def encode_depth(depth: np.ndarray) -> bytes:
    return np.ascontiguousarray(depth, dtype="<f4").tobytes()


def decode_depth(data, height: int, width: int, name: str = "<bytes>") -> np.ndarray:
    """(H, W) float32 view of raw little-endian float32 bytes (or any buffer: no copy; read-only)."""
    size = memoryview(data).nbytes
    if size != 4 * height * width:
        raise DataError(f"{name}: depth has {size} bytes, expected 4 x {height} x {width}")
    return np.frombuffer(data, dtype="<f4").reshape(height, width)


def validate_depth(name: str, depth: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Check one sample's depth against its image size ``(H, W)``; returns it as float32 with non-finite / negative
    values set to 0 (invalid). Raises :class:`DataError` naming ``name`` for a size mismatch or a depth map without a
    single valid pixel."""
    if depth.shape != tuple(size):
        raise DataError(f"{name}: RGB/depth size mismatch: image {tuple(size)} vs depth {depth.shape}")
    depth = np.asarray(depth, dtype=np.float32)
    depth = np.where(np.isfinite(depth) & (depth > 0), depth, np.float32(0.0))
    if not (depth > 0).any():
        raise DataError(f"{name}: depth map has no valid pixel (all zero, negative or non-finite)")
    return depth
