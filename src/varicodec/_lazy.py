"""Lazy package exports: a name is imported from its submodule on first use.

Keeps ``import varicodec`` (and the CLI's ``--help``, ``models``, ``info``) free of
torch and CompressAI until something that needs them is touched.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable


def lazy_exports(package: str, exports: dict[str, str],
                 namespace: dict) -> tuple[Callable[[str], object], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package`` whose public ``name`` lives in the
    submodule ``exports[name]`` (relative, e.g. ``".io"``); a loaded name is cached in
    the package's ``namespace``."""

    def __getattr__(name: str):
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module, package), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(exports))

    return __getattr__, __dir__
