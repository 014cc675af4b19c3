"""The five benchmarks in their community layout and unlabeled image sources, without Ray: files written in each
format's real encoding (tars with './'-prefixed members, an ETH3D-size raw depth file), loaded and encoded as
prepare_shards' tasks do, checked against hand-computed values, units, crops and masks."""

from __future__ import annotations

import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from dad_ray.data import DataError
from dad_ray.data.codec import decode_depth, decode_image
from dad_ray.data.manifest import has_depth
from dad_ray.data.prepare import EncodeOptions, convert_shard, encode_sample
from dad_ray.data.shards import decode_rows, read_row_group
from dad_ray.data.sources import open_source
from dad_ray.data.sources.benchmarks import BenchmarkSource, kitti_crop_box
from dad_ray.data.sources.images import ImageSource


def png_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def jpeg_bytes(array: np.ndarray, quality: int = 90) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def write_tar(path, files: dict[str, bytes], prefix: str = "./") -> str:
    """A tar archive whose members are named ``prefix + name`` (the benchmark archives use './')."""
    with tarfile.open(path, "w") as archive:
        for name, data in files.items():
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return str(path)


def write_tree(root, files: dict[str, bytes]) -> str:
    for name, data in files.items():
        path = os.path.join(root, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(data)
    return str(root)


def rgb(h: int, w: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_nyu_tar_with_dot_slash_members_mm_png(tmp_path):
    image = rgb(6, 8)
    raw = np.arange(48, dtype=np.uint16).reshape(6, 8) * 250  # millimetres: 0 (missing), 0.25 m, ... 11.75 m
    files = {"test/kitchen/rgb_0001.png": png_bytes(image), "test/kitchen/depth_0001.png": png_bytes(raw)}
    archive = write_tar(tmp_path / "nyu.tar", files)
    listing = tmp_path / "list.txt"
    listing.write_text("test/kitchen/rgb_0001.png test/kitchen/depth_0001.png test/kitchen/filled_0001.png\n")
    src = open_source(archive, "test", fmt="nyu", filenames=str(listing))
    assert src.dataset == "nyu" and src.refs() == ["0"]
    key, img, depth_bytes, h, w = encode_sample(src, "0", EncodeOptions())
    assert key == "test/kitchen/rgb_0001" and (h, w) == (6, 8)
    assert img == files["test/kitchen/rgb_0001.png"]  # the original PNG bytes, not re-encoded
    depth = decode_depth(depth_bytes, h, w)
    assert depth[0, 0] == 0.0 and depth[0, 1] == np.float32(0.25) and depth[5, 7] == np.float32(11.75)


def test_scannet_directory_mm_png(tmp_path):
    raw = np.full((4, 5), 1234, dtype=np.uint16)
    root = write_tree(tmp_path / "scannet", {"s0/color/0.jpg": jpeg_bytes(rgb(4, 5)), "s0/depth/0.png": png_bytes(raw)})
    listing = tmp_path / "list.txt"
    listing.write_text("s0/color/0.jpg s0/depth/0.png\n")
    src = open_source(root, "test", fmt="scannet", filenames=str(listing))
    _key, _img, depth_bytes, h, w = encode_sample(src, "0", EncodeOptions())
    np.testing.assert_array_equal(decode_depth(depth_bytes, h, w), np.full((4, 5), np.float32(1.234)))


def test_kitti_divides_by_256_crops_bottom_centre_and_counts_none_rows(tmp_path):
    h, w = 375, 1242  # a KITTI frame: crop top = 375 - 352 = 23, left = (1242 - 1216) // 2 = 13
    image = rgb(h, w, 1)
    raw = np.zeros((h, w), np.uint16)
    raw[23, 13] = 256 * 10  # 10 m, at the crop's top-left corner
    raw[374, 1228] = 5120  # 20 m, at its bottom-right corner
    raw[22, 13] = 2560  # just above the crop: cut off
    files = {"2011_09_26/img/0001.png": png_bytes(image), "2011_09_26/proj_depth/0001.png": png_bytes(raw)}
    archive = write_tar(tmp_path / "kitti.tar", files)
    listing = tmp_path / "eigen_test.txt"
    listing.write_text(
        "2011_09_26/img/0000.png None 721.5377\n"
        "2011_09_26/img/0001.png 2011_09_26/proj_depth/0001.png 721.5377\n"
        "2011_09_26/img/0002.png None 721.5377\n"
    )
    src = open_source(archive, "test", fmt="kitti", filenames=str(listing))
    assert src.refs() == ["0"] and src.rows_without_depth == 2
    assert src.manifest_extra["rows_without_depth"] == 2 and src.manifest_extra["crop"]["height"] == 352
    assert kitti_crop_box(h, w, "x") == (23, 13, 375, 1229)
    _key, img, depth_bytes, ch, cw = encode_sample(src, "0", EncodeOptions())
    assert (ch, cw) == (352, 1216)
    np.testing.assert_array_equal(decode_image(img), image[23:375, 13:1229])  # lossless PNG of the crop
    depth = decode_depth(depth_bytes, ch, cw)
    assert depth[0, 0] == 10.0 and depth[351, 1215] == 20.0 and (depth > 0).sum() == 2  # ÷256, row 22 cut off


def test_kitti_frame_smaller_than_the_crop_is_named(tmp_path):
    files = {"a.png": png_bytes(rgb(300, 1242)), "d.png": png_bytes(np.ones((300, 1242), np.uint16))}
    listing = tmp_path / "l.txt"
    listing.write_text("a.png d.png\n")
    src = BenchmarkSource.open("kitti", write_tree(tmp_path / "k", files), str(listing))
    with pytest.raises(DataError, match=r"d\.png: 300x1242 is smaller than the KITTI benchmark crop 352x1216"):
        encode_sample(src, "0", EncodeOptions())


def test_diode_npy_depth_and_mask(tmp_path):
    depth = np.array([[[1.0], [2.0], [3.0]], [[0.7], [350.0], [7.5]]], np.float32)  # (H, W, 1) as DIODE ships
    mask = np.array([[1, 0, 1], [1, 1, 0]], np.float32)
    files = {
        "val/indoors/a.png": png_bytes(rgb(2, 3)),
        "val/indoors/a_depth.npy": npy_bytes(depth),
        "val/indoors/a_depth_mask.npy": npy_bytes(mask),
    }
    archive = write_tar(tmp_path / "diode.tar", files)
    listing = tmp_path / "diode.txt"
    listing.write_text("val/indoors/a.png val/indoors/a_depth.npy val/indoors/a_depth_mask.npy\n")
    src = open_source(archive, "test", fmt="diode", filenames=str(listing))
    _key, _img, depth_bytes, h, w = encode_sample(src, "0", EncodeOptions())
    np.testing.assert_array_equal(decode_depth(depth_bytes, h, w), np.float32([[1.0, 0.0, 3.0], [0.7, 350.0, 0.0]]))
    listing.write_text("val/indoors/a.png val/indoors/a_depth.npy\n")
    with pytest.raises(DataError, match=r"diode\.txt:1: a DIODE row needs 'rgb depth mask'"):
        open_source(archive, "test", fmt="diode", filenames=str(listing))


def test_eth3d_full_size_raw_float32_inf_is_invalid(tmp_path):
    h, w = 4032, 6048  # the benchmark's size: 97.5 MB of float32
    depth = np.full((h, w), np.inf, dtype="<f4")
    depth[0, 0], depth[h - 1, w - 1], depth[2000, 3000] = 1.5, 42.25, 7.0
    image = np.zeros((h, w, 3), np.uint8)  # flat: encodes and decodes fast
    root = tmp_path / "eth3d"
    write_tree(root, {"rgb/courtyard/images/dslr_images/DSC_0286.JPG": jpeg_bytes(image, 80)})
    depth_path = root / "depth/courtyard_dslr_depth/courtyard/ground_truth_masks/dslr_images/DSC_0286.JPG"
    depth_path.parent.mkdir(parents=True)
    depth.tofile(depth_path)
    assert depth_path.stat().st_size == 4 * 6048 * 4032
    listing = tmp_path / "eth3d.txt"
    listing.write_text(f"rgb/courtyard/images/dslr_images/DSC_0286.JPG {depth_path.relative_to(root)}\n")
    src = open_source(str(root), "test", fmt="eth3d", filenames=str(listing))
    _key, _img, depth_bytes, dh, dw = encode_sample(src, "0", EncodeOptions())
    stored = decode_depth(depth_bytes, dh, dw)
    assert (dh, dw) == (h, w) and (stored > 0).sum() == 3
    assert stored[0, 0] == 1.5 and stored[h - 1, w - 1] == 42.25 and stored[2000, 3000] == 7.0
    depth_path.write_bytes(depth_path.read_bytes()[:-4])
    with pytest.raises(DataError, match=r"DSC_0286\.JPG: raw ETH3D depth has 97542140 bytes, expected 4 x 4032 x 6048"):
        encode_sample(src, "0", EncodeOptions())


def test_benchmark_list_errors_name_the_line_or_member(tmp_path):
    archive = write_tar(tmp_path / "n.tar", {"a.png": png_bytes(rgb(2, 2))})
    listing = tmp_path / "l.txt"
    listing.write_text("a.png None\n")
    with pytest.raises(DataError, match=r"l\.txt:1: depth 'None' \(only KITTI"):
        open_source(archive, "test", fmt="nyu", filenames=str(listing))
    listing.write_text("a.png b.png\n")
    src = open_source(archive, "test", fmt="nyu", filenames=str(listing))
    with pytest.raises(DataError, match=r"n\.tar\[b\.png\]: no such member in the archive"):
        encode_sample(src, "0", EncodeOptions())
    with pytest.raises(DataError, match="needs --filenames"):
        open_source(archive, "test", fmt="nyu")


def test_sync_reader_refuses_a_kitti_list(tmp_path):
    (tmp_path / "k").mkdir()
    listing = tmp_path / "k.txt"
    listing.write_text("2011/img/1.png 2011_drive/proj_depth/groundtruth/1.png 721.5\n")
    with pytest.raises(DataError, match="looks like a KITTI list.*--format kitti"):
        open_source(str(tmp_path / "k"), "test", filenames=str(listing)).refs()


def sa1b_like(root) -> dict[str, bytes]:
    files = {
        "sa_000000/sa_1.jpg": jpeg_bytes(rgb(30, 45, 1)),
        "sa_000000/sa_1.json": json.dumps({"annotations": []}).encode(),
        "sa_000000/nested/sa_2.JPEG": jpeg_bytes(rgb(20, 10, 2)),
        "other/c.png": png_bytes(rgb(8, 9, 3)),
        "other/d.webp": b"",
        "other/._sa_1.jpg": b"resource fork",
        "notes.txt": b"not an image",
    }
    buf = io.BytesIO()
    Image.fromarray(rgb(7, 5, 4)).save(buf, format="WEBP", lossless=True)
    files["other/d.webp"] = buf.getvalue()
    write_tree(root, files)
    return files


def test_unlabeled_directory_recursive_sa1b_layout(tmp_path):
    files = sa1b_like(tmp_path / "sa1b")
    src = open_source(str(tmp_path / "sa1b"), "train")
    assert isinstance(src, ImageSource) and not src.has_depth
    names = [ref.split("\t")[1] for ref in src.refs()]
    assert names == ["other/c.png", "other/d.webp", "sa_000000/nested/sa_2.JPEG", "sa_000000/sa_1.jpg"]
    key, img, depth, h, w = encode_sample(src, src.refs()[3], EncodeOptions())
    assert key == "sa_000000/sa_1" and img == files["sa_000000/sa_1.jpg"] and depth is None and (h, w) == (30, 45)
    key, img, _depth, h, w = encode_sample(src, src.refs()[1], EncodeOptions())
    np.testing.assert_array_equal(decode_image(img), rgb(7, 5, 4))  # lossless WebP kept as it is
    # --max-side: a scaled-down copy, re-encoded (JPEG by default), aspect kept
    _key, small, _depth, h, w = encode_sample(src, src.refs()[3], EncodeOptions(max_side=15))
    assert (h, w) == (10, 15) and decode_image(small).shape == (10, 15, 3) and small[:2] == b"\xff\xd8"
    write_tree(tmp_path / "no_images", {"a/sa_1.json": b"{}", "a/._sa_1.jpg": b"fork"})
    with pytest.raises(DataError, match=r"no_images: no image found"):
        open_source(str(tmp_path / "no_images"), "train").refs()


def test_unlabeled_tar_webdataset_and_uri(tmp_path):
    files = {"000001.jpg": jpeg_bytes(rgb(12, 16, 5)), "000001.json": b"{}", "000002.png": png_bytes(rgb(9, 9, 6))}
    archive = write_tar(tmp_path / "shard-000.tar", files, prefix="")
    for spec in (archive, "file://" + archive):
        src = open_source(spec, "train")
        assert isinstance(src, ImageSource) and len(src.refs()) == 2
        key, img, depth, h, w = encode_sample(src, src.refs()[0], EncodeOptions())
        assert key == "000001" and img == files["000001.jpg"] and depth is None and (h, w) == (12, 16)
    # a directory of WebDataset shards: every archive's images
    os.makedirs(tmp_path / "wds")
    write_tar(tmp_path / "wds" / "a.tar", files, prefix="")
    src = open_source(str(tmp_path / "wds"), "train", fmt="images")
    assert [encode_sample(src, r, EncodeOptions())[0] for r in src.refs()] == ["a/000001", "a/000002"]


def test_corrupt_unlabeled_image_is_named(tmp_path):
    data = jpeg_bytes(rgb(40, 40))
    write_tree(tmp_path / "imgs", {"x/bad.jpg": data[: len(data) // 2]})
    src = open_source(str(tmp_path / "imgs"), "train")
    with pytest.raises(DataError, match=r"imgs/x/bad\.jpg: unreadable or truncated image"):
        encode_sample(src, src.refs()[0], EncodeOptions())


def test_convert_shard_writes_depth_less_rows_and_a_record(tmp_path):
    files = sa1b_like(tmp_path / "sa1b")
    src = open_source(str(tmp_path / "sa1b"), "train")
    refs = src.refs()
    out = str(tmp_path / "out" / "train")
    result = convert_shard({"shard": 3, "start": 12, "refs": refs}, src, EncodeOptions(), out)
    assert result["error"] == ""
    record = json.loads((tmp_path / "out" / "train" / "_progress" / "part-00003.json").read_text())
    assert record["entry"]["file"] == "part-00003.parquet" and record["entry"]["num_rows"] == 4
    import pyarrow.fs as pafs

    rows = read_row_group(pafs.LocalFileSystem(), f"{out}/part-00003.parquet", 0)
    assert rows["index"] == [12, 13, 14, 15] and rows["depth"] == [None] * 4
    assert bytes(rows["image"][3]) == files["sa_000000/sa_1.jpg"]
    batch = {k: np.array(v, dtype=object) for k, v in rows.items()}
    decoded = decode_rows(batch, has_depth=False)
    assert "depth" not in decoded and decoded["image"][3].shape == (30, 45, 3)
    with pytest.raises(DataError, match="no depth stored"):
        decode_rows(batch)
    assert not has_depth({"has_depth": False}) and has_depth({})
    # a bad sample without skip_bad: the shard is not written, the error names the file
    (tmp_path / "sa1b" / "other" / "c.png").write_bytes(b"\x89PNG broken")
    bad = convert_shard({"shard": 4, "start": 16, "refs": refs}, src, EncodeOptions(), out)
    assert "other/c.png: unreadable" in bad["error"] and not os.path.exists(f"{out}/part-00004.parquet")
    skipped = convert_shard({"shard": 4, "start": 16, "refs": refs}, src, EncodeOptions(skip_bad=True), out)
    record = json.loads(skipped["record"])
    assert record["entry"]["num_rows"] == 3 and record["skipped"][0]["key"].endswith("other/c.png")


def test_starting_over_deletes_only_what_a_conversion_writes(tmp_path):
    """--overwrite (or a new plan) clears shards, temporaries, manifest and records — never other files, even when
    --out/--split point at a directory that holds the user's images."""
    from dad_ray.data.prepare import _clear_shards

    files = {
        "part-00000.parquet": b"x",
        ".tmp-abc-part-00001.parquet": b"x",
        "manifest.json": b"{}",
        "_progress/plan.json": b"{}",
        "photo.jpg": b"mine",
        "part-notes.txt": b"mine",
        "sub/part-00002.parquet": b"mine",
    }
    write_tree(tmp_path / "split", files)
    _clear_shards(str(tmp_path / "split"))
    left = sorted(str(p.relative_to(tmp_path / "split")) for p in (tmp_path / "split").rglob("*") if p.is_file())
    assert left == ["part-notes.txt", "photo.jpg", "sub/part-00002.parquet"]
    _clear_shards(str(tmp_path / "missing"))  # nothing there: fine
