"""Paths that are either local directories or pyarrow filesystem URIs (s3://, gs://, file://, ...).

Every read and write of shards and manifests goes through here, so the same code serves a laptop and a bucket.
Writes are atomic at file level: the bytes go to a temporary name next to the target, then a rename (local: an
atomic ``os.replace``; object stores: a copy, which readers never see half-done because they only open files that a
manifest lists, and the manifest is written last).
"""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs

from dad_ray.config.paths import is_uri


def resolve(path: str) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or a URI (``pyarrow.fs.FileSystem.from_uri``)."""
    if is_uri(path):
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(path)


def join(path: str, *parts: str) -> str:
    """Join with '/' (URIs) or the OS separator (local paths)."""
    if is_uri(path):
        return "/".join([path.rstrip("/"), *parts])
    return os.path.join(path, *parts)


def exists(fs: pafs.FileSystem, path: str) -> bool:
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(fs: pafs.FileSystem, path: str) -> bytes:
    with fs.open_input_stream(path) as stream:
        return stream.read()


def write_atomic(fs: pafs.FileSystem, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` via a unique temporary name and a rename: never a half-written ``path``."""
    parent = path.rsplit("/", 1)[0]
    fs.create_dir(parent, recursive=True)
    tmp = f"{parent}/.tmp-{uuid.uuid4().hex}-{path.rsplit('/', 1)[1]}"
    with fs.open_output_stream(tmp) as stream:
        stream.write(data)
    if isinstance(fs, pafs.LocalFileSystem):
        os.replace(tmp, path)  # atomic on POSIX, also when ``path`` exists
    else:
        fs.move(tmp, path)


def delete(fs: pafs.FileSystem, path: str) -> None:
    if exists(fs, path):
        fs.delete_file(path)


def children(path: str) -> list[str]:
    """Names of the entries directly under the directory ``path`` (local or URI), sorted; [] when there is none."""
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type != pafs.FileType.Directory:
        return []
    return sorted(info.base_name for info in fs.get_file_info(pafs.FileSelector(inner)))


def clear_dir(path: str) -> None:
    """Delete everything under the directory ``path`` (local or URI) and keep the directory; nothing there is fine."""
    fs, inner = resolve(path)
    fs.delete_dir_contents(inner, missing_dir_ok=True)


def upload_tree(local_dir: str | os.PathLike, uri: str) -> None:
    """Copy every file under ``local_dir`` to ``uri`` (a directory, local or URI), overwriting same-named files."""
    fs, inner = resolve(uri)
    fs.create_dir(inner, recursive=True)
    pafs.copy_files(str(local_dir), inner, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def download_file(uri: str, local_path: str | os.PathLike) -> bool:
    """Copy the file at ``uri`` to ``local_path`` (atomically); False if there is no such file."""
    fs, inner = resolve(uri)
    if not exists(fs, inner):
        return False
    write_atomic(pafs.LocalFileSystem(), os.path.abspath(local_path), read_bytes(fs, inner))
    return True


def upload_file(local_path: str | os.PathLike, uri: str) -> None:
    """Copy one local file to ``uri`` (atomically)."""
    fs, inner = resolve(uri)
    with open(local_path, "rb") as f:
        write_atomic(fs, inner, f.read())


def local_copy(path: str, cache_dir: str | os.PathLike) -> str:
    """``path`` itself if local, else the file at URI ``path`` downloaded into ``cache_dir`` (kept there)."""
    if not is_uri(path):
        return path
    dest = os.path.join(str(cache_dir), f"{uuid.uuid5(uuid.NAMESPACE_URL, path).hex}-{path.rsplit('/', 1)[-1]}")
    if not download_file(path, dest):
        raise FileNotFoundError(f"{path} does not exist")
    return dest
