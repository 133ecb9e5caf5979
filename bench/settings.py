"""Typed settings blocks: one dataclass per block, one parser for all of them.

A settings block (``suite_settings.<suite>``) is a frozen dataclass whose field defaults are the
only defaults there are. ``parse_settings`` turns the raw config mapping into that dataclass and
rejects, with one line naming ``<where>.<key>`` and the fix:

- an unknown key (with the closest known keys, ``difflib``);
- a value of the wrong type (from the field's annotation: ``int``, ``float``, ``bool``, ``str``,
  ``X | None``, ``Literal[...]``, ``tuple[X, ...]``, ``dict[str, Any]``, ``Any``);
- a number that is not finite (nan, inf: no hyperparameter, budget or seed means anything there);
- a value out of range, from the field's metadata: ``ge``/``gt``/``le``/``lt`` bounds and
  ``choices`` (applied to each element of a tuple), ``nonempty`` for tuples, ``unique``.

A key set to null (``~`` in YAML) takes the dataclass default where the field cannot be null
(``conf/config.yaml`` lists the keys of each suite block, so plain ``key=value`` overrides work,
without repeating their values); where null is a value of the field (``unlearn.stop_at: null`` =
fixed-step mode) it is kept. The run config (``bench.run_config``) and every method's and
benchmark loader's arguments go through the same parser. Lists
become tuples (the dataclasses are frozen), and a single value where a list is expected a list of one. Checks that need more than one field or
the benchmark live next to the dataclass (a suite's ``check(settings, bench)``).
"""

from __future__ import annotations

import collections.abc
import dataclasses
import difflib
import inspect
import math
import types
import typing
from typing import Any, Literal, Mapping, Union

from bench.errors import ConfigError, UserError


class SettingsError(ConfigError):
    """A bad settings value; the message names ``<block>.<key>`` and the fix."""


def bounded(default: Any, **rules: Any) -> Any:
    """A dataclass field with validation rules (``ge``, ``gt``, ``le``, ``lt``, ``choices``, ``nonempty``, ``unique``)."""
    if isinstance(default, (list, tuple)):
        return dataclasses.field(default=tuple(default), metadata=rules)
    return dataclasses.field(default=default, metadata=rules)


def did_you_mean(name: str, options: list[str]) -> str:
    """"did you mean 'x'? " for the closest options (difflib), or ""."""
    hits = difflib.get_close_matches(name, options, n=3, cutoff=0.6)
    return f"did you mean {' or '.join(repr(h) for h in hits)}? " if hits else ""



def dotted(where: str, key: str) -> str:
    """The full config path of ``key`` inside the block ``where`` ("" = the top level)."""
    return f"{where}.{key}" if where else key


def unknown_key_error(where: str, key: str, allowed: list[str], kind: str = "key") -> SettingsError:
    block = f" of {where}" if where else ""
    return SettingsError(f"unknown {'config ' if kind == 'key' else ''}{kind} {dotted(where, key)!r}: "
                         f"{did_you_mean(key, allowed)}allowed keys{block}: {sorted(allowed)}")


def is_int(v: Any) -> bool:
    """An int, not a bool (YAML's true is an int to isinstance)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v: Any) -> bool:
    """An int or a float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (tuple, list, collections.abc.Sequence):
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
    if origin in (tuple, list, collections.abc.Sequence):
        if isinstance(value, (str, bytes)) or not isinstance(value, collections.abc.Sequence):  # OmegaConf lists too
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
        return is_int(value), value
    if tp is float:
        return is_number(value), float(value) if is_number(value) else value
    if tp is str:
        return isinstance(value, str), value
    try:
        return isinstance(value, origin or tp), value
    except TypeError:  # an annotation isinstance cannot test: accept the value as given
        return True, value


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
        if isinstance(v, float) and not math.isfinite(v):
            return f"must be a finite number{' (each value)' if isinstance(value, tuple) else ''}; got {v!r}"
        if "choices" in meta and v not in meta["choices"]:
            hint = did_you_mean(str(v), [str(c) for c in meta["choices"]])
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
    return "".join(did_you_mean(str(v), choices) for v in values if str(v) not in choices)


def _show(value: Any) -> str:
    if isinstance(value, tuple):
        return "[" + ",".join(_show(v) for v in value) + "]"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _admits_none(tp: Any) -> bool:
    return tp is type(None) or tp is Any or (typing.get_origin(tp) in (Union, types.UnionType)
                                               and type(None) in typing.get_args(tp))


def _check_value(where: str, name: str, value: Any, tp: Any, meta: Mapping[str, Any], default: Any) -> Any:
    """``value`` checked against the annotation ``tp`` and the field's rules (``bounded``)."""
    key = dotted(where, name)
    example = f"e.g. {key}={_show(default)} (the default)" if default is not dataclasses.MISSING else f"set {key}=..."
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return parse_settings(tp, value, key)
    ok, out = _coerce(value, tp)
    if not ok:
        raise SettingsError(f"{key} must be {_type_name(tp)}, got {value!r}; {_literal_hint(tp, value)}{example}")
    broken = _check_rules(name, out, meta, default)
    if broken:
        raise SettingsError(f"{key} {broken}; {example}")
    return out


def _fields(cls: Any) -> dict[str, tuple[Any, Any, Mapping[str, Any]]]:
    """name -> (annotation, default or MISSING, rules) of a dataclass's init fields or a function's arguments."""
    hints = typing.get_type_hints(cls)
    if dataclasses.is_dataclass(cls):
        out = {}
        for f in dataclasses.fields(cls):
            if f.init:
                default = (f.default if f.default is not dataclasses.MISSING else
                           f.default_factory() if f.default_factory is not dataclasses.MISSING else dataclasses.MISSING)
                out[f.name] = (hints.get(f.name, Any), default, f.metadata)
        return out
    params = inspect.signature(cls).parameters.values()
    return {p.name: (hints.get(p.name, Any), dataclasses.MISSING if p.default is p.empty else p.default, {})
            for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def parse_arguments(cls: Any, raw: Mapping[str, Any] | None, where: str, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """The checked keyword arguments of ``cls`` (a dataclass or a function) from the raw mapping
    ``raw`` at config path ``where``: unknown keys, wrong types, broken rules and missing required
    keys raise a ``SettingsError``; null takes the default where the field cannot be null."""
    if raw is not None and not isinstance(raw, Mapping):
        raise SettingsError(f"{where or 'the config'} must be a mapping of settings, got {raw!r}; "
                            f"e.g. {dotted(where, '<key>')}=<value>")
    raw = {k: v for k, v in (raw or {}).items() if k not in ignore}
    fields = _fields(cls)
    for key in raw:
        if key not in fields:
            raise unknown_key_error(where, key, list(fields))
    values: dict[str, Any] = {}
    for name, (tp, default, meta) in fields.items():
        if name not in raw or (raw[name] is None and not _admits_none(tp)):
            if default is dataclasses.MISSING:
                raise SettingsError(f"{dotted(where, name)} is required; set {dotted(where, name)}=<value>")
            if name in raw:  # null: the default, spelt out
                values[name] = default
            continue
        values[name] = _check_value(where, name, raw[name], tp, meta, default)
    return values


def parse_settings(cls: type, raw: Mapping[str, Any] | None, where: str, ignore: tuple[str, ...] = ()) -> Any:
    """``cls`` (a dataclass) from the raw mapping ``raw`` found at config path ``where``; a check of
    the class's own (``__post_init__``) that raises ValueError becomes a ``SettingsError``."""
    if isinstance(raw, cls):
        return raw
    values = parse_arguments(cls, raw, where, ignore)
    try:
        return cls(**values)
    except UserError:  # already one line naming the key and the fix
        raise
    except (ValueError, TypeError) as e:
        raise SettingsError(f"{where}: {e}" if where else str(e)) from None
