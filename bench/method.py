"""The method interface. The harness knows methods only through this contract.

A method is a class that Hydra instantiates from ``conf/method/<name>.yaml`` (``_target_``),
its hyperparameters typed dataclass fields validated in ``__post_init__`` so bad values fail
before any compute. ``unlearn(model, data, ctx)`` returns the unlearned model (the same object
edited in place, or a wrapper) and a ``TrainResult``.

Loss-based methods subclass ``LossMethod`` and write only ``loss`` (and optionally the hooks
``prepare``, ``trainable_parameters``, ``train_config``, ``after_backward`` and, for methods
needing several passes per step, ``loss_and_grad``): the shared loop in
``bench.train`` does the rest, so GA, GradDiff, NPO and Ssiuu differ in nothing but their loss,
and MRP in its loss, the parameters it trains (its projection) and its step cap.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, ClassVar, Iterator, Literal, Protocol, Sequence

import torch

from bench import distributed
from bench.benchmark import Benchmark, QAItem
from bench.data import Batch, BatchStream, pad_id, qa_examples
from bench.train import TrainConfig, TrainResult, train_loop


@dataclass
class UnlearnData:
    """What a method may learn from: forget and retain items (with their benchmark for prompts)."""

    bench: Benchmark
    tokenizer: object
    forget: list[QAItem]
    retain: list[QAItem]

    def examples(self, which: Literal["forget", "retain"]) -> list[tuple[list[int], list[int]]]:
        """Training examples, one per trained phrasing, in item order."""
        return qa_examples(self.tokenizer, self.bench, getattr(self, which))


@dataclass
class UnlearnContext:
    """Settings shared by every method of a run (from the ``unlearn`` config block).

    should_stop(model, step) is the fair-comparison stopping rule (forget metric at its target);
    None means fixed-step mode. ``batch_size`` applies to forget and retain batches alike.
    ``requests``: how many sequential requests the run makes (continual unlearning; 1 otherwise),
    for methods that share a budget across them (MRP's projector rank).
    """

    seed: int
    device: torch.device
    max_steps: int
    batch_size: int = 16
    warmup_steps: int = 0
    check_every: int = 5
    grad_clip: float | None = 1.0
    should_stop: Callable[[torch.nn.Module, int], bool] | None = None
    requests: int = 1

    def train_config(self, lr: float, optimizer: str = "adamw", max_steps: int | None = None) -> TrainConfig:
        return TrainConfig(lr=lr, max_steps=self.max_steps if max_steps is None else max_steps,
                           batch_size=self.batch_size, warmup_steps=self.warmup_steps, optimizer=optimizer,
                           grad_clip=self.grad_clip, check_every=self.check_every, seed=self.seed)


@dataclass
class UnlearnBatch:
    forget: Batch
    retain: Batch


@dataclass(frozen=True)
class ModelShape:
    """What a method may need to know about the model before it is loaded: residual width and
    number of decoder blocks (from ``model.arch``, or the pretrained model's config)."""

    hidden_size: int
    num_layers: int


class Hooks(Protocol):
    """An edit a method keeps outside the weights (forward hooks and the modules they call, as MRP's
    projection): ``attach`` puts a copy of it on another model of the same architecture, ``remove``
    takes it off a model, leaving the weights as they are."""

    def attach(self, model: torch.nn.Module) -> None: ...

    def remove(self, model: torch.nn.Module) -> None: ...


class Method(ABC):
    """Anything that turns a trained model into an unlearned one.

    ``shardable``: verified to give the one-process result when ``bench.run`` runs across several
    processes (``bench.distributed``; tests/test_distributed.py compares the records). A method
    that is not is rejected before compute in a multi-process run, with ``unshardable_reason``.

    ``controls``: for a control row (no ``tune:`` block of its own), the method it stands beside; under a
    tuned file it runs at that method's tuned values for the keys they share (``bench.tune.apply_tuned``)."""

    shardable: ClassVar[bool] = False
    unshardable_reason: ClassVar[str] = "not verified under sharding"
    controls: ClassVar[str | None] = None

    def hooks(self, model: torch.nn.Module) -> Hooks | None:
        """The hooks this method left on ``model`` (its unlearned model), or None: a method that only
        edits weights (the default). A method with hooks gets two control stages in every run
        (``bench.stages.HOOK_STAGES``): the oracle with the hooks attached, the unlearned model
        with them removed."""
        return None

    @abstractmethod
    def unlearn(self, model: torch.nn.Module, data: UnlearnData, ctx: UnlearnContext) -> tuple[torch.nn.Module, TrainResult]:
        ...

    def check_plan(self, n_requests: int, shape: ModelShape) -> None:
        """Raise (ValueError naming the ``method.<key>`` and the fix) before any compute if this method
        cannot run ``n_requests`` sequential requests on a model of this shape. Default: any plan works."""


def paired_batches(data: UnlearnData, ctx: UnlearnContext) -> Iterator[UnlearnBatch]:
    """(forget, retain) batches of ``ctx.batch_size``, each stream reshuffled per epoch from the run's seed."""
    pad = pad_id(data.tokenizer)
    forget = BatchStream(data.examples("forget"), ctx.batch_size, pad, seed=ctx.seed)
    retain = BatchStream(data.examples("retain"), ctx.batch_size, pad, seed=ctx.seed + 1)
    for f, r in zip(forget, retain):  # several processes: each trains on its rows of the global batch
        yield UnlearnBatch(distributed.shard_rows(f).to(ctx.device), distributed.shard_rows(r).to(ctx.device))


@dataclass
class LossMethod(Method):
    """A method defined by a loss on (forget batch, retain batch), trained by the shared loop.

    lr: peak learning rate of the unlearning phase (tuned for the tiny model; retune per model
    size, e.g. ``method.lr=1e-5`` for a 1B model).
    """

    lr: float = 1e-4
    optimizer: Literal["adamw", "sgd"] = "adamw"

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"{type(self).__name__}: lr must be positive, got {self.lr}; e.g. method.lr=1e-4")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"{type(self).__name__}: optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")

    @abstractmethod
    def loss(self, model: torch.nn.Module, batch: UnlearnBatch) -> torch.Tensor:
        """The scalar to minimise on one paired batch."""

    def prepare(self, model: torch.nn.Module, data: UnlearnData, ctx: UnlearnContext) -> torch.nn.Module | None:
        """Runs once before training (e.g. NPO's reference log-probabilities, MRP's projection). May
        return a model wrapping ``model``, which is then trained and returned; None: ``model`` itself."""

    def trainable_parameters(self, model: torch.nn.Module) -> Sequence[torch.nn.Parameter] | None:
        """The parameters to train, called after ``prepare``; every other parameter is frozen while
        training (no gradients computed) and its ``requires_grad`` restored after. None: all of them."""
        return None

    def train_config(self, data: UnlearnData, ctx: UnlearnContext) -> TrainConfig:
        """Optimiser and budget: the run's shared settings with this method's lr and optimizer."""
        return ctx.train_config(self.lr, self.optimizer)

    def after_backward(self, model: torch.nn.Module, batch: UnlearnBatch) -> None:
        """May edit ``p.grad`` after backward, before clipping and the step (e.g. Ssiuu)."""

    def loss_and_grad(self, model: torch.nn.Module, batch: UnlearnBatch) -> torch.Tensor:
        """The step's loss with its gradient left in ``p.grad`` (every ``p.grad`` is cleared on
        entry). Default: ``loss(model, batch).backward()``. Override for methods that need several
        forward/backward passes per step (GRU's projection, SAM's perturbed point); the loop then
        clips, calls ``after_backward`` and steps as usual."""
        loss = self.loss(model, batch)
        if torch.isfinite(loss):
            loss.backward()
        return loss

    def unlearn(self, model, data, ctx):
        wrapped = self.prepare(model, data, ctx)
        model = model if wrapped is None else wrapped
        if distributed.initialized():  # prepare ran on the full model; a sharded copy trains, then is gathered back
            sharded = distributed.sharded_copy(model)
            trained, result = self.train_prepared(sharded, data, ctx)
            distributed.copy_back(trained, model)
            return model, result
        return self.train_prepared(model, data, ctx)

    def train_prepared(self, model, data, ctx):
        """The shared loop on ``model`` (after ``prepare``), with ``trainable_parameters`` only."""
        params = self.trainable_parameters(model)
        flags = {p: p.requires_grad for p in model.parameters()}
        if params is not None:
            keep = {id(p) for p in params}
            for p in flags:
                p.requires_grad_(id(p) in keep)
        stop = ctx.should_stop
        try:
            result = train_loop(
                model,
                lambda batch: self.loss(model, batch),
                paired_batches(data, ctx),
                self.train_config(data, ctx),
                params=params,
                check=(lambda step: stop(model, step)) if stop is not None else None,
                after_backward=lambda batch: self.after_backward(model, batch),
                loss_and_grad=lambda batch: self.loss_and_grad(model, batch),
                desc=type(self).__name__,
            )
        finally:
            if params is not None:
                for p, flag in flags.items():
                    p.requires_grad_(flag)
        return model, result
