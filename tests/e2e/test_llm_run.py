"""A language model through the CLI as a user drives it: run, Ctrl-C and resume, evaluate, register, promote,
roll back, and generate from a registered reference."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd
import pytest
import yaml
from typer.testing import CliRunner

from modelfoundry.cli import app

runner = CliRunner()
pytestmark = pytest.mark.slow  # whole runs in subprocesses: ~1 minute


@pytest.fixture(scope="module")
def project(tmp_path_factory, tiny_llm):
    """A project folder with an instruction file and a LoRA config on the tiny model, tracked in its own store."""
    tmp = tmp_path_factory.mktemp("llm-project")
    pd.DataFrame([{"question": f"is review {i} {'good' if i % 2 else 'bad'}?",
                   "answer": "positive" if i % 2 else "negative"} for i in range(80)]).to_json(
        tmp / "pairs.jsonl", orient="records", lines=True)
    config = {"name": "tinychat", "seed": 0,
              "data": {"source": str(tmp / "pairs.jsonl"),
                       "lm": {"prompt": "Sentiment: {question}", "completion": "answer", "system": "One word."}},
              "model": {"name": "llm", "base": str(tiny_llm), "lora": {"r": 8, "dropout": 0.0}},
              "training": {"epochs": 6, "batch_size": 8, "optimizer": {"lr": 0.02},
                           "checkpoint": {"every_steps": 1, "min_interval_s": 0}},
              "evaluation": {"plots": False, "generation": {"rows": 6, "max_new_tokens": 3}},
              "tracking": {"enabled": True, "uri": f"sqlite:///{tmp / 'foundry.db'}",
                           "artifacts": str(tmp / "mlartifacts")}}
    (tmp / "sft.yaml").write_text(yaml.safe_dump(config))
    return tmp


def foundry(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "modelfoundry.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def test_ctrl_c_mid_run_then_resume_finishes_registers_and_evaluates(project):
    run_dir = project / "runs" / "cut"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, "-m", "modelfoundry.cli", "run", "sft.yaml", "--run-dir", str(run_dir)],
                               cwd=project, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 300
    while not (run_dir / "checkpoints" / "last.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    process.send_signal(signal.SIGINT)  # a step checkpoint exists: training is under way
    out, _ = process.communicate(timeout=300)
    assert process.returncode == 0, out
    assert "Stopped on request after a checkpoint" in out and "Traceback" not in out
    assert not (run_dir / "model" / "weights.pt").exists()

    resumed = foundry("run", "--resume", run_dir, cwd=project)
    assert resumed.returncode == 0, resumed.stdout + resumed.stderr
    lines = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines] == [1, 2, 3, 4, 5, 6]
    metrics = json.loads((run_dir / "eval" / "metrics.json").read_text())
    assert {"loss", "perplexity", "label_accuracy", "baseline_base_label_accuracy"} <= set(metrics)
    assert "test label_accuracy" in resumed.stdout and "base model" in resumed.stdout

    evaluated = foundry("evaluate", run_dir, "--no-progress", cwd=project)
    assert evaluated.returncode == 0, evaluated.stderr
    again = json.loads((run_dir / "eval-test-split" / "metrics.json").read_text())
    assert again["perplexity"] == pytest.approx(metrics["perplexity"], rel=1e-4)  # the saved model is the evaluated one
    assert again["label_accuracy"] == metrics["label_accuracy"]


def test_a_registered_language_model_promotes_rolls_back_and_generates(project):
    from modelfoundry.api.generation import language_model
    from modelfoundry.models.generation import SamplingParams, generate

    uri = f"sqlite:///{project / 'foundry.db'}"
    for name in ("v1", "v2"):
        result = foundry("run", "sft.yaml", "--run-dir", project / "runs" / name, cwd=project)
        assert result.returncode == 0, result.stderr
    invoke = lambda *args: runner.invoke(app, [*map(str, args), "--uri", uri])  # noqa: E731
    for version in ("1", "2"):
        assert invoke("registry", "promote", "tinychat", version, "--alias", "production").exit_code == 0
    lm = language_model("tinychat@production", uri=uri)
    assert lm.name == "tinychat" and lm.identity["run"].endswith("/2")
    text = "".join(generate(lm, lm.prompt_ids([{"role": "user", "content": "Sentiment: is review 3 good?"}]),
                            SamplingParams(max_new_tokens=3)))
    assert text.strip()
    rolled = invoke("registry", "rollback", "tinychat", "--alias", "production")
    assert rolled.exit_code == 0, rolled.output
    assert language_model("tinychat@production", uri=uri).identity["run"].endswith("/1")
    shown = invoke("registry", "show", "tinychat@production")
    assert shown.exit_code == 0 and "causal_lm" in shown.output
