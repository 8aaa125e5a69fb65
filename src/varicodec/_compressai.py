"""Import CompressAI's coding stack without its point-cloud stack.

``import compressai`` (1.2.8) runs ``compressai/__init__.py``, which imports
every subpackage eagerly: ``datasets`` and ``registry`` pull in
``torch_geometric`` (and through it ``torch._dynamo``) for the point-cloud
models, about 2.4 s of a 3 s import on two cores. varicodec needs three
architectures from ``compressai.models.google``, the entropy models and the rANS
coder, none of which touch point clouds.

:func:`install` defers, for ``compressai``, ``compressai.models`` and
``compressai.registry`` only, the ``from .sub import ...`` statements of the
package's own ``__init__.py``: the module object is the real package (same
spec, same file, every other statement of ``__init__`` run), and a PEP 562
``__getattr__`` runs the deferred statements when a name is first asked for,
the ones that bind that name first. ``from compressai.models import
ScaleHyperprior`` thus imports ``models/base.py`` and ``models/google.py`` and
stops; ``compressai.zoo`` or ``from compressai.models import *`` still run the
whole ``__init__`` and give exactly what a plain import gives. Nothing of
CompressAI is copied: its own files are parsed and executed.

``scipy.stats`` (0.6–1.6 s), which CompressAI imports at module level but
calls only in ``GaussianConditional.update()`` (never when weights with their
entropy tables are loaded), is a stand-in module that imports the real one on
first attribute access.

:func:`install` does nothing for a package already imported, so a process that
imported ``compressai`` first keeps the plain import. Costs and the options
measured are in ``docs/results/startup.md``.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
import sys
import types

__all__ = ["install"]

#: packages whose ``__init__`` submodule imports are deferred, parents first
DEFERRED_PACKAGES = ("compressai", "compressai.models", "compressai.registry")
#: modules CompressAI imports eagerly but uses rarely, loaded on first use
LAZY_MODULES = ("scipy.stats",)


def install() -> None:
    """Make later ``compressai`` imports load only the submodules used (idempotent)."""
    if "compressai" in sys.modules:
        return
    try:
        for name in DEFERRED_PACKAGES:
            _defer_package(name)
        for name in LAZY_MODULES:
            _lazy_module(name)
    except Exception:  # an unexpected CompressAI layout: fall back to plain imports
        for name in DEFERRED_PACKAGES:
            if isinstance(sys.modules.get(name), _DeferredPackage):
                del sys.modules[name]


class _DeferredPackage(types.ModuleType):
    """A package whose ``__init__`` submodule imports run when a name needs them."""

    def __getattr__(self, attr: str):
        pending: list[ast.ImportFrom] = self.__dict__.get("_varicodec_pending", [])
        if attr.startswith("__") and attr != "__all__":
            raise AttributeError(attr)
        # statements that bind ``attr`` by name; else a submodule of that name (as
        # `from compressai import ans` would import); else star imports, then the rest
        named = [n for n in pending if any((a.asname or a.name) == attr for a in n.names)]
        if not named and attr != "__all__" and _is_submodule(f"{self.__name__}.{attr}"):
            return importlib.import_module(f"{self.__name__}.{attr}")
        stars = [n for n in pending if n.names[0].name == "*"]
        for node in named + stars + list(pending):
            if node in pending:
                pending.remove(node)
                self._run(node)
                if attr in self.__dict__ and attr != "__all__":
                    return self.__dict__[attr]
        if attr in self.__dict__:
            return self.__dict__[attr]
        raise AttributeError(f"module {self.__name__!r} has no attribute {attr!r}")

    def __dir__(self) -> list[str]:
        for node in list(self.__dict__.get("_varicodec_pending", [])):
            self.__dict__["_varicodec_pending"].remove(node)
            self._run(node)
        return sorted(self.__dict__)

    def _run(self, node: ast.ImportFrom) -> None:
        code = compile(ast.Module(body=[node], type_ignores=[]), self.__file__, "exec")
        exec(code, self.__dict__)


def _is_submodule(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _defer_package(name: str) -> None:
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.origin is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not a source package")
    with open(spec.origin, encoding="utf-8") as f:
        tree = ast.parse(f.read(), spec.origin)
    eager: list[ast.stmt] = []
    pending: list[ast.ImportFrom] = []
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and (node.level > 0 or node.module == name):
            for alias in node.names:  # one statement per name, so each runs on its own
                one = ast.ImportFrom(module=node.module, names=[alias], level=node.level)
                pending.append(ast.copy_location(one, node))
        else:
            eager.append(node)
    module = importlib.util.module_from_spec(spec)
    module.__class__ = _DeferredPackage
    module.__dict__["_varicodec_pending"] = pending
    sys.modules[name] = module
    try:
        exec(compile(ast.Module(body=eager, type_ignores=[]), spec.origin, "exec"),
             module.__dict__)
    except BaseException:
        del sys.modules[name]
        raise
    parent, _, child = name.rpartition(".")
    if parent:
        setattr(sys.modules[parent], child, module)


class _LoadedOnFirstUse(types.ModuleType):
    """Stands in for a module until a public attribute is asked for, then imports it.

    Unlike :class:`importlib.util.LazyLoader`, dunder lookups (``__file__``,
    ``__spec__``) do not load it: ``inspect.getmodule``, which torch calls while
    importing, walks ``sys.modules`` reading them, and would load every lazy module.
    """

    def __getattr__(self, attr: str):
        if attr.startswith("__"):
            raise AttributeError(attr)
        name = self.__name__
        if sys.modules.get(name) is self:
            del sys.modules[name]
        return getattr(importlib.import_module(name), attr)


def _lazy_module(name: str) -> None:
    if name not in sys.modules and importlib.util.find_spec(name.partition(".")[0]) is not None:
        sys.modules[name] = _LoadedOnFirstUse(name)
