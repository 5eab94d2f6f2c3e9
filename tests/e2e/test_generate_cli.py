"""`foundry generate` as a user drives it: one prompt streamed, --raw, --stop, --chat from standard input, and
clean errors for bad options and models that are not language models."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml
from typer.testing import CliRunner

from modelfoundry.cli import app
from tests.conftest import tiny_config

runner = CliRunner()


def foundry(*args, stdin=None):
    return runner.invoke(app, ["generate", *map(str, args)], input=stdin)


@pytest.fixture(scope="module")
def lm(tiny_llm):
    from modelfoundry.api.generation import language_model

    return language_model(str(tiny_llm))


def test_prompt_is_answered_as_the_api_answers_it(tiny_llm, lm):
    from modelfoundry.api.generation import generate_text, sampling_params
    from modelfoundry.cli.generation import _UNPRINTABLE

    result = foundry(tiny_llm, "hi", "--max-new-tokens", 5, "--temperature", 1, "--seed", 4)
    assert result.exit_code == 0, result.output
    expected = "".join(generate_text(lm, "hi", sampling_params(5, temperature=1.0, seed=4)))
    assert result.stdout == expected.translate(_UNPRINTABLE) + "\n"
    assert "\x1b" not in result.stdout


def test_raw_prompt_and_stop_string(tiny_llm, lm):
    from modelfoundry.api.generation import generate_text, sampling_params

    raw = foundry(tiny_llm, "hello world", "--raw", "--max-new-tokens", 6)
    from modelfoundry.cli.generation import _UNPRINTABLE

    answer = "".join(generate_text(lm, "hello world", sampling_params(6), raw=True)).translate(_UNPRINTABLE)
    assert raw.exit_code == 0 and raw.stdout == answer + "\n"
    assert answer != "".join(generate_text(lm, "hello world", sampling_params(6)))  # not in the chat template
    stop = answer[1:3]
    stopped = foundry(tiny_llm, "hello world", "--raw", "--max-new-tokens", 6, "--stop", stop, "--stop", "zz")
    assert stopped.exit_code == 0 and stopped.stdout == answer[:answer.index(stop)] + "\n"


def test_chat_reads_messages_until_exit(tiny_llm):
    result = foundry(tiny_llm, "--chat", "--max-new-tokens", 3, stdin="hello\n/reset\n\nworld\n/exit\nignored\n")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert [line for line in lines if line.startswith(">")] == ["> hello", "> /reset", "> ", "> world", "> /exit"]
    assert "(conversation reset)" in lines and "ignored" not in result.stdout


def test_chat_keeps_history_and_drops_the_oldest_beyond_the_context(lm):
    from modelfoundry.api.generation import Chat, sampling_params

    chat = Chat(lm, sampling_params(max_new_tokens=4), system="Be brief.")
    "".join(chat.ask("hello"))
    "".join(chat.ask("world"))
    assert [m["role"] for m in chat.history] == ["user", "assistant", "user", "assistant"]
    assert chat.history[2]["content"] == "world"
    chat.reset()
    assert chat.history == []
    long = Chat(lm, sampling_params(max_new_tokens=4))
    message = "hello world, this is a tiny language model for tests. " * 7  # ~105 tokens: 3 exceed the context
    assert 80 < len(lm.prompt_ids([{"role": "user", "content": message}])) < 115
    for _ in range(3):
        "".join(long.ask(message))
    assert long.dropped == 1 and [m["role"] for m in long.history] == ["user", "assistant"] * 2


@pytest.mark.parametrize("args, words", [
    (["--temperature", "5"], "'temperature'"),
    (["--top-p", "0"], "'top_p'"),
    (["--max-new-tokens", "0"], "'max_new_tokens'"),
    (["--stop", ""], "'stop'"),
    (["--dtype", "float64"], "'dtype'"),
    (["--chat", "--raw"], "--raw"),
])
def test_bad_options_are_one_clean_error(tiny_llm, args, words):
    result = foundry(tiny_llm, "hi", *args)
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output


def test_no_prompt_and_unknown_model(tiny_llm, tmp_path):
    assert foundry(tiny_llm).exit_code == 2
    missing = foundry(tmp_path / "nope", "hi")
    assert missing.exit_code == 4 and "smollm2-135m" in missing.output


def test_a_run_of_another_model_points_to_predict(tmp_path):
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(tiny_config()))
    result = foundry(tmp_path, "hi")
    assert result.exit_code == 4 and "foundry predict" in result.output and "Traceback" not in result.output


def test_console_script_exit_code_without_traceback(tiny_llm):
    done = subprocess.run([sys.executable, "-m", "modelfoundry.cli", "generate", str(tiny_llm), "hi",
                           "--top-k", "-1"], capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 2 and "'top_k'" in done.stderr and "Traceback" not in done.stderr + done.stdout


def test_a_trained_run_generates_as_the_api_loads_it(tiny_llm, tmp_path, lm):
    import pandas as pd

    from modelfoundry.api.generation import (
        generate_text,
        language_model,
        sampling_params,
    )
    from modelfoundry.api.training import run
    from modelfoundry.config import load_config

    pairs = tmp_path / "pairs.jsonl"
    pd.DataFrame([{"text": f"review {i} was {'good' if i % 2 else 'bad'}", "label": "positive" if i % 2 else
                   "negative"} for i in range(40)]).to_json(pairs, orient="records", lines=True)
    config = load_config({"name": "sft", "seed": 0,
                          "data": {"source": str(pairs), "lm": {"prompt": "Classify: {text}", "completion": "label"}},
                          "model": {"name": "llm", "base": str(tiny_llm), "finetune": "lora",
                                    "lora": {"r": 8, "dropout": 0.0}},
                          "training": {"epochs": 2, "batch_size": 8, "optimizer": {"lr": 0.05},
                                       "early_stopping": None},
                          "evaluation": {"plots": False, "generation": {"rows": 2, "max_new_tokens": 2}},
                          "tracking": {"enabled": False}})
    run_dir = run(config, run_dir=tmp_path / "run").run_dir
    prompt = "Classify: review 7 was good"
    result = foundry(run_dir, prompt, "--max-new-tokens", 4)
    assert result.exit_code == 0, result.output
    trained = "".join(generate_text(language_model(str(run_dir)), prompt, sampling_params(4)))
    assert result.stdout == trained + "\n"
    assert trained != "".join(generate_text(lm, prompt, sampling_params(4)))  # the adapters are in
