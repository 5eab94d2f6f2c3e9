"""Evaluate a fine-tuned causal language model: greedy answers to held-out prompts scored against their
completions, beside the base model's answers to the same prompts, and eval/ written like the other tasks'.

Files: metrics.json (flat: loss, perplexity, exact_match, token_f1, rouge_l[, label_accuracy], then
baseline_base_<metric>), generations.jsonl (row, prompt, reference, tuned, base), report.md (facts, tuned vs
base vs difference, the training curve, sample generations) and curves.png when there is a history.
"""

from __future__ import annotations

import itertools
import json
import time
import unicodedata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.evaluate.text_metrics import is_label_set, score_generations
from modelfoundry.reporting import Reporter, reporter_for

if TYPE_CHECKING:
    from modelfoundry.config.evaluation import GenerationEvalConfig
    from modelfoundry.models.llm import LanguageModel

BASELINE = "baseline_base_"  # the base model's metrics, beside the model's (evaluate/baselines.py naming)
CURVE_KEYS = ("train_loss", "val_loss", "val_perplexity", "val_token_accuracy")
PROMPT_CHARS, ANSWER_CHARS = 160, 240  # sample cells in report.md are cut to these lengths
LABEL_SLACK_TOKENS = 16  # label completions: answers may run this far past the longest label


def evaluate_language_model(tuned: LanguageModel, base: LanguageModel | None, examples: list[dict[str, Any]],
                            cfg: GenerationEvalConfig, out_dir: Path, *, loss: dict[str, float] | None = None,
                            facts: dict[str, Any] | None = None, history: list[dict[str, Any]] | None = None,
                            progress: Reporter | bool | None = None, plots: bool = True) -> dict[str, float]:
    """Score `tuned` (and `base`, when given and `cfg.baseline`) on the first `cfg.rows` of `examples`; write
    out_dir/metrics.json, generations.jsonl and report.md.

    Args:
        tuned: the fine-tuned model (adapters merged).
        base: the base model it was tuned from, scored on the same prompts as the baseline; None: no baseline.
        examples: held-out rows, each {"messages": the prompt messages (no answer), "reference": the completion,
            "row": its number in the source data}.
        cfg: evaluation.generation (rows: 0 generates nothing; max_new_tokens; batch_size; baseline; samples).
        out_dir: the eval directory (created).
        loss: test-split loss metrics computed by the caller ({"loss": ..., "perplexity": ...}), put first.
        facts: name -> value lines at the top of report.md.
        history: the training epochs' records (epoch, train_loss, val_loss, val_perplexity, ...).
        progress: a Reporter told how far generation is.
        plots: draw curves.png from `history`.

    Returns:
        The flat metrics written to metrics.json.
    """
    from modelfoundry.storage import write_json, write_text

    out_dir.mkdir(parents=True, exist_ok=True)
    rows = examples[:cfg.rows]
    metrics: dict[str, float] = dict(loss or {})
    facts = dict(facts or {})
    answers: dict[str, list[str]] = {}
    if rows:
        answers = _answer_all(tuned, base if cfg.baseline else None, rows, cfg, reporter_for(progress), facts)
        references = [ex["reference"] for ex in rows]
        metrics.update(score_generations(answers["tuned"], references))
        if "base" in answers:
            metrics.update({BASELINE + k: v for k, v in score_generations(answers["base"], references).items()})
    records = generation_records(rows, answers)
    write_json(out_dir / "metrics.json", metrics)
    write_text(out_dir / "generations.jsonl", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    curves = bool(plots and history and all("train_loss" in h and "val_loss" in h for h in history))
    if curves:
        from modelfoundry.evaluate.report import plot_learning_curves

        plot_learning_curves(history or [], out_dir / "curves.png")
    text = render_lm_report(f"Evaluation: {tuned.name}", metrics, facts, history or [],
                            pick_samples(records, cfg.samples), len(rows), curves)
    write_text(out_dir / "report.md", text)
    return metrics


def pick_samples(records: list[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """`n` generations for report.md that show what the model does: when the references are labels, every label
    in turn; within a label (or among all rows otherwise) wrong and right answers in turn, a wrong one first."""
    from modelfoundry.evaluate.text_metrics import exact_match, is_label_set

    labels = is_label_set([r["reference"] for r in records]) or []
    groups: dict[str, list[dict[str, Any]]] = {}
    for record in records:
        key = next((label for label in labels if exact_match(record["reference"], label)), "")
        groups.setdefault(key, []).append(record)
    queues, picked = [], []
    for group in groups.values():  # a wrong answer, a right one, a wrong one, ... (in row order within each kind)
        wrong = [r for r in group if not exact_match(r["tuned"], r["reference"])]
        right = [r for r in group if exact_match(r["tuned"], r["reference"])]
        queues.append([r for pair in itertools.zip_longest(wrong, right) for r in pair if r is not None])
    while len(picked) < n and any(queues):
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(queue.pop(0))
    return picked


def _answer_all(tuned: LanguageModel, base: LanguageModel | None, rows: list[dict[str, Any]],
                cfg: GenerationEvalConfig, reporter: Reporter | None, facts: dict[str, Any]) -> dict[str, list[str]]:
    """{"tuned": answers, "base": answers (when `base`)} to the rows' prompts; how long each took goes into
    `facts`. When the completions are labels, answers stop `LABEL_SLACK_TOKENS` past the longest label (or at
    cfg.max_new_tokens if sooner): room for a sentence naming the label, not for 64 tokens of explanation."""
    labels = is_label_set([ex["reference"] for ex in rows])
    answers = {}
    for role, lm in (("tuned", tuned), ("base", base)):
        if lm is None:
            continue
        name = "fine-tuned" if role == "tuned" else "base"
        budget = cfg.max_new_tokens
        if labels:
            longest = max(len(lm.tokenizer(label, add_special_tokens=False)["input_ids"]) for label in labels)
            budget = min(budget, longest + LABEL_SLACK_TOKENS)
        start = time.perf_counter()
        answers[role] = generate_answers(lm, [ex["messages"] for ex in rows], cfg, reporter, name, budget)
        facts[f"generation ({name} model)"] = f"{len(rows)} rows in {time.perf_counter() - start:.1f} s" + (
            f", answers cut at {budget} new tokens (completions are labels)" if budget < cfg.max_new_tokens else "")
    return answers


def generate_answers(lm: LanguageModel, prompts: list[list[dict[str, str]]], cfg: GenerationEvalConfig,
                     reporter: Reporter | None = None, label: str = "model",
                     max_new_tokens: int | None = None) -> list[str]:
    """Greedy answers of `lm` to chat `prompts`, in their order, `cfg.batch_size` at a time, each at most
    `max_new_tokens` (default cfg.max_new_tokens) long.

    Prompts go in order of length (so a batch pads little) in chunks of one batch, so that `reporter` sees each
    batch finish. A prompt longer than the context is cut to its last `context_length - 1` tokens.
    """
    from modelfoundry.models.generation import SamplingParams, generate_batch

    # a prompt that fills the context keeps its end (the question, where the answer begins)
    room = max(1, lm.context_length - 1)
    ids = [lm.prompt_ids(messages)[-room:] for messages in prompts]
    order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
    params = SamplingParams(max_new_tokens=max_new_tokens or cfg.max_new_tokens)
    answers: list[str] = [""] * len(ids)
    if reporter:
        reporter.start(f"Generating ({label} model)", total=len(ids))
    for first in range(0, len(order), cfg.batch_size):
        chunk = order[first:first + cfg.batch_size]
        for i, generation in zip(chunk, generate_batch(lm, [ids[i] for i in chunk], params,
                                                       batch_size=cfg.batch_size), strict=True):
            answers[i] = generation.text
        if reporter:
            reporter.advance(first + len(chunk))
    if reporter:
        reporter.finish()
    return answers


def generation_records(rows: list[dict[str, Any]], answers: dict[str, list[str]]) -> list[dict[str, Any]]:
    """generations.jsonl's lines: row, prompt (the messages as text), reference, tuned and base answers."""
    return [{"row": ex.get("row", i), "prompt": prompt_text(ex["messages"]), "reference": ex["reference"],
             "tuned": answers["tuned"][i] if "tuned" in answers else None,
             "base": answers["base"][i] if "base" in answers else None} for i, ex in enumerate(rows)]


def prompt_text(messages: list[dict[str, str]]) -> str:
    """The prompt as a person reads it: a lone user message as itself, a conversation as `role: content`
    lines (the system message, which every row shares, left out)."""
    turns = [m for m in messages if m["role"] != "system"]
    if len(turns) == 1:
        return turns[0]["content"]
    return "\n".join(f"{m['role']}: {m['content']}" for m in turns)


def render_lm_report(title: str, metrics: dict[str, float], facts: dict[str, Any], history: list[dict[str, Any]],
                     samples: list[dict[str, Any]], n_rows: int, curves: bool) -> str:
    """report.md: facts, metrics (fine-tuned vs base vs difference), the training curve, sample generations."""
    lines = [f"# {title}", ""] + [f"- **{k}**: {escape_cell(str(v))}" for k, v in facts.items()] + [""]
    lines += _metrics_table(metrics, n_rows)
    if history:
        lines += _curve_table(history, curves)
    if samples:
        note = "Prompts and answers are shortened; all of them are in generations.jsonl."
        lines += ["", "## Sample generations", "", note, "", "| row | prompt | reference | fine-tuned | base |",
                  "|---|---|---|---|---|"]
        for s in samples:
            cells = [str(s["row"]), _short(s["prompt"], PROMPT_CHARS), _short(s["reference"], ANSWER_CHARS),
                     _short(s["tuned"], ANSWER_CHARS), _short(s["base"], ANSWER_CHARS) if s["base"] is not None else "-"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _metrics_table(metrics: dict[str, float], n_rows: int) -> list[str]:
    names = [k for k in metrics if not k.startswith(BASELINE)]
    if not names:
        return ["No metrics: no held-out rows were evaluated."]
    has_base = any(k.startswith(BASELINE) for k in metrics)
    where = f"test split; generation on {n_rows} held-out rows" if n_rows else "test split; no generation"
    lines = [f"## Fine-tuned vs base model ({where})" if has_base else f"## Metrics ({where})", ""]
    lines += ["| metric | fine-tuned | base | difference |", "|---|---|---|---|"] if has_base \
        else ["| metric | value |", "|---|---|"]
    for name in names:
        value, other = metrics[name], metrics.get(BASELINE + name)
        if not has_base:
            lines.append(f"| {name} | {value:.4f} |")
        elif other is None:
            lines.append(f"| {name} | {value:.4f} | - | - |")
        else:
            lines.append(f"| {name} | {value:.4f} | {other:.4f} | {value - other:+.4f} |")
    return lines


def _curve_table(history: list[dict[str, Any]], curves: bool) -> list[str]:
    keys = [k for k in CURVE_KEYS if any(k in h for h in history)]
    lines = ["", "## Training curve", "", "| epoch | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    for h in history:
        cells = [f"{h[k]:.4f}" if isinstance(h.get(k), (int, float)) else "-" for k in keys]
        lines.append(f"| {h.get('epoch', '-')} | " + " | ".join(cells) + " |")
    if curves:
        lines += ["", "![curves](curves.png)"]
    return lines


def _short(text: str, limit: int) -> str:
    text = text.strip()
    cut = text if len(text) <= limit else text[:limit - 1].rstrip() + "…"
    return escape_cell(cut) if cut else "*(empty)*"


def escape_cell(text: str) -> str:
    """`text` safe inside a markdown table cell: backslashes and pipes escaped, `<`/`>` as entities (chat
    markers such as <|im_end|> are not HTML), `&` as an entity, line breaks as <br>, tabs as spaces and other
    control characters (a random model's answers have them) as \\xNN."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("\t", " ")
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "<br>")
    return "".join(f"\\x{ord(ch):02x}" if unicodedata.category(ch) == "Cc" else ch for ch in text)
