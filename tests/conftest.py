"""Shared fixtures: offline mode, a micro world, a micro model, and Hydra config composition."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TQDM_DISABLE", "1")

import pytest
import torch
from hydra import compose, initialize_config_dir

from bench.models import build_base_model, inject_knowledge
from bench.tokenizer import load_tokenizer
from bench.train import TrainConfig
from bench.world import synthetic_world

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"
MICRO_ARCH = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2,
              "intermediate_size": 64, "max_position_embeddings": 128}


def compose_config(*overrides: str, micro: bool = True):
    """The run config as ``python -m bench.run`` would build it (hydra node excluded)."""
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return compose("config", overrides=(["+experiment=micro"] if micro else []) + list(overrides))


@pytest.fixture(scope="session")
def tokenizer():
    return load_tokenizer()


@pytest.fixture(scope="session")
def micro_bench():
    return synthetic_world(seed=0, n_people=10, forget_fraction=0.2, holdout_fraction=0.2, n_relations=3,
                           n_general_facts=4, n_general_text=4, n_heldout_text=2)


@pytest.fixture(scope="module")
def one_thread():
    """Micro models and attacks are many small steps: on a shared 2-core machine a second torch thread only
    contends. Modules opt in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def trained_micro(micro_bench, tokenizer):
    """A micro model that has learned part of the micro world (some answers right, some wrong)."""
    torch.set_num_threads(min(2, torch.get_num_threads()))
    model = build_base_model({"arch": MICRO_ARCH}, tokenizer, seed=0)
    inject_knowledge(model, micro_bench, tokenizer, "target",
                     TrainConfig(lr=1e-2, max_steps=150, batch_size=16, warmup_steps=10, schedule="cosine", check_every=0))
    return model.eval()


@pytest.fixture
def fresh_micro(tokenizer):
    return build_base_model({"arch": MICRO_ARCH}, tokenizer, seed=1).eval()
