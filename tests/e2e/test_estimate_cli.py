"""`foundry estimate CONFIG` as a user runs it: the memory table, the verdict and its exit code, the timing,
the fallbacks when it won't fit, and the serving estimate."""

import json

import pytest
import yaml
from typer.testing import CliRunner

from modelfoundry.cli import app
from modelfoundry.train import estimate as est

MiB = 1 << 20


@pytest.fixture
def config(tiny_llm, tmp_path, monkeypatch):
    """Write a causal-LM config on the tiny Llama; the process baseline is fixed (no subprocess to measure it)."""
    monkeypatch.setattr(est, "process_baseline_bytes", lambda: 300 * MiB)
    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"Say {i}", "completion": str(i)}) + "\n" for i in range(40)))

    def write(**training):
        path = tmp_path / "llm.yaml"
        path.write_text(yaml.safe_dump({
            "name": "tiny-sft", "data": {"source": str(data), "task": "causal_lm", "lm": {"max_length": 64}},
            "model": {"name": "llm", "base": str(tiny_llm), "finetune": "full"},
            "training": {"batch_size": 4, "epochs": 1, **training}, "serve": {"max_streams": 4}}))
        return path

    return write


def foundry(*args):
    return CliRunner().invoke(app, ["estimate", *map(str, args)])


def test_a_config_that_fits_prints_the_items_the_verdict_and_the_time(config):
    result = foundry(config(), "--steps", "1", "--no-progress")
    assert result.exit_code == 0, result.output
    for item in ("process baseline", "weights", "gradients", "optimizer state", "activations", "total", "available"):
        assert item in result.output
    assert "Verdict: fits" in result.output and "s per step" in result.output and "tokens/s" in result.output
    assert "an epoch of 28 training rows" in result.output
    assert "training.batch_size: 4" in result.output


def test_a_config_that_does_not_fit_exits_non_zero_with_fallbacks(config):
    from modelfoundry.api.estimation import estimate

    fitting = estimate(config(), timed_steps=0).total_bytes  # batch 4: what the fallback will need
    memory_gb = (fitting / (1 - est.HEADROOM) + MiB) / (1 << 30)
    result = foundry(config(batch_size=256), "--memory-gb", f"{memory_gb:.4f}")
    assert result.exit_code == 5, result.output  # a TrainingError
    assert "won't fit" in result.output and "Would fit" in result.output
    assert "training.batch_size: 4, training.accumulate_steps: 64" in result.output
    assert "s per step" not in result.output  # nothing is built when it won't fit


def test_serving_counts_a_kv_cache_per_stream(config):
    result = foundry(config(), "--serving")
    assert result.exit_code == 0, result.output
    assert "KV cache (4 streams)" in result.output and "serve.max_streams: 4" in result.output


def test_other_models_are_refused(tmp_path):
    path = tmp_path / "mlp.yaml"
    path.write_text(yaml.safe_dump({"name": "mlp", "data": {"source": "sklearn:iris"}, "model": {"name": "mlp"}}))
    result = foundry(path)
    assert result.exit_code == 2 and "covers language models" in result.output
