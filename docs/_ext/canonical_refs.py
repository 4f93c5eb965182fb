"""Resolve cross-references to re-exported names through the module that defines them.

Docstrings say ``:class:`recurnet.LoopedNet``` (the public, re-exported name) while
the API pages document each object once, in its defining module
(``recurnet.looped.LoopedNet``). When Sphinx finds no target for a Python reference
inside one of :data:`PACKAGES`, this hook imports the name, finds where the object
is documented and resolves the reference there. References that still find nothing
are left to Sphinx, unchanged.
"""

from __future__ import annotations

import importlib
import sys
from typing import Any

from docutils import nodes
from sphinx.addnodes import pending_xref
from sphinx.application import Sphinx
from sphinx.environment import BuildEnvironment

#: Top-level packages whose re-exports are resolved.
PACKAGES = ("recurnet", "recurnet_hand")


def _import(target: str) -> Any:
    """The object named by a dotted path (longest importable module, then attributes)."""
    parts = target.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for attr in parts[cut:]:
            obj = getattr(obj, attr)
        return obj
    raise ImportError(target)


def _candidates(target: str, obj: Any) -> list[str]:
    """Names under which ``obj`` may be documented, the defining module first."""
    names = []
    module, qualname = getattr(obj, "__module__", None), getattr(obj, "__qualname__", None)
    if isinstance(module, str) and isinstance(qualname, str) and "<" not in qualname:
        names.append(f"{module}.{qualname}")
    # Module-level data (registries, constants) carries no __module__: look for the
    # modules of the same package that hold the very same object.
    package, attr = target.split(".")[0], target.rsplit(".", 1)[-1]
    for modname, mod in sorted(sys.modules.items()):
        if (modname == package or modname.startswith(package + ".")) and getattr(mod, attr, None) is obj:
            names.append(f"{modname}.{attr}")
    return [n for n in dict.fromkeys(names) if n != target]


def _resolve(app: Sphinx, env: BuildEnvironment, node: pending_xref, contnode: nodes.Element):
    if node.get("refdomain") != "py":
        return None
    target = node.get("reftarget", "")
    module = node.get("py:module") or ""
    # The name as written, then relative to the current module and each package above it
    # (a docstring in recurnet.training.distributed may say :class:`Trainer`).
    parts = module.split(".") if module else []
    tries = [target] + [".".join(parts[:i] + [target]) for i in range(len(parts), 0, -1)]
    domain = env.get_domain("py")
    for name in tries:
        if name.split(".")[0] not in PACKAGES:
            continue
        try:
            obj = _import(name)
        except (ImportError, AttributeError):
            continue
        for candidate in _candidates(name, obj):
            if candidate in domain.objects:
                return domain.resolve_xref(env, node["refdoc"], app.builder, "obj", candidate, node, contnode)
    return None


def setup(app: Sphinx) -> dict:
    app.connect("missing-reference", _resolve)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
