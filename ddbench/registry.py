"""A small generic registry with lazy `"module:attr"` targets and "did you mean" errors.

Modelled on lm-evaluation-harness' registry: registering costs nothing at import time (targets are strings
resolved on first use), duplicates are refused, and an unknown name fails with the closest known names.
"""
from __future__ import annotations

import difflib
import importlib
from typing import Any, Callable, Iterator

from .errors import ConfigError


def suggest(name: str, known: list[str]) -> str:
    """' Did you mean a, b?' for the names closest to `name`, or ''."""
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    return f" Did you mean {', '.join(close)}?" if close else ""


class Registry:
    """Maps names to objects, or to lazy `"package.module:attr"` strings resolved on first `get`."""

    def __init__(self, kind: str):
        self.kind = kind  # "method", "dataset", ... used in error messages
        self._targets: dict[str, Any] = {}
        self._resolved: dict[str, Any] = {}

    def register(self, name: str, target: Any = None) -> Any:
        """Register `target` under `name`; used bare, as a decorator: `@reg.register("x")`."""
        if target is None:
            return lambda obj: self.register(name, obj)
        if name in self._targets:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._targets[name] = target
        return target

    def get(self, name: str) -> Any:
        if name not in self._targets:
            raise ConfigError(
                f"unknown {self.kind} {name!r}.{suggest(name, self.names())} "
                f"Known {self.kind}s: {', '.join(self.names())} (see `ddbench list {self.kind}s`)."
            )
        if name not in self._resolved:
            target = self._targets[name]
            if isinstance(target, str):
                module, _, attr = target.partition(":")
                target = getattr(importlib.import_module(module), attr)
            self._resolved[name] = target
        return self._resolved[name]

    def names(self) -> list[str]:
        return sorted(self._targets)

    def __contains__(self, name: str) -> bool:
        return name in self._targets

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def lazy(target: str) -> Callable[[], Any]:
    """A thunk that imports `"module:attr"` when called (for optional heavy imports)."""
    module, _, attr = target.partition(":")
    return lambda: getattr(importlib.import_module(module), attr)
