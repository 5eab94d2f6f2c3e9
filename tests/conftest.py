"""Shared fixtures: tiny configs on bundled data, so every test runs in seconds on 2 CPU cores."""

from __future__ import annotations

import copy
from typing import Any

import pytest

TINY: dict[str, Any] = {
    "name": "tiny",
    "seed": 0,
    "data": {"source": "sklearn:iris", "target": "target"},
    "model": {"name": "mlp", "hidden": [8]},
    "training": {"epochs": 3, "batch_size": 16, "early_stopping": None},
    "evaluation": {"plots": False},
    "tracking": {"enabled": False},  # registry tests turn it on against their own database
}


@pytest.fixture(autouse=True, scope="session")
def _private_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """The tokenization cache of the tests lives in a temporary directory, not in the checkout."""
    import os

    os.environ["FOUNDRY_CACHE_DIR"] = str(tmp_path_factory.mktemp("foundry-cache"))


def tiny_config(**sections: Any) -> dict[str, Any]:
    """TINY with sections replaced or merged one level deep: tiny_config(training={"epochs": 5})."""
    cfg = copy.deepcopy(TINY)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key].update(value)
        else:
            cfg[key] = value
    return cfg


@pytest.fixture
def make_config():
    from modelfoundry.config import load_config

    return lambda **sections: load_config(tiny_config(**sections))


class InterruptAfter:
    """A training callback that presses Ctrl-C (SIGINT) at the end of epoch `epoch`: the loop checkpoints and
    stops after it, as it does for a user."""

    def __init__(self, epoch: int = 1):
        self.epoch = epoch

    def on_epoch_end(self, record: dict[str, Any]) -> None:
        if record["epoch"] == self.epoch:
            import signal

            signal.raise_signal(signal.SIGINT)

    def close(self) -> None:
        pass


@pytest.fixture(scope="session")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory):
    """A local directory holding a tiny random Llama (2 layers, width 32) and its chat tokenizer."""
    from tests.llm_tiny import make_tiny_llm

    return make_tiny_llm(tmp_path_factory.mktemp("tiny-llama"), "llama")


@pytest.fixture(scope="session")
def tiny_gpt2(tmp_path_factory: pytest.TempPathFactory):
    """A local directory holding a tiny random GPT-2 (2 layers, width 32) and its chat tokenizer."""
    from tests.llm_tiny import make_tiny_llm

    return make_tiny_llm(tmp_path_factory.mktemp("tiny-gpt2"), "gpt2")
