"""Name → component registries with did-you-mean errors.

Configs refer to components by name (``backbone: mobilenetv3_small_100``, ``weighting: static``), never
by import path, so a config cannot execute code and every name has a documented owner.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ValidationError

from .errors import ConfigError

T = TypeVar("T")


def did_you_mean(name: str, choices: list[str] | tuple[str, ...] | set[str]) -> str:
    """Return ' — did you mean 'x'?' for the closest choice, or a list of choices."""
    close = difflib.get_close_matches(name, sorted(choices), n=1, cutoff=0.5)
    if close:
        return f" — did you mean '{close[0]}'?"
    return f" (choose from: {', '.join(sorted(choices))})"


def parse_options(options_cls: type[BaseModel], options: dict[str, Any], where: str) -> Any:
    """``options_cls(**options)``; a ConfigError naming ``where`` and the option (with a did-you-mean for an
    unknown key) instead of pydantic's report, so every component's options fail the same way."""
    try:
        return options_cls(**options)
    except ValidationError as exc:
        first = exc.errors()[0]
        key = ".".join(str(p) for p in first["loc"])
        if first["type"] == "extra_forbidden":
            hint = did_you_mean(key, list(options_cls.model_fields))
            raise ConfigError(f"{where}: unknown option '{key}'{hint}") from None
        message = first["msg"].removeprefix("Value error, ")
        if not key:  # a check across options
            raise ConfigError(f"{where}: {message}") from None
        got = f" (got {first['input']!r})" if "input" in first and not isinstance(first["input"], dict) else ""
        raise ConfigError(f"{where}: option '{key}': {message}{got}") from None


class Registry(Generic[T]):
    """A named mapping from string keys to factories, filled by a decorator."""

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str | None = None) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            key = name or getattr(obj, "name", None) or obj.__name__  # type: ignore[attr-defined]
            if key in self._items:
                raise ValueError(f"{self.kind} '{key}' is registered twice")
            self._items[key] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        if name not in self._items:
            raise ConfigError(f"unknown {self.kind} '{name}'{did_you_mean(name, self._items.keys())}")
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))
