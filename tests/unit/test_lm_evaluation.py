"""Evaluation of a causal language model by generation (evaluate/lm_evaluation.py), on the tiny random models."""

import json
import re

import pytest

from modelfoundry.config.evaluation import GenerationEvalConfig
from modelfoundry.evaluate.lm_evaluation import (
    escape_cell,
    evaluate_language_model,
    generate_answers,
)
from modelfoundry.models.generation import Generation
from modelfoundry.models.llm import load_base_language_model

PROMPTS = ["What is the capital of France?", "Classify the sentiment of this text: I loved the film.",
           "hello world", "What is two plus two?", "Translate to French: cat"]
CELL_SPLIT = re.compile(r"(?<!\\)\|")


class RecordingReporter:
    live = True

    def __init__(self):
        self.events = []

    def start(self, task, total=None, *, completed=0):
        self.events.append(("start", task, total))

    def advance(self, completed=None, *, status=None):
        self.events.append(("advance", completed))

    def message(self, text):
        self.events.append(("message", text))

    def finish(self):
        self.events.append(("finish",))


@pytest.fixture(scope="module")
def llama(tiny_llm):
    return load_base_language_model(str(tiny_llm))


@pytest.fixture(scope="module")
def gpt2(tiny_gpt2):
    return load_base_language_model(str(tiny_gpt2))


def examples(references, prompts=PROMPTS):
    return [{"messages": [{"role": "user", "content": p}], "reference": r, "row": 10 + i}
            for i, (p, r) in enumerate(zip(prompts, references))]


def table_rows(report, heading):
    """The data rows of the table under `heading` in report.md, split into cells on unescaped pipes."""
    block = report.split(heading, 1)[1].split("\n## ", 1)[0]
    lines = [line for line in block.splitlines() if line.startswith("|")][2:]
    return [[c.strip() for c in CELL_SPLIT.split(line)[1:-1]] for line in lines]


def test_own_greedy_answers_score_one_and_base_is_scored_apart(llama, gpt2, tmp_path):
    cfg = GenerationEvalConfig(rows=4, max_new_tokens=6, batch_size=3, samples=2)
    own = generate_answers(llama, [[{"role": "user", "content": p}] for p in PROMPTS[:4]], cfg)
    assert all(own)  # the random model says something to each prompt
    reporter = RecordingReporter()
    metrics = evaluate_language_model(llama, gpt2, examples(own), cfg, tmp_path, loss={"loss": 2.0, "perplexity": 7.39},
                                      facts={"run": "tiny"}, progress=reporter)
    assert metrics["exact_match"] == metrics["token_f1"] == metrics["rouge_l"] == 1.0
    assert list(metrics)[:2] == ["loss", "perplexity"]
    assert {"baseline_base_exact_match", "baseline_base_token_f1", "baseline_base_rouge_l"} <= set(metrics)
    assert metrics["baseline_base_token_f1"] < 1.0  # a different random model does not say the same things
    assert json.loads((tmp_path / "metrics.json").read_text()) == metrics
    lines = [json.loads(x) for x in (tmp_path / "generations.jsonl").read_text().splitlines()]
    assert [g["row"] for g in lines] == [10, 11, 12, 13]  # only cfg.rows rows, in order
    assert [g["tuned"] for g in lines] == own and lines[0]["prompt"] == PROMPTS[0]
    assert all(isinstance(g["base"], str) for g in lines) and [g["base"] for g in lines] != own
    report = (tmp_path / "report.md").read_text()
    assert "- **run**: tiny" in report
    em = next(r for r in table_rows(report, "## Fine-tuned vs base model") if r[0] == "exact_match")
    assert em[1] == "1.0000" and float(em[3]) == pytest.approx(1.0 - metrics["baseline_base_exact_match"], abs=1e-4)
    assert len(table_rows(report, "## Sample generations")) == 2
    starts = [e for e in reporter.events if e[0] == "start"]
    assert [s[2] for s in starts] == [4, 4] and "fine-tuned" in starts[0][1] and "base" in starts[1][1]
    assert ("advance", 4) in reporter.events and reporter.events[-1] == ("finish",)


def test_rows_zero_generates_nothing(llama, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("generated although rows is 0")

    monkeypatch.setattr("modelfoundry.models.generation.generate_batch", fail)
    cfg = GenerationEvalConfig(rows=0)
    metrics = evaluate_language_model(llama, llama, examples(["x"] * 5), cfg, tmp_path,
                                      loss={"loss": 1.5, "perplexity": 4.48})
    assert metrics == {"loss": 1.5, "perplexity": 4.48}
    assert (tmp_path / "generations.jsonl").read_text() == ""
    report = (tmp_path / "report.md").read_text()
    assert "no generation" in report and "Sample generations" not in report


def fake_generate(answers, budgets=None):
    """A generate_batch that answers each prompt (by its token ids) with a fixed text (noting max_new_tokens)."""
    def generate_batch(lm, prompts, params, batch_size=16):
        if budgets is not None:
            budgets.append(params.max_new_tokens)
        return [Generation(answers[lm.name][tuple(p)], [], "stop", len(p)) for p in prompts]
    return generate_batch


def test_label_accuracy_beside_the_base(llama, gpt2, tmp_path, monkeypatch):
    refs = ["positive", "negative", "positive", "negative"]
    tuned_says = ["Positive.", "negative", "positive!", "Positive"]  # 3 of 4
    base_says = ["The sentiment is negative", "I think so", "sure", "negative, clearly"]  # 1 of 4
    prompts = PROMPTS[:4]
    ids = {m.name: [tuple(m.prompt_ids([{"role": "user", "content": p}])) for p in prompts] for m in (llama, gpt2)}
    answers = {llama.name: dict(zip(ids[llama.name], tuned_says)), gpt2.name: dict(zip(ids[gpt2.name], base_says))}
    budgets = []
    monkeypatch.setattr("modelfoundry.models.generation.generate_batch", fake_generate(answers, budgets))
    cfg = GenerationEvalConfig(rows=10, batch_size=3, samples=10, max_new_tokens=200)
    metrics = evaluate_language_model(llama, gpt2, examples(refs, prompts), cfg, tmp_path)
    longest = max(len(llama.tokenizer(r)["input_ids"]) for r in refs)
    assert budgets and set(budgets) == {longest + 16}  # labels: room for a sentence, not for 200 tokens
    assert "answers cut at" in (tmp_path / "report.md").read_text()
    assert metrics["label_accuracy"] == pytest.approx(0.75)
    assert metrics["baseline_base_label_accuracy"] == pytest.approx(0.25)
    assert metrics["exact_match"] == pytest.approx(0.75)  # case and punctuation are normalised away
    row = next(r for r in table_rows((tmp_path / "report.md").read_text(), "## Fine-tuned vs base")
               if r[0] == "label_accuracy")
    assert row[1:] == ["0.7500", "0.2500", "+0.5000"]


def test_no_baseline_when_off_or_missing(llama, tmp_path, monkeypatch):
    monkeypatch.setattr("modelfoundry.models.generation.generate_batch",
                        lambda lm, prompts, params, batch_size=16: [Generation("Paris", [], "stop", 1)] * len(prompts))
    for base, baseline in ((None, True), (llama, False)):
        metrics = evaluate_language_model(llama, base, examples(["Paris"] * 2), GenerationEvalConfig(
            rows=2, baseline=baseline), tmp_path)
        assert metrics == {"exact_match": 1.0, "token_f1": 1.0, "rouge_l": 1.0}
        assert all(json.loads(x)["base"] is None for x in (tmp_path / "generations.jsonl").read_text().splitlines())
        assert "| metric | value |" in (tmp_path / "report.md").read_text()


def test_markdown_cells_are_escaped(llama, tmp_path, monkeypatch):
    nasty = "a | b\nline two\\| <|im_end|> & more"
    monkeypatch.setattr("modelfoundry.models.generation.generate_batch",
                        lambda lm, prompts, params, batch_size=16: [Generation(nasty, [], "stop", 1)] * len(prompts))
    prompts = ["pipe | in the prompt\nand a newline " + "x" * 400, "plain"]
    evaluate_language_model(llama, llama, examples([nasty, "ref |"], prompts), GenerationEvalConfig(rows=2), tmp_path)
    rows = table_rows((tmp_path / "report.md").read_text(), "## Sample generations")
    assert len(rows) == 2 and all(len(r) == 5 for r in rows)  # row, prompt, reference, tuned, base: no extra cells
    long = next(r for r in rows if r[1].startswith("pipe"))  # samples show wrong answers first: find it by content
    assert long[1].endswith("…") and len(long[1]) < 200 and "<br>" in long[1]
    assert "\n" not in escape_cell(nasty) and "<|" not in escape_cell(nasty)
    assert escape_cell(nasty) == "a \\| b<br>line two\\\\\\| &lt;\\|im_end\\|&gt; &amp; more"
    assert escape_cell("x\x1b[31my\tz\x00") == "x\\x1b[31my z\\x00"  # no terminal control codes in the report


def test_history_gives_a_curve_table_and_plot(llama, tmp_path):
    history = [{"epoch": 1, "train_loss": 3.0, "val_loss": 2.5, "val_perplexity": 12.18},
               {"epoch": 2, "train_loss": 2.0, "val_loss": 2.2, "val_perplexity": 9.03}]
    evaluate_language_model(llama, None, [], GenerationEvalConfig(rows=0), tmp_path,
                            loss={"loss": 2.1, "perplexity": 8.17}, history=history)
    rows = table_rows((tmp_path / "report.md").read_text(), "## Training curve")
    assert rows[:2] == [["1", "3.0000", "2.5000", "12.1800"], ["2", "2.0000", "2.2000", "9.0300"]]
    assert (tmp_path / "curves.png").stat().st_size > 1000


@pytest.mark.slow
def test_real_base_model_answers_score(tmp_path):
    lm = load_base_language_model("smollm2-135m")
    rows = [{"messages": [{"role": "user", "content": "What is the capital of France? Answer in one word."}],
             "reference": "Paris", "row": 0}]
    metrics = evaluate_language_model(lm, None, rows, GenerationEvalConfig(rows=1, max_new_tokens=12), tmp_path)
    answer = json.loads((tmp_path / "generations.jsonl").read_text())["tuned"]
    assert "paris" in answer.lower() and metrics["token_f1"] > 0.0


def test_report_samples_show_every_label_and_both_right_and_wrong_answers():
    from modelfoundry.evaluate.lm_evaluation import pick_samples

    labels = ["negative", "positive", "neutral"]
    records = [{"row": i, "reference": "negative" if i < 40 else labels[i % 3],
                "tuned": "negative" if i % 5 else "positive"} for i in range(60)]  # sorted-ish, as splits can be
    picked = pick_samples(records, 6)
    assert len(picked) == 6 and {r["reference"] for r in picked} == set(labels)
    right = [r["tuned"] == r["reference"] for r in picked]
    assert any(right) and not all(right)
    assert len(pick_samples(records[:3], 10)) == 3
