"""Unlabeled images (no depth): a directory searched recursively, a tar archive of images (WebDataset style), or a
directory holding such archives — local or behind a URI (``s3://…``), read where they are.

Image files are JPEG, PNG and WebP (by extension, any case); every other file is ignored (SA-1B's ``sa_*.json``
annotations beside ``sa_*.jpg``, WebDataset's ``.json``/``.cls``/``.txt`` side files), and so are hidden files
(names starting with '.', e.g. macOS ``._x.jpg`` resource forks). A ``.tar`` found inside a directory is read member
by member. Samples are stored as their original bytes (:class:`~dad_ray.data.codec.ImageFile`), so their pixels are
the source's own; the shards' manifest says they carry no depth (``has_depth: false``).

A reference is ``f<TAB>relative path`` for a file or ``t<TAB>archive<TAB>member<TAB>offset<TAB>size`` for a tar
member (offset and size from the archive's index, built once on the driver: a task reads just that byte range).
Keys are the path without extension (``archive-stem/member-stem`` for tar members).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

from dad_ray.config.paths import absolute_path
from dad_ray.data import storage
from dad_ray.data.codec import IMAGE_FILE_EXTENSIONS, ImageFile
from dad_ray.data.errors import DataError
from dad_ray.data.sources.files import FileTree, index_tar, kind, list_dir, read_range


def is_image_name(name: str) -> bool:
    base = posixpath.basename(name)
    return not base.startswith(".") and posixpath.splitext(base)[1].lower() in IMAGE_FILE_EXTENSIONS


def _tar_refs(location: str, archive: str) -> list[str]:
    """References of the image members of the archive ``archive`` (relative to ``location``; "" = it is the
    location itself)."""
    path = storage.join(location, archive) if archive else location
    members = index_tar(path)
    return [
        f"t\t{archive}\t{name}\t{offset}\t{size}" for name, (offset, size) in members.items() if is_image_name(name)
    ]


@dataclass(frozen=True)
class ImageSource:
    location: str  # a directory or a .tar archive, local path or URI
    has_depth = False
    dataset = None

    @property
    def description(self) -> dict:
        return {"kind": "images", "location": absolute_path(self.location)}

    def refs(self) -> list[str]:
        found = kind(self.location)
        if found == "tar":
            refs = _tar_refs(self.location, "")
        elif found == "dir":
            refs = []
            for name, _size in list_dir(self.location):
                if is_image_name(name):
                    refs.append(f"f\t{name}")
                elif name.lower().endswith(".tar") and not posixpath.basename(name).startswith("."):
                    refs.extend(_tar_refs(self.location, name))
        elif found == "missing":
            raise DataError(f"{self.location}: source does not exist")
        else:
            raise DataError(f"{self.location}: expected a directory of images or an uncompressed .tar of images")
        if not refs:
            raise DataError(
                f"{self.location}: no image found (searched recursively for {', '.join(IMAGE_FILE_EXTENSIONS)} files "
                "and .tar archives of them)"
            )
        return refs

    def _archive(self, archive: str) -> str:
        return storage.join(self.location, archive) if archive else self.location

    def load(self, ref: str) -> tuple[str, ImageFile, None]:
        parts = ref.split("\t")
        if parts[0] == "f":
            name = parts[1]
            data = FileTree(self.location).read(name)
            return posixpath.splitext(name)[0], ImageFile(data, self.error_name(ref)), None
        _, archive, member, offset, size = parts
        data = read_range(self._archive(archive), int(offset), int(size), self.error_name(ref))
        stem = posixpath.splitext(posixpath.basename(archive))[0]
        key = posixpath.splitext(member)[0]
        return (f"{stem}/{key}" if stem else key), ImageFile(data, self.error_name(ref)), None

    def error_name(self, ref: str) -> str:
        parts = ref.split("\t")
        if parts[0] == "f":
            return storage.join(self.location, parts[1])
        return f"{self._archive(parts[1])}[{parts[2]}]"
