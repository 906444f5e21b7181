"""Lazy package front doors (PEP 562): a package's public names, each looked up in a table and
imported on first use.

The command line builds its parser from `effnet.train.config`, `effnet.data.progressive`,
`effnet.profile.counts` and `effnet.bench.names`; importing their packages must not load torch
(over a second), or `effnet --help` would wait for it. `effnet.weights` uses the same door for
its converters and peer tables, which loading a model from an effnet file never needs. Each such
package keeps a table name -> module and takes its `__getattr__` / `__dir__` from here.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any


def lazy_attributes(package: str, table: dict[str, str], namespace: dict[str, Any]) -> tuple[
        Callable[[str], Any], Callable[[], list[str]]]:
    """``(__getattr__, __dir__)`` for ``package``: a name in ``table`` is imported from its module
    on first use and stored in ``namespace`` (the package's globals), so later look-ups skip this."""

    def __getattr__(name: str) -> Any:
        module = table.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(set(namespace) | set(table))

    return __getattr__, __dir__
