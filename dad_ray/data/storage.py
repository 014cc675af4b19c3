"""Paths that are either local directories or pyarrow filesystem URIs (s3://, gs://, file://, ...).

Every read and write of shards and manifests goes through here, so the same code serves a laptop and a bucket.
Writes are atomic at file level: the bytes go to a temporary name next to the target, then a rename (local: an
atomic ``os.replace``; object stores: a copy, which readers never see half-done because they only open files that a
manifest lists, and the manifest is written last).

Every filesystem in the package comes from :func:`resolve`, i.e. ``pyarrow.fs.FileSystem.from_uri``: it reaches an
S3-compatible endpoint (MinIO, Ceph, R2, a test server) either through the standard ``AWS_ENDPOINT_URL`` variable
or through the URI's own query parameters, as Ray's storage does (``s3://bucket/path?endpoint_override=HOST:PORT&
scheme=http``); credentials and region come from the environment or the instance role. A bare
``pyarrow.fs.S3FileSystem()`` ignores ``AWS_ENDPOINT_URL`` (Arrow issue #49643): never build one elsewhere.
The path helpers (:func:`join`, :func:`parent`, :func:`basename`) keep a URI's query intact.
"""

from __future__ import annotations

import os
import uuid

import pyarrow.fs as pafs

from dad_ray.config.paths import is_uri


def resolve(path: str | os.PathLike) -> tuple[pafs.FileSystem, str]:
    """``(filesystem, path inside it)`` for a local path or a URI (``pyarrow.fs.FileSystem.from_uri``)."""
    if is_uri(path):
        fs, inner = pafs.FileSystem.from_uri(path)
        return fs, inner.rstrip("/")
    return pafs.LocalFileSystem(), os.path.abspath(path)


def split_query(uri: str) -> tuple[str, str]:
    """``("s3://bucket/path", "?endpoint_override=…")`` of a URI (the query with its '?', or '')."""
    base, sep, query = uri.partition("?")
    return base, sep + query


def join(path: str | os.PathLike, *parts: str) -> str:
    """Join with '/' (URIs: before the query, which is kept) or the OS separator (local paths, ``pathlib.Path``
    included)."""
    if is_uri(path):
        base, query = split_query(path)
        return "/".join([base.rstrip("/"), *(p.strip("/") for p in parts)]) + query
    return os.path.join(os.fspath(path), *parts)


def parent(path: str) -> str:
    """The directory holding ``path``: a URI keeps its scheme, bucket and query; a local path is made absolute."""
    if is_uri(path):
        base, query = split_query(path)
        scheme, rest = base.split("://", 1)
        head = rest.rstrip("/").rsplit("/", 1)[0] if "/" in rest.rstrip("/") else rest.rstrip("/")
        return f"{scheme}://{head}{query}"
    return os.path.dirname(os.path.abspath(path))


def basename(path: str) -> str:
    """The last component of ``path`` (a URI's query left out)."""
    base = split_query(path)[0] if is_uri(path) else path
    return base.rstrip("/").rsplit("/", 1)[-1] if is_uri(path) else os.path.basename(os.path.abspath(base))


def absolute(path: str) -> str:
    """A local path made absolute; a URI unchanged (never through ``pathlib``: ``Path("s3://b").resolve()`` is a
    local ``<cwd>/s3:/b``)."""
    return path if is_uri(path) else os.path.abspath(path)


def is_file(path: str) -> bool:
    """Whether ``path`` (local or URI) is a file."""
    fs, inner = resolve(path)
    return fs.get_file_info(inner).type == pafs.FileType.File


def read_path(path: str) -> bytes:
    """The bytes of the file at ``path`` (local or URI); FileNotFoundError naming ``path`` if there is none."""
    fs, inner = resolve(path)
    if fs.get_file_info(inner).type != pafs.FileType.File:
        raise FileNotFoundError(f"{path}: no such file")
    return read_bytes(fs, inner)


def write_path(path: str, data: bytes | str) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` (local or URI), atomically (:func:`write_atomic`)."""
    fs, inner = resolve(path)
    write_atomic(fs, inner, data.encode() if isinstance(data, str) else data)


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
