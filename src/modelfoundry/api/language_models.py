"""Evaluating causal language models: right after training (`run`), and later on a run (`foundry evaluate`) on
its own test split or on a file of examples laid out as its data was."""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.api.results import RunResult
from modelfoundry.artifacts.rundir import RunDir

if TYPE_CHECKING:
    from modelfoundry.config import Config
    from modelfoundry.data.prepare import PreparedData
    from modelfoundry.reporting import Reporter
    from modelfoundry.train.loop import FitResult


def evaluate_trained(config: Config, data: PreparedData, fit_result: FitResult, run_path: Path,
                     progress: Reporter | bool | None = None) -> tuple[dict[str, float], list[str]]:
    """Test loss and perplexity, then answers generated for held-out prompts scored against their completions,
    beside the base model's answers to the same prompts (the language model's baseline)."""
    from modelfoundry.models.llm import LanguageModel

    model = fit_result.model.cpu().eval()
    loss = test_loss(model, model.training_loss(), data.X["test"], data.y["test"], config.training.batch_size)
    reference = model.base_reference() or {}
    lm_cfg = config.data.lm
    tuned = LanguageModel(model.generation_model(), data.preprocessor.tokenizer, config.name, lm_cfg.template,
                          lm_cfg.system, {**reference, "run": str(run_path)})
    facts = {"run": str(run_path), "model": f"llm ({config.model.finetune}) on {config.model.base}",
             "examples (train/val/test)": "/".join(str(data.info["split"][s]) for s in ("train", "val", "test")),
             "best epoch": f"{fit_result.best_epoch} of {len(fit_result.history)} ({fit_result.monitor} = "
                           f"{fit_result.best_value:.4f})" if fit_result.best_value is not None else "-"}
    return _score(config, tuned, list(data.references["test"]), loss, RunDir(run_path).eval_dir, facts,
                  fit_result.history, progress)


def evaluate_run(run_dir: Path, data: Path | None = None, out: Path | None = None,
                 progress: Reporter | bool | None = None) -> RunResult:
    """`foundry evaluate` for a language-model run: its test split rebuilt from the source (checked unchanged), or
    every example of `data` (a file with the columns data.lm names)."""
    import json

    from modelfoundry.experiment import prepare
    from modelfoundry.models.llm_module import hidden_states
    from modelfoundry.rundir import load_language_model, load_run_config

    started = time.perf_counter()
    config = load_run_config(run_dir)
    tuned = load_language_model(run_dir)
    layout = RunDir(run_dir)
    if data is None:
        prepared = prepare(config)
        recorded = json.loads(layout.data_record.read_text(encoding="utf-8"))["fingerprint"]["sha256"]
        if prepared.info["fingerprint"]["sha256"] != recorded:
            from modelfoundry.errors import DataError

            raise DataError(f"The source {config.data.source} changed since {run_dir} was trained, so its test split "
                            "cannot be rebuilt.", f"Evaluate on a file instead: `foundry evaluate {run_dir} --data "
                            "FILE`, or restore the original data.")
        X, y, examples, split = prepared.X["test"], prepared.y["test"], list(prepared.references["test"]), "test split"
        out_dir = Path(out or (layout.reeval_dir if layout.report.is_file() else layout.eval_dir))
    else:
        X, y, examples = _file_examples(config, Path(data), tuned.tokenizer)
        split, out_dir = Path(data).name, Path(out or Path(run_dir) / f"eval-{Path(data).stem}")
    from modelfoundry.models.llm_module import CompletionLoss

    hf = tuned.model
    loss = test_loss(hidden_states(hf), CompletionLoss(hf.get_output_embeddings()), X, y, config.training.batch_size)
    facts = {"run": str(run_dir), "model": f"llm ({config.model.finetune}) on {config.model.base}",
             "evaluated on": f"{split} ({len(examples)} examples)"}
    metrics, headline = _score(config, tuned, examples, loss, out_dir, facts, None, progress)
    return RunResult(Path(run_dir), "causal_lm", metrics, headline, 0, 0, "", None,
                     wall_s=time.perf_counter() - started, extras={"out_dir": out_dir, "evaluated_on": split})


def test_loss(model: Any, loss_fn: Any, X: dict[str, Any], y: Any, batch: int) -> dict[str, float]:
    """loss, perplexity and token_accuracy of `model` (tokens, mask -> hidden states) on labelled examples."""
    import torch

    from modelfoundry.artifacts.inputs import padding_trim
    from modelfoundry.train.loop import validate_lm
    from modelfoundry.train.setup import EvalInputs

    inputs = EvalInputs(tuple(X.values()), torch.device("cpu"), padding_trim(list(X)))
    values, _ = validate_lm(model, inputs, torch.from_numpy(y), loss_fn, contextlib.nullcontext, batch)
    return {"loss": values["val_loss"], "perplexity": values["val_perplexity"],
            "token_accuracy": values["val_token_accuracy"]}


def _score(config: Config, tuned: Any, examples: list[dict[str, Any]], loss: dict[str, float], out_dir: Path,
           facts: dict[str, Any], history: list[dict[str, Any]] | None,
           progress: Reporter | bool | None) -> tuple[dict[str, float], list[str]]:
    from modelfoundry.evaluate.lm_evaluation import evaluate_language_model
    from modelfoundry.models.llm import load_base_language_model

    gen, lm_cfg = config.evaluation.generation, config.data.lm
    base = load_base_language_model(config.model.base, config.model.dtype, lm_cfg.template, lm_cfg.system) \
        if gen.baseline and gen.rows else None
    metrics = evaluate_language_model(tuned, base, examples, gen, out_dir, loss=loss, facts=facts, history=history,
                                      plots=config.evaluation.plots, progress=progress)
    first = "label_accuracy" if "label_accuracy" in metrics else "token_f1"
    return metrics, [m for m in (first, "rouge_l", "exact_match", "perplexity") if m in metrics]


def _file_examples(config: Config, path: Path, tokenizer: Any) -> tuple[dict[str, Any], Any, list[dict[str, Any]]]:
    """Every example of a file laid out as the run's data, tokenized as in training."""
    from modelfoundry.data.lm import assemble, encode, read_examples
    from modelfoundry.data.sources import read_table
    from modelfoundry.errors import DataError

    lm = config.data.lm
    examples = read_examples(read_table(path), lm, str(path))
    ids, masks, _ = encode(tokenizer, examples.conversations, lm, str(path))
    arrays = assemble(ids, masks, max(len(i) for i in ids), tokenizer.pad_token_id, packing=False)
    if not len(arrays["labels"]):
        raise DataError(f"No example of {path} has an answer token left within data.lm.max_length ({lm.max_length}).",
                        "Shorten the prompts, or evaluate on other examples.")
    held_out = [{"messages": c[:-1], "reference": c[-1]["content"], "row": int(r)}
                for c, r in zip(examples.conversations, examples.rows)]
    return {"tokens": arrays["tokens"], "attention_mask": arrays["attention_mask"]}, arrays["labels"], held_out
