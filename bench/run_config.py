"""The run config's schema, checked before any compute.

``python -m bench.run`` composes a config with Hydra; ``RunConfig.parse`` turns the resolved
config into typed settings. Every block is a dataclass (the top level, ``unlearn``,
``continual``, ``model.inject``; each method's class and the benchmark loader's signature are
read the same way), parsed by the one settings parser (``bench.settings``): an unknown key fails
with "did you mean ...", a value of the wrong type or out of range fails naming the full key and
the fix, always as a ``ConfigError`` (one line, no traceback). Suite settings are checked by
their suites (``bench.suites.validate_settings``), attacks by ``bench.attacks``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal, Mapping

from bench.errors import ConfigError
from bench.settings import bounded, is_int, parse_settings, unknown_key_error


@dataclass(frozen=True)
class UnlearnSettings:
    """The ``unlearn`` block: shared by every method (the method YAML holds lr and its loss weights).

    stop_at: the forget mcq_acc at which unlearning stops. ``auto`` = chance + stop_margin;
    ``oracle`` = the oracle's forget mcq_acc on the same items + stop_margin (matched to the
    retrained model); ``chance`` = at or below chance (the Ssiuu paper's rule); a number in
    [0, 1]; null = fixed-step mode (no stopping rule). check_retain: how many retain items (evenly
    spread over the split) each full check scores for the stop trace's retain em; null = every one.
    trace_every: steps between full checks (bench.stopping): a full check scores every forget item and
    the retain items and records both in the stop trace (the tradeoff plot's trajectory); the checks
    between decide the rule from as few forget items as decide it. null = every check is full. The
    stopping rule itself reads only forget mcq: neither key changes when a run stops (README "Speed").
    """

    max_steps: int = bounded(600, ge=1)
    batch_size: int = bounded(16, ge=1)
    warmup_steps: int = bounded(0, ge=0)
    grad_clip: float | None = bounded(1.0, gt=0)
    check_every: int = bounded(5, ge=1)
    stop_at: Literal["auto", "oracle", "chance"] | float | None = "auto"
    stop_margin: float = bounded(0.05, ge=0, lt=1)
    check_retain: int | None = bounded(None, ge=1)
    trace_every: int | None = bounded(25, ge=1)

    def __post_init__(self) -> None:
        if isinstance(self.stop_at, float) and not 0 <= self.stop_at <= 1:
            raise ConfigError(f"unlearn.stop_at must lie in [0, 1] (it is a forget mcq_acc), got {self.stop_at}")


@dataclass(frozen=True)
class ContinualSettings:
    """The ``continual`` block: requests = forget split cut by person into this many sequential
    requests (1 = an ordinary single run); suites = evaluated as stage request/<i> after each."""

    requests: int = bounded(1, ge=1)
    suites: tuple[str, ...] = bounded(("knowledge",), unique=True)


@dataclass(frozen=True)
class RunConfig:
    """The top level of the run config (conf/config.yaml). Blocks with their own parsers (benchmark,
    model, method, attack, suite_settings) are kept as plain mappings here."""

    benchmark: dict[str, Any]
    model: dict[str, Any]
    method: dict[str, Any]
    seed: int = bounded(0, ge=0)  # numpy's generators take no negative seed
    suites: tuple[str, ...] = bounded(("knowledge", "privacy"), unique=True)
    cache_dir: str = "results/cache"
    threads: int | None = bounded(None, ge=1)
    reuse_stages: bool = True
    tuned: str | None = None   # a tuned-settings file (bench.tune), merged into the method block before parsing
    attack: dict[str, Any] = field(default_factory=dict)
    unlearn: UnlearnSettings = field(default_factory=UnlearnSettings)
    continual: ContinualSettings = field(default_factory=ContinualSettings)
    suite_settings: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.suites:
            raise ConfigError("suites is empty; select at least one, e.g. suites=[knowledge,privacy]")

    @classmethod
    def parse(cls, resolved: Mapping[str, Any]) -> "RunConfig":
        return parse_settings(cls, resolved, "")


def reject_unknown(raw: Mapping[str, Any], allowed: list[str], where: str) -> None:
    for key in raw:
        if key not in allowed:
            raise unknown_key_error(where, key, allowed)


MODEL_KEYS = ("name", "pretrained", "tokenizer", "dtype", "device", "arch", "inject", "chat_template", "revision",
              "trust_remote_code", "use_safetensors", "gguf", "gguf_file", "gradient_checkpointing")


# model.arch keys the harness sets itself from the tokenizer (bench.models.build_base_model).
HARNESS_ARCH_KEYS = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id", "tie_word_embeddings")


def check_model_block(spec: Mapping[str, Any]) -> dict[str, Any]:
    """Keys of the ``model`` block, its ``inject`` settings, and a fresh model's shape (a Llama built
    from ``model.arch`` must split its width into heads, and its heads into key/value groups).
    Returns the block with ``inject`` as parsed (a null takes its default, numbers their type)."""
    from transformers import LlamaConfig

    from bench.train import TrainConfig

    from bench.models import DTYPES

    reject_unknown(spec, list(MODEL_KEYS), "model")
    spec = dict(spec)
    if "dtype" in spec:  # one name per dtype (bf16 and bfloat16 are the same model, the same cache entry)
        spec["dtype"] = DTYPES.get(spec["dtype"], spec["dtype"]) if isinstance(spec["dtype"], str) else spec["dtype"]
    if spec.get("inject") is not None:
        inject = parse_settings(TrainConfig, spec["inject"], "model.inject")
        spec["inject"] = {key: getattr(inject, key) for key in spec["inject"]}
    arch = spec.get("arch")
    if arch is None or spec.get("pretrained") or spec.get("gguf"):
        return spec
    if not isinstance(arch, Mapping):
        raise ConfigError(f"model.arch must be a mapping of LlamaConfig fields, got {arch!r}")
    defaults = LlamaConfig().to_dict()
    reject_unknown(arch, [k for k in defaults if not k.startswith("_")], "model.arch")
    set_by_harness = [k for k in arch if k in HARNESS_ARCH_KEYS]
    if set_by_harness:
        raise ConfigError(f"model.arch.{set_by_harness[0]} is set by the harness from the tokenizer; remove it "
                          f"(the harness sets {list(HARNESS_ARCH_KEYS)})")
    sizes = ("hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "intermediate_size",
             "max_position_embeddings")
    for key in sizes:
        value = arch.get(key, defaults.get(key))
        if value is None and key == "num_key_value_heads":
            continue
        if not is_int(value) or value < 1:
            raise ConfigError(f"model.arch.{key} must be an integer >= 1, got {value!r}")
    d, heads = arch.get("hidden_size", defaults["hidden_size"]), arch.get("num_attention_heads", defaults["num_attention_heads"])
    kv = arch.get("num_key_value_heads") or heads
    if d % heads:
        raise ConfigError(f"model.arch.hidden_size={d} is not a multiple of num_attention_heads={heads}; "
                          f"use a hidden_size divisible by {heads}")
    head = arch.get("head_dim") or d // heads
    if head % 2:
        key = "head_dim" if arch.get("head_dim") else "hidden_size"
        raise ConfigError(f"model.arch.{key}={arch.get(key)}: head size {head} is odd (rotary embeddings rotate pairs "
                          "of dimensions); use an even head size")
    if heads % kv:
        raise ConfigError(f"model.arch.num_key_value_heads={kv} does not divide num_attention_heads={heads}; "
                          f"use a divisor of {heads} (e.g. {heads})")
    return spec
