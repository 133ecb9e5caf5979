"""Typed settings blocks: one dataclass per block, one parser for all of them.

A settings block (``suite_settings.<suite>``) is a frozen dataclass whose field defaults are the
only defaults there are. ``parse_settings`` turns the raw config mapping into that dataclass and
rejects, with one line naming ``<where>.<key>`` and the fix:

- an unknown key (with the closest known keys, ``difflib``);
- a value of the wrong type (from the field's annotation: ``int``, ``float``, ``bool``, ``str``,
  ``X | None``, ``Literal[...]``, ``tuple[X, ...]``, ``dict[str, Any]``, ``Any``);
- a value out of range, from the field's metadata: ``ge``/``gt``/``le``/``lt`` bounds and
  ``choices`` (applied to each element of a tuple), ``nonempty`` for tuples, ``unique``.

A key set to null (``~`` in YAML) takes the dataclass default: ``conf/config.yaml`` lists the
keys of each block (so plain ``key=value`` overrides work) without repeating their values. Lists
become tuples (the dataclasses are frozen), and a single value where a list is expected a list of one. Checks that need more than one field or
the benchmark live next to the dataclass (a suite's ``check(settings, bench)``).
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from typing import Any, Literal, Mapping, Union

from bench.errors import ConfigError


class SettingsError(ConfigError):
    """A bad settings value; the message names ``<block>.<key>`` and the fix."""


def bounded(default: Any, **rules: Any) -> Any:
    """A dataclass field with validation rules (``ge``, ``gt``, ``le``, ``lt``, ``choices``, ``nonempty``, ``unique``)."""
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default=tuple(default), metadata=rules)
    return dataclasses.field(default=default, metadata=rules)


def _close(name: str, options: list[str]) -> str:
    hits = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
    return f"did you mean {' or '.join(hits)}? " if hits else ""


def unknown_key_error(where: str, key: str, allowed: list[str], kind: str = "key") -> SettingsError:
    return SettingsError(f"{where}: unknown {kind} {key!r}; {_close(key, allowed)}allowed: {sorted(allowed)}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list):
        elem = typing.get_args(tp)[0]
        plural = {int: "integers", float: "numbers", bool: "booleans", str: "strings"}.get(elem)
        return f"a list of {plural or _type_name(elem)}"
    if origin is dict or tp is dict:
        return "a mapping"
    return {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))


def _coerce(value: Any, tp: Any) -> tuple[bool, Any]:
    """(ok, value converted to ``tp``'s form) without range checks."""
    if tp is Any:
        return True, value
    origin = typing.get_origin(tp)
    if origin is Literal:
        return value in typing.get_args(tp), value
    if origin in (Union, types.UnionType):
        for arg in typing.get_args(tp):
            ok, out = _coerce(value, arg)
            if ok:
                return True, out
        return False, value
    if tp is type(None):
        return value is None, value
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            value = [value]  # one value where a list is expected: a list of one
        elem = typing.get_args(tp)[0]
        out = []
        for v in value:
            ok, c = _coerce(v, elem)
            if not ok:
                return False, value
            out.append(c)
        return True, tuple(out)
    if origin is dict or tp is dict:
        return isinstance(value, Mapping), dict(value) if isinstance(value, Mapping) else value
    if tp is bool:
        return isinstance(value, bool), value
    if tp is int:
        return _is_int(value), value
    if tp is float:
        return (_is_int(value) or isinstance(value, float)), float(value) if _is_int(value) or isinstance(value, float) else value
    if tp is str:
        return isinstance(value, str), value
    return isinstance(value, tp), value


_RULES = {"ge": (">=", lambda v, b: v >= b), "gt": (">", lambda v, b: v > b),
          "le": ("<=", lambda v, b: v <= b), "lt": ("<", lambda v, b: v < b)}


def _check_rules(key: str, value: Any, meta: Mapping[str, Any], default: Any) -> str | None:
    """A description of the broken rule, or None."""
    items = value if isinstance(value, tuple) else (value,)
    if isinstance(value, tuple):
        if meta.get("nonempty") and not value:
            return "must not be empty"
        if meta.get("unique") and len(set(value)) != len(value):
            return f"lists a value twice: {list(value)}"
    for v in items:
        if v is None or isinstance(v, bool):
            continue
        if "choices" in meta and v not in meta["choices"]:
            hint = _close(str(v), [str(c) for c in meta["choices"]])
            return f"values must be among {list(meta['choices'])}; got {v!r}" + (f" ({hint.strip()})" if hint else "")
        for rule, (op, holds) in _RULES.items():
            if rule in meta and isinstance(v, (int, float)) and not holds(v, meta[rule]):
                return f"must be {op} {meta[rule]}{' (each value)' if isinstance(value, tuple) else ''}; got {v!r}"
    return None


def _literal_hint(tp: Any, value: Any) -> str:
    """"did you mean ...? " for a misspelt choice of a ``Literal`` (or list of ``Literal``) field."""
    if typing.get_origin(tp) in (tuple, list):
        tp = typing.get_args(tp)[0]
    if typing.get_origin(tp) is not Literal:
        return ""
    choices = [str(c) for c in typing.get_args(tp)]
    values = value if isinstance(value, (list, tuple)) else [value]
    return "".join(_close(str(v), choices) for v in values if str(v) not in choices)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def parse_settings(cls: type, raw: Mapping[str, Any] | None, where: str) -> Any:
    """``cls`` (a dataclass) from the raw mapping ``raw`` found at config path ``where``."""
    if isinstance(raw, cls):
        return raw
    if raw is not None and not isinstance(raw, Mapping):
        raise SettingsError(f"{where} must be a mapping of settings, got {raw!r}; e.g. {where}.<key>=<value>")
    raw = dict(raw or {})
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in raw:
        if key not in fields:
            raise unknown_key_error(where, key, list(fields))
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        value = raw.get(name)
        if value is None:  # absent or null: the default
            values[name] = default
            continue
        ok, value = _coerce(value, hints[name])
        if not ok:
            raise SettingsError(f"{where}.{name} must be {_type_name(hints[name])}, got {raw[name]!r}; "
                                f"{_literal_hint(hints[name], raw[name])}e.g. {where}.{name}={_show(default)} (the default)")
        broken = _check_rules(name, value, f.metadata, default)
        if broken:
            raise SettingsError(f"{where}.{name} {broken}; e.g. {where}.{name}={_show(default)} (the default)")
        values[name] = value
    return cls(**values)
