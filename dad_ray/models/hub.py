"""``hf://<org>/<repo>[@<revision>]/<file>`` paths: files of the Hugging Face Hub, read from the local cache only.

A weights path anywhere in dad_ray (``load_weights``, ``model.student_weights``, teacher weights, the jobs'
``--checkpoint``) may be such a path. It is resolved through ``huggingface_hub``'s cache (``try_to_load_from_cache``:
``<cache>/models--org--repo/snapshots/<commit>/<file>``, the commit read from ``refs/<revision>``), never over the
network, so it works offline once the file is cached; a file that is not cached is a :class:`HubFileNotCachedError`
naming the repo, the file, the cache and the command that fetches it. The cache is read from the environment at
call time (``HF_HUB_CACHE``, ``HUGGINGFACE_HUB_CACHE``, ``HF_HOME``), as ``huggingface_hub`` does at import.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HF_SCHEME = "hf://"


class HubFileNotCachedError(FileNotFoundError):
    """An ``hf://`` file that is not in the local Hugging Face cache (dad_ray never downloads)."""


@dataclass(frozen=True)
class HubFile:
    """One file of a Hub model repo: ``hf://{repo_id}[@{revision}]/{filename}``."""

    repo_id: str  # "org/repo"
    filename: str  # path inside the repo, e.g. "model.safetensors" or "checkpoints/student.safetensors"
    revision: str | None = None  # branch, tag or commit; None = "main"

    def __str__(self) -> str:
        rev = f"@{self.revision}" if self.revision else ""
        return f"{HF_SCHEME}{self.repo_id}{rev}/{self.filename}"


def is_hub_path(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an ``hf://`` path (``pathlib`` would turn it into ``hf:/…``: pass it as a string)."""
    return isinstance(path, str) and path.startswith(HF_SCHEME)


def parse_hub_path(path: str) -> HubFile:
    """``hf://org/repo[@rev]/path/to/file`` → :class:`HubFile`; ``ValueError`` naming the expected form otherwise."""
    parts = path[len(HF_SCHEME) :].split("/", 2) if is_hub_path(path) else []
    if len(parts) < 3 or not all(parts):
        raise ValueError(f"{path!r}: expected hf://<org>/<repo>[@<revision>]/<file>")
    org, repo, filename = parts
    repo, _, revision = repo.partition("@")
    if not repo:
        raise ValueError(f"{path!r}: empty repo name (expected hf://<org>/<repo>[@<revision>]/<file>)")
    return HubFile(f"{org}/{repo}", filename, revision or None)


def hub_cache_dir() -> Path:
    """The Hugging Face hub cache: ``HF_HUB_CACHE``, else ``HUGGINGFACE_HUB_CACHE``, else ``$HF_HOME/hub``
    (``HF_HOME`` defaulting to ``$XDG_CACHE_HOME/huggingface``, i.e. ``~/.cache/huggingface``)."""
    env = os.environ
    cache = env.get("HF_HUB_CACHE") or env.get("HUGGINGFACE_HUB_CACHE")
    if cache:
        return Path(cache).expanduser()
    home = env.get("HF_HOME") or os.path.join(env.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def cached_hub_file(ref: HubFile) -> Path:
    """The cached copy of ``ref``, or :class:`HubFileNotCachedError` (never downloads)."""
    from huggingface_hub import try_to_load_from_cache

    cache = hub_cache_dir()
    found = try_to_load_from_cache(ref.repo_id, ref.filename, cache_dir=str(cache), revision=ref.revision)
    if isinstance(found, str) and Path(found).is_file():
        return Path(found)
    rev = f" --revision {ref.revision}" if ref.revision else ""
    raise HubFileNotCachedError(
        f"{ref}: file {ref.filename!r} of the Hugging Face repo {ref.repo_id!r}"
        f"{' at revision ' + repr(ref.revision) if ref.revision else ''} is not in the local cache {cache} "
        f"(dad_ray never downloads); fetch it with `hf download {ref.repo_id} {ref.filename}{rev}` "
        "(or huggingface_hub.hf_hub_download) on a machine with network access and the same HF_HUB_CACHE / HF_HOME"
    )


def resolve_path(path: str | os.PathLike) -> Path:
    """A local path as a :class:`~pathlib.Path`; an ``hf://`` path as its cached file (or
    :class:`HubFileNotCachedError`)."""
    if is_hub_path(path):
        return cached_hub_file(parse_hub_path(str(path)))
    return Path(path)


def weights_available(path: str | os.PathLike) -> bool:
    """Whether a weights path can be read now: a local file, an ``hf://`` file in the cache, or a file at a storage
    URI (``s3://…``, ``file://…``; fetched by whoever loads it) — for config checks that must not treat those as
    missing."""
    from dad_ray.data import storage

    if isinstance(path, str) and storage.is_uri(path) and not is_hub_path(path):
        return storage.is_file(path)
    try:
        return resolve_path(path).is_file()
    except (HubFileNotCachedError, ValueError):
        return False
