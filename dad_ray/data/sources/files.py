"""Where a source's files live: a directory or a plain ``.tar`` archive, on local disk or behind a pyarrow URI
(``s3://…``, ``gs://…``, ``file://…``; see :mod:`dad_ray.data.storage`), read where they are — nothing is copied to
local disk first.

- A directory is listed recursively (``FileSelector``); names are '/'-separated paths relative to it.
- A tar archive (uncompressed: WebDataset shards and the benchmark archives are) is indexed once by reading its
  member headers (``tarfile`` seeks over the data, so a remote archive costs one ranged read per member header);
  a member is then one ranged read of ``size`` bytes at ``offset``. Member names lose a leading ``./`` (the
  benchmark archives store ``./nyu_labeled/...``), so ``a/b.png`` in a list finds ``./a/b.png`` in the archive.
"""

from __future__ import annotations

import posixpath
import tarfile
from dataclasses import dataclass, field

import pyarrow.fs as pafs

from dad_ray.data import storage
from dad_ray.data.errors import DataError

_FILESYSTEMS: dict[str, tuple[pafs.FileSystem, str]] = {}  # one filesystem per location and process


def resolve(location: str) -> tuple[pafs.FileSystem, str]:
    """``storage.resolve`` cached per process (an S3 filesystem is costly to build, tasks read many files)."""
    if location not in _FILESYSTEMS:
        _FILESYSTEMS[location] = storage.resolve(location)
    return _FILESYSTEMS[location]


def clean_name(name: str) -> str:
    """A member or list path as the index knows it: '/'-separated, no leading './' or '/'."""
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return posixpath.normpath(name.lstrip("/"))


def kind(location: str) -> str:
    """ "dir", "tar" or "missing" (a ``.tar`` name that is a file counts as a tar)."""
    fs, inner = resolve(location)
    info = fs.get_file_info(inner)
    if info.type == pafs.FileType.Directory:
        return "dir"
    if info.type == pafs.FileType.File and inner.lower().endswith(".tar"):
        return "tar"
    if info.type == pafs.FileType.File:
        return "file"
    return "missing"


def list_dir(location: str) -> list[tuple[str, int]]:
    """``(relative name, size)`` of every file under the directory ``location``, recursively, sorted."""
    fs, inner = resolve(location)
    infos = fs.get_file_info(pafs.FileSelector(inner, recursive=True))
    prefix = len(inner.rstrip("/")) + 1
    return sorted((i.path[prefix:], i.size) for i in infos if i.type == pafs.FileType.File)


def index_tar(location: str) -> dict[str, tuple[int, int]]:
    """``{member name (cleaned): (data offset, size)}`` of the regular files in the tar archive ``location``."""
    fs, inner = resolve(location)
    members: dict[str, tuple[int, int]] = {}
    try:
        with fs.open_input_file(inner) as handle, tarfile.open(fileobj=handle, mode="r:") as archive:
            for member in archive:
                if member.isfile():
                    members[clean_name(member.name)] = (member.offset_data, member.size)
    except (tarfile.TarError, OSError) as err:
        raise DataError(
            f"{location}: not a readable uncompressed tar archive ({err}); compressed tars (.tar.gz) cannot be read "
            "in place: decompress them first"
        ) from err
    return members


def read_range(location: str, offset: int, size: int, name: str) -> bytes:
    """``size`` bytes at ``offset`` of the file ``location`` (a tar member); errors name ``name``."""
    fs, inner = resolve(location)
    try:
        with fs.open_input_file(inner) as handle:
            data = handle.read_at(size, offset)
    except OSError as err:
        raise DataError(f"{name}: cannot read ({err})") from err
    if len(data) != size:
        raise DataError(f"{name}: truncated archive member ({len(data)} of {size} bytes)")
    return data


@dataclass(frozen=True)
class FileTree:
    """A directory or tar archive (local or URI) whose files are addressed by relative name.

    ``members`` is the tar index (:func:`index_tar`, built by :meth:`open`); None for a directory."""

    location: str
    members: dict[str, tuple[int, int]] | None = field(default=None, compare=False)

    @classmethod
    def open(cls, location: str) -> FileTree:
        found = kind(location)
        if found == "dir":
            return cls(location)
        if found == "tar":
            return cls(location, index_tar(location))
        if found == "missing":
            raise DataError(f"{location}: source does not exist")
        raise DataError(f"{location}: expected a directory or an uncompressed .tar archive")

    def describe(self, name: str) -> str:
        """How a message names file ``name``: ``DIR/name`` or ``ARCHIVE.tar[name]``."""
        return f"{self.location}[{name}]" if self.members is not None else storage.join(self.location, name)

    def has(self, name: str) -> bool:
        if self.members is not None:
            return clean_name(name) in self.members
        fs, inner = resolve(self.location)
        return storage.exists(fs, f"{inner}/{clean_name(name)}")

    def read(self, name: str) -> bytes:
        """The bytes of file ``name``; a missing file raises :class:`DataError` naming it."""
        clean = clean_name(name)
        if self.members is not None:
            if clean not in self.members:
                raise DataError(f"{self.describe(clean)}: no such member in the archive")
            offset, size = self.members[clean]
            return read_range(self.location, offset, size, self.describe(clean))
        fs, inner = resolve(self.location)
        try:
            return storage.read_bytes(fs, f"{inner}/{clean}")
        except FileNotFoundError as err:
            raise DataError(f"{self.describe(clean)}: file not found") from err
        except OSError as err:
            raise DataError(f"{self.describe(clean)}: cannot read ({err})") from err
