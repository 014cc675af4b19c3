"""The five zero-shot benchmarks in the layout the affine-invariant depth papers share (Marigold, GeoBench, Lotus,
Distill-Any-Depth's evaluation configs): one directory or uncompressed ``.tar`` per data set (members may be
``./``-prefixed) plus a filename list whose lines are ``rgb depth [third]`` paths relative to it.

| format    | depth file                                   | third column                 | stored                    |
|-----------|----------------------------------------------|------------------------------|---------------------------|
| `nyu`     | 16-bit PNG, millimetres                      | filled depth (not used)      | as is                     |
| `kitti`   | 16-bit PNG, metres x 256; ``None`` = no GT   | focal length (not used)      | benchmark crop 352 x 1216 |
| `diode`   | ``.npy`` metres, (H, W, 1) or (H, W)         | ``.npy`` validity mask       | mask 0 -> depth 0         |
| `eth3d`   | raw little-endian float32, H x W of the RGB  | —                            | ``inf`` -> 0              |
| `scannet` | 16-bit PNG, millimetres                      | —                            | as is                     |

0 (and any non-finite or negative value) is invalid depth. RGB files are stored as their original bytes, except
KITTI's: its rows are stored already cropped to the KITTI benchmark crop (352 x 1216, bottom-centred: top =
H - 352, left = (W - 1216) // 2, as Marigold's ``kitti_benchmark_crop``), the crop re-encoded as lossless PNG, so
every reader (``read_shards``, evaluation, prediction) sees the benchmark's pixels at the benchmark's size with no
crop step of its own; the manifest records the crop. KITTI list rows whose depth is ``None`` (the Eigen test list
has 45 among its 697) are left out and counted (manifest ``rows_without_depth``); in the other formats a ``None``
depth is an error naming the line.
"""

from __future__ import annotations

import io
import posixpath
from dataclasses import dataclass, field

import numpy as np
from PIL import Image

from dad_ray.config.paths import absolute_path, is_uri
from dad_ray.data import storage
from dad_ray.data.codec import ImageFile, decode_depth_png, decode_npy, encode_image
from dad_ray.data.errors import DataError
from dad_ray.data.sources.files import FileTree

BENCHMARKS = ("nyu", "kitti", "diode", "eth3d", "scannet")
KITTI_CROP = (352, 1216)  # (height, width) of the KITTI benchmark crop
PNG_DEPTH_SCALE = {"nyu": 1000.0, "scannet": 1000.0, "kitti": 256.0}  # stored value = metres x scale


def kitti_crop_box(height: int, width: int, name: str) -> tuple[int, int, int, int]:
    """(top, left, bottom, right) of the KITTI benchmark crop of an H x W frame (bottom-centred)."""
    ch, cw = KITTI_CROP
    if height < ch or width < cw:
        raise DataError(f"{name}: {height}x{width} is smaller than the KITTI benchmark crop {ch}x{cw}")
    top, left = height - ch, (width - cw) // 2
    return top, left, top + ch, left + cw


def read_list(path: str, fmt: str) -> tuple[list[tuple[str, str, str]], int]:
    """The rows ``(rgb, depth, third or "")`` of a filename list (local or URI) and how many KITTI rows without
    depth were left out; a malformed line is an error naming the list and line number."""
    fs, inner = storage.resolve(path)
    try:
        text = storage.read_bytes(fs, inner).decode()
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the filenames list ({err})") from err
    rows, without_depth = [], 0
    for number, line in enumerate(text.splitlines(), start=1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) < 2:
            raise DataError(f"{path}:{number}: expected 'rgb depth [mask or extra]' paths, got {line!r}")
        if parts[1] == "None":
            if fmt != "kitti":
                raise DataError(f"{path}:{number}: depth 'None' (only KITTI lists leave rows without depth)")
            without_depth += 1
            continue
        third = parts[2] if len(parts) > 2 else ""
        if fmt == "diode" and not third:
            raise DataError(f"{path}:{number}: a DIODE row needs 'rgb depth mask', got {line!r}")
        rows.append((parts[0], parts[1], third))
    if not rows:
        raise DataError(f"{path}: the filenames list has no row with depth")
    return rows, without_depth


def _image_size(data: bytes, name: str) -> tuple[int, int]:
    """(height, width) from the image header only."""
    try:
        with Image.open(io.BytesIO(data)) as pil:
            return pil.size[1], pil.size[0]
    except (OSError, ValueError, SyntaxError) as err:
        raise DataError(f"{name}: unreadable image ({err})") from err


def decode_eth3d_depth(data: bytes, height: int, width: int, name: str) -> np.ndarray:
    """ETH3D's raw depth: little-endian float32, row-major H x W (the RGB's size, 6048 x 4032 in the benchmark),
    ``inf`` = invalid -> 0."""
    if len(data) != 4 * height * width:
        raise DataError(
            f"{name}: raw ETH3D depth has {len(data)} bytes, expected 4 x {height} x {width} = {4 * height * width} "
            "(float32 at the RGB image's size)"
        )
    depth = np.frombuffer(data, dtype="<f4").reshape(height, width).astype(np.float32)
    depth[~np.isfinite(depth)] = 0.0
    return depth


@dataclass(frozen=True)
class BenchmarkSource:
    fmt: str  # one of BENCHMARKS
    location: str  # directory or .tar (local or URI)
    filenames: str  # the list (local or URI)
    tree: FileTree = field(compare=False, repr=False, default=None)
    rows: tuple[tuple[str, str, str], ...] = field(compare=False, repr=False, default=())
    rows_without_depth: int = 0
    has_depth = True

    @classmethod
    def open(cls, fmt: str, location: str, filenames: str) -> BenchmarkSource:
        if fmt not in BENCHMARKS:
            raise DataError(f"--format {fmt!r}: unknown benchmark (one of {', '.join(BENCHMARKS)})")
        rows, without_depth = read_list(filenames, fmt)
        return cls(fmt, location, filenames, FileTree.open(location), tuple(rows), without_depth)

    @property
    def dataset(self) -> str:
        return self.fmt

    @property
    def description(self) -> dict:
        def where(path: str) -> str:
            return path if is_uri(path) else absolute_path(path)

        return {
            "kind": "benchmark",
            "format": self.fmt,
            "location": where(self.location),
            "list": where(self.filenames),
        }

    @property
    def manifest_extra(self) -> dict:
        extra: dict = {"rows_without_depth": self.rows_without_depth}
        if self.fmt == "kitti":
            extra["crop"] = {"name": "kitti_benchmark", "height": KITTI_CROP[0], "width": KITTI_CROP[1], "stored": True}
        return extra

    def refs(self) -> list[str]:
        return [str(i) for i in range(len(self.rows))]

    def load(self, ref: str) -> tuple[str, ImageFile, np.ndarray]:
        rgb_name, depth_name, third = self.rows[int(ref)]
        rgb = ImageFile(self.tree.read(rgb_name), self.tree.describe(rgb_name))
        depth_file = self.tree.describe(depth_name)
        depth_bytes = self.tree.read(depth_name)
        if self.fmt in PNG_DEPTH_SCALE:
            depth = decode_depth_png(depth_bytes, PNG_DEPTH_SCALE[self.fmt], depth_file)
        elif self.fmt == "diode":
            depth = decode_npy(depth_bytes, depth_file, "depth")
            mask = decode_npy(self.tree.read(third), self.tree.describe(third), "mask")
            if mask.shape != depth.shape:
                raise DataError(f"{self.tree.describe(third)}: mask {mask.shape} does not match depth {depth.shape}")
            depth = np.where(mask != 0, depth, np.float32(0.0))
        else:  # eth3d
            depth = decode_eth3d_depth(depth_bytes, *_image_size(rgb.data, rgb.name), depth_file)
        if self.fmt == "kitti":
            top, left, bottom, right = kitti_crop_box(*depth.shape, depth_file)
            image = rgb.decode()
            if image.shape[:2] != depth.shape:
                raise DataError(f"{rgb.name}: RGB/depth size mismatch: image {image.shape[:2]} vs depth {depth.shape}")
            rgb = ImageFile(encode_image(image[top:bottom, left:right], "png"), rgb.name)
            depth = np.ascontiguousarray(depth[top:bottom, left:right])
        return posixpath.splitext(rgb_name)[0], rgb, depth

    def error_name(self, ref: str) -> str:
        return self.tree.describe(self.rows[int(ref)][0])
