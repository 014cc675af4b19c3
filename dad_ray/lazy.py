"""Package attributes imported on first use (PEP 562), for packages whose light parts must not load the heavy ones:
``dad_ray.train`` (its schedule and autobatch without Ray Train) and ``dad_ray.models`` (checkpoint I/O without timm,
which a Tune trial and the Ray Train controller never need)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any


def lazy_exports(package: str, api: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package`` that returns ``<package>.<api[name]>.<name>``, importing that
    submodule when the name is first asked for; other names raise ``AttributeError`` as usual."""

    def __getattr__(name: str) -> Any:
        if name in api:
            return getattr(importlib.import_module(f"{package}.{api[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
