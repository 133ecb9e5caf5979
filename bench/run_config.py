"""The run config's schema, checked before any compute.

``python -m bench.run`` composes a config with Hydra; ``RunConfig.parse`` turns the resolved
config into typed settings. Every block is a dataclass (the top level, ``unlearn``,
``continual``, ``model.inject``, each method's class, the benchmark loader's signature), read by
one function, ``parse_typed``: an unknown key fails with "did you mean ...", a value of the wrong
type or out of range fails naming the full key and the fix, always as a ``ConfigError`` (one
line, no traceback). Suite settings are checked by their suites (``bench.suites``), attacks by
``bench.attacks``.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from bench.errors import ConfigError

STOP_RULES = ("auto", "oracle", "chance")


def did_you_mean(key: str, allowed: list[str]) -> str:
    close = difflib.get_close_matches(key, allowed, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}? " if close else ""


def reject_unknown(raw: Mapping[str, Any], allowed: list[str], where: str) -> None:
    """ConfigError for the first key of ``raw`` not in ``allowed`` (``where``: the block's dotted path)."""
    for key in raw:
        if key not in allowed:
            full = f"{where}.{key}" if where else key
            raise ConfigError(f"unknown config key {full!r}: {did_you_mean(key, allowed)}"
                              f"allowed keys{' of ' + where if where else ''}: {sorted(allowed)}")


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string", type(None): "null",
          list: "a list", tuple: "a list", dict: "a mapping"}


def _type_name(tp: Any) -> str:
    """An annotation in words: ``int | None`` -> "an integer or null"."""
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " or ".join(repr(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    return _NAMES.get(origin or tp, getattr(tp, "__name__", str(tp)))


def check_value(value: Any, tp: Any, key: str) -> Any:
    """``value`` checked against the annotation ``tp``; ints are accepted where floats are expected
    and lists where tuples are. Returns the value (tuples for tuple fields)."""
    if tp is Any or tp is object:
        return value
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in args:
            try:
                return check_value(value, arg, key)
            except ConfigError:
                continue
        raise ConfigError(f"{key} must be {_type_name(tp)}, got {value!r}")
    if origin is Literal:
        if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
            return value
        raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, e.g. {key}=[a,b], got {value!r}")
        inner = args[0] if args else Any
        items = [check_value(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key} must be null, got {value!r}")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key} must be a number (e.g. 1e-4), got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key} must be a string, got {value!r}")
    if dataclasses.is_dataclass(tp):
        return parse_typed(tp, value, key)
    return value


def init_fields(cls: type) -> dict[str, Any]:
    """The constructor's fields and their resolved annotations (a dataclass or a function)."""
    if dataclasses.is_dataclass(cls):
        hints = typing.get_type_hints(cls)
        return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    return {name: hints.get(name, Any) for name, p in inspect.signature(cls).parameters.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def typed_kwargs(cls: Any, raw: Mapping[str, Any] | None, where: str, ignore: tuple[str, ...] = ()) -> dict[str, Any]:
    """``raw`` checked against ``cls``'s constructor (a dataclass or a function): unknown keys and
    values of the wrong type raise a ConfigError naming ``where.<key>``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where} must be a mapping of keys to values, got {raw!r}")
    fields_ = init_fields(cls)
    body = {k: v for k, v in raw.items() if k not in ignore}
    reject_unknown(body, list(fields_), where)
    return {k: check_value(v, fields_[k], f"{where}.{k}" if where else k) for k, v in body.items()}


def parse_typed(cls: type, raw: Mapping[str, Any] | None, where: str, ignore: tuple[str, ...] = ()) -> Any:
    """An instance of the dataclass ``cls`` from ``raw``; its own checks (``__post_init__``) become
    ConfigErrors prefixed with ``where``."""
    kwargs = typed_kwargs(cls, raw, where, ignore)
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:
        raise ConfigError(f"{where}: {e}" if where else str(e)) from None


@dataclass(frozen=True)
class UnlearnSettings:
    """The ``unlearn`` block: shared by every method (the method YAML holds lr and its loss weights).

    stop_at: the forget mcq_acc at which unlearning stops. ``auto`` = chance + stop_margin;
    ``oracle`` = the oracle's forget mcq_acc on the same items + stop_margin (matched to the
    retrained model); ``chance`` = at or below chance (the Ssiuu paper's rule); a number in
    [0, 1]; null = fixed-step mode (no stopping rule).
    """

    max_steps: int = 300
    batch_size: int = 16
    warmup_steps: int = 0
    grad_clip: float | None = 1.0
    check_every: int = 5
    stop_at: Literal["auto", "oracle", "chance"] | float | None = "auto"
    stop_margin: float = 0.05

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ConfigError(f"unlearn.max_steps must be >= 1, got {self.max_steps}")
        if self.batch_size < 1:
            raise ConfigError(f"unlearn.batch_size must be >= 1, got {self.batch_size}")
        if self.warmup_steps < 0:
            raise ConfigError(f"unlearn.warmup_steps must be >= 0, got {self.warmup_steps}")
        if self.check_every < 1:
            raise ConfigError(f"unlearn.check_every must be >= 1, got {self.check_every}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"unlearn.grad_clip must be positive or null, got {self.grad_clip}")
        if not 0 <= self.stop_margin < 1:
            raise ConfigError(f"unlearn.stop_margin must lie in [0, 1), got {self.stop_margin}")
        if isinstance(self.stop_at, float) and not 0 <= self.stop_at <= 1:
            raise ConfigError(f"unlearn.stop_at must lie in [0, 1] (it is a forget mcq_acc), got {self.stop_at}")


@dataclass(frozen=True)
class ContinualSettings:
    """The ``continual`` block: requests = forget split cut by person into this many sequential
    requests (1 = an ordinary single run); suites = evaluated as stage request/<i> after each."""

    requests: int = 1
    suites: tuple[str, ...] = ("knowledge",)

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ConfigError(f"continual.requests must be an integer >= 1 (1 = an ordinary single run), got {self.requests}")


@dataclass(frozen=True)
class RunConfig:
    """The top level of the run config (conf/config.yaml). Blocks with their own parsers (benchmark,
    model, method, attack, suite_settings) are kept as plain mappings here."""

    benchmark: dict[str, Any]
    model: dict[str, Any]
    method: dict[str, Any]
    seed: int = 0
    suites: tuple[str, ...] = ("knowledge", "privacy")
    cache_dir: str = "results/cache"
    threads: int | None = None
    reuse_stages: bool = True
    attack: dict[str, Any] = field(default_factory=dict)
    unlearn: UnlearnSettings = field(default_factory=UnlearnSettings)
    continual: ContinualSettings = field(default_factory=ContinualSettings)
    suite_settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.threads is not None and self.threads < 1:
            raise ConfigError(f"threads must be an integer >= 1 or null (torch's default), got {self.threads}")
        if not self.suites:
            raise ConfigError("suites is empty; select at least one, e.g. suites=[knowledge,privacy]")

    @classmethod
    def parse(cls, resolved: Mapping[str, Any]) -> "RunConfig":
        return parse_typed(cls, resolved, "")


MODEL_KEYS = ("name", "pretrained", "tokenizer", "dtype", "device", "arch", "inject", "chat_template", "revision",
              "trust_remote_code", "use_safetensors", "gguf", "gguf_file")


def check_model_block(spec: Mapping[str, Any]) -> None:
    """Keys of the ``model`` block, its ``inject`` settings, and a fresh model's shape (a Llama built
    from ``model.arch`` must split its width into heads, and its heads into key/value groups)."""
    from transformers import LlamaConfig

    from bench.train import TrainConfig

    reject_unknown(spec, list(MODEL_KEYS), "model")
    if spec.get("inject") is not None:
        parse_typed(TrainConfig, spec["inject"], "model.inject")
    arch = spec.get("arch")
    if arch is None or spec.get("pretrained") or spec.get("gguf"):
        return
    if not isinstance(arch, Mapping):
        raise ConfigError(f"model.arch must be a mapping of LlamaConfig fields, got {arch!r}")
    defaults = LlamaConfig().to_dict()
    reject_unknown(arch, [k for k in defaults if not k.startswith("_")], "model.arch")
    sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
             "max_position_embeddings")
    for key in sizes:
        value = arch.get(key, defaults.get(key))
        if value is None and key == "num_key_value_heads":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"model.arch.{key} must be an integer >= 1, got {value!r}")
    d, heads = arch.get("hidden_size", defaults["hidden_size"]), arch.get("num_attention_heads", defaults["num_attention_heads"])
    kv = arch.get("num_key_value_heads") or heads
    if d % heads:
        raise ConfigError(f"model.arch.hidden_size={d} is not a multiple of num_attention_heads={heads}; "
                          f"use a hidden_size divisible by {heads}")
    if (d // heads) % 2:
        raise ConfigError(f"model.arch.hidden_size={d}: head size hidden_size/num_attention_heads = {d // heads} is odd "
                          "(rotary embeddings rotate pairs of dimensions); use an even head size")
    if heads % kv:
        raise ConfigError(f"model.arch.num_key_value_heads={kv} does not divide num_attention_heads={heads}; "
                          f"use a divisor of {heads} (e.g. {heads})")
