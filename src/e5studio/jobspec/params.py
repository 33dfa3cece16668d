"""A job parameter described once (name, type, default, bounds or choices, help) and what is built from it:
command-line flags (:func:`add_arguments`) and the checked values of a form or API call
(:func:`validate_params`, raising :class:`~e5studio.errors.ParamError` that names the field)."""

from __future__ import annotations

import argparse
import math
import unicodedata
from collections.abc import Callable, Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass

from e5studio.errors import ParamError

Value = int | float | str | None
_LINE_BREAKS = {"\u2028", "\u2029"}  # Unicode's own line and paragraph separators (category Zl/Zp)


def plain_text(field: str, value: str) -> str:
    """``value`` unchanged when it holds no control character; else :class:`ParamError` naming ``field``.

    Every path, name or word that reaches a file name, a log line or a process argument passes here: a NUL
    cannot be in a path or an argument, and a line break would let a value write log lines of its choosing.
    The message locates the character without repeating the value."""
    for at, char in enumerate(value):
        if char in _LINE_BREAKS or unicodedata.category(char) == "Cc":
            raise ParamError(field, f"must not contain control characters (U+{ord(char):04X} at character {at + 1})")
    return value


@dataclass(frozen=True)
class Param:
    """One parameter. ``minimum``/``maximum`` bound numbers (``above``: strictly greater than ``minimum``);
    ``choices`` list the words a ``str`` parameter takes; ``setting`` is its field name in a settings object
    where that differs from ``name`` (``lr`` -> ``learning_rate``)."""

    name: str
    type: type  # int, float or str
    default: Value
    help: str
    minimum: float | None = None
    maximum: float | None = None  # exclusive
    above: bool = False
    choices: tuple[str, ...] = ()
    empty: str = ""  # what no value means, for a parameter whose default is None
    setting: str = ""
    text_rule: str = ""  # a str parameter without choices: its rule in words (checked by ``text_check``)
    text_check: Callable[[str], bool] | None = None

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")

    @property
    def field(self) -> str:
        """The settings-object field this parameter fills."""
        return self.setting or self.name

    @property
    def rule(self) -> str:
        """What a valid value is, in words."""
        if self.choices:
            return "one of " + ", ".join(self.choices)
        if self.type is str:
            return self.text_rule or "text"
        kind = "an integer" if self.type is int else "a number"
        parts = []
        if self.minimum is not None:
            parts.append(f"{'>' if self.above else '>='} {self.minimum:g}")
        if self.maximum is not None:
            parts.append(f"< {self.maximum:g}")
        rule = f"{kind} {' and '.join(parts)}".strip()
        return f"{rule} (empty: {self.empty})" if self.empty else rule

    def valid(self, value: int | float | str) -> bool:
        if self.choices:
            return value in self.choices
        if isinstance(value, str):
            return self.type is str and (self.text_check is None or self.text_check(value))
        if self.minimum is not None and (value <= self.minimum if self.above else value < self.minimum):
            return False
        return self.maximum is None or value < self.maximum

    def check(self, value: Value) -> None:
        """Raise :class:`ParamError` unless ``value`` (already typed) is valid; None passes where the default is."""
        if value is None and self.default is None:
            return
        if value is None or not self.valid(value):
            raise ParamError(self.name, f"must be {self.rule}, got {value!r}")

    def coerce(self, value: object) -> Value:
        """A form or API value checked and typed; None or an empty string means the default."""
        if value is None or (isinstance(value, str) and not value.strip()):
            return self.default
        typed: Value = None
        if isinstance(value, bool):
            typed = None
        elif self.type is str:
            typed = plain_text(self.name, value.strip()) if isinstance(value, str) else None
        elif self.type is int:
            if isinstance(value, int):
                typed = value
            elif isinstance(value, float) and value.is_integer():
                typed = int(value)
            elif isinstance(value, str):
                with suppress(ValueError):
                    typed = int(value.strip())
        else:
            if isinstance(value, int | float):
                typed = float(value)
            elif isinstance(value, str):
                with suppress(ValueError):
                    typed = float(value.strip())
            if isinstance(typed, float) and not math.isfinite(typed):
                typed = None
        if typed is None or not self.valid(typed):
            raise ParamError(self.name, f"must be {self.rule}, got {value!r}")
        return typed



def by_name(params: Iterable[Param]) -> dict[str, Param]:
    out: dict[str, Param] = {}
    for p in params:
        if p.name in out:
            raise ValueError(f"parameter {p.name!r} is described twice")
        out[p.name] = p
    return out


def defaults(specs: Mapping[str, Param]) -> dict[str, Value]:
    """Every parameter and its default (None: the command's own choice), e.g. to prefill a form."""
    return {name: spec.default for name, spec in specs.items()}


def validate_params(params: Mapping[str, object], specs: Mapping[str, Param]) -> dict[str, Value]:
    """Every parameter of ``specs`` with its checked value (given or default); raises :class:`ParamError`.

    Numbers may come as strings (form fields); ``None`` or an empty string means the default.
    """
    unknown = sorted(set(params) - set(specs))
    if unknown:
        raise ParamError(unknown[0], f"unknown parameter; known: {', '.join(specs)}")
    return {name: spec.coerce(params.get(name)) for name, spec in specs.items()}


def add_arguments(parser: argparse.ArgumentParser, specs: Iterable[Param]) -> None:
    """One ``--flag`` per parameter, with its default, its check and its help."""
    for p in specs:
        default = "" if p.default is None else f" (default {p.default})"
        if p.choices:
            parser.add_argument(p.flag, dest=p.name, choices=list(p.choices), default=p.default,
                                help=p.help + default)
        else:  # bounds are checked where the values are used (settings objects, the job runner)
            parser.add_argument(p.flag, dest=p.name, type=p.type, default=p.default, help=p.help + default)


def command_args(specs: Mapping[str, Param], values: Mapping[str, object]) -> list[str]:
    """The command-line flags that pass ``values`` on (those set; None is left to the command's default)."""
    args: list[str] = []
    for name, spec in specs.items():
        if values.get(name) is not None:
            args += [spec.flag, str(values[name])]
    return args
