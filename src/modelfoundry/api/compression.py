"""`compress`: variants of a trained model measured under the accuracy guard; the best one saved and registered."""

from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path
from typing import Any, Callable, Iterator

from modelfoundry.api.arguments import fresh_dir, model_dir
from modelfoundry.api.evaluation import evaluate, reload_splits
from modelfoundry.api.registration import parent_version, track_run
from modelfoundry.api.results import CompressResult
from modelfoundry.errors import CompressError, ConfigError, RunDirError
from modelfoundry.reporting import Reporter, reporter_for


def compress(model: str | Path, *, max_drop: float | None = None, prefer: str | None = None,
             out: str | Path | None = None, variants: list[str] | None = None,
             progress: Reporter | bool | None = None) -> CompressResult:
    """Try compression variants of a trained model (run directory or NAME[/VERSION|@ALIAS]), measure each
    on the runtime it would be served with, and save the best one within the accuracy guard.

    The guard: the variant's validation metric (the model's own: compress.metric, else its first headline
    metric) may be at most `max_drop` worse than the original's, and every metric of compress.guard (by
    default log_loss and calibration error for classifiers, rmse and mae for regression) within its own
    tolerance. The original is never modified. The chosen variant is saved in `<out>/model/`, evaluated on
    the test split and, with tracking on, registered as a new version with its parent and recipe.
    """
    from pydantic import ValidationError

    from modelfoundry.compress.guard import guards
    from modelfoundry.compress.report import write_report, write_scatter
    from modelfoundry.compress.search import Bench, search
    from modelfoundry.compress.variants import COMPRESSORS, check_asked
    from modelfoundry.config import LOWER_IS_BETTER, CompressConfig
    from modelfoundry.data.balance import class_weights
    from modelfoundry.rundir import load_model, load_run_config

    started = time.perf_counter()
    local = model_dir(model)
    saved = load_model(local)
    if saved.task not in ("classification", "regression"):  # the guards compare a classifier's or regressor's metrics
        raise ConfigError(f"{local} is a {saved.task} model; `foundry compress` handles classifiers and regressors.",
                          "Serve or export it as it is.")
    if saved.record.runtime == "onnx":
        method = (saved.record.compression or {}).get("method")
        raise ConfigError(f"{local} is already a compressed ONNX graph ({method}).",
                          f"Compress its parent instead: {saved.record.parent_run}.")
    overrides = {k: v for k, v in {"max_drop": max_drop, "prefer": prefer, "variants": variants}.items()
                 if v is not None}
    try:
        cfg = CompressConfig.model_validate({**saved.config.compress.model_dump(), **overrides})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg'].removeprefix('Value error, ')}"
                             for e in exc.errors())
        raise ConfigError(f"Compression options: {problems}.", "See docs/config.md#compress.") from None
    metric = _compress_metric(saved, cfg)
    rules = guards(saved.task, metric, cfg.max_drop, cfg.guard)
    out_dir = Path(out) if out else fresh_dir(Path(saved.config.output.dir), f"{saved.config.name}-compressed")
    if (out_dir / "report.json").exists():
        raise RunDirError(f"{out_dir} already holds a compression report.", "Pass another --out DIR.")
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        splits = reload_splits(saved)
        weights = None
        if saved.task == "classification":
            weights = class_weights(splits["y"]["train"], list(saved.target_encoder.classes_),
                                    saved.config.data.balance.class_weights)
        bench = Bench(saved, splits, metric, cfg, out_dir / ".work", weights, guards=rules)
        explicit = variants is not None or set(cfg.variants) != set(COMPRESSORS)  # not the default: all
        check_asked(bench, cfg.variants if explicit else None)
        with _steps(reporter_for(progress)) as step:
            outcome = search(bench, out_dir, on_step=step)
    except BaseException:  # an error or Ctrl-C: no work folder left behind, nor an empty output folder
        shutil.rmtree(out_dir / ".work", ignore_errors=True)
        if created and not any(out_dir.iterdir()):
            out_dir.rmdir()
        raise
    facts = {"parent": str(model), "parent_run": str(saved.run_dir.resolve()), "max_drop": cfg.max_drop,
             "guard": {g.metric: {"max_worse": g.max_worse, "max_worse_rel": g.max_worse_rel} for g in rules},
             "prefer": cfg.prefer, "split": "val", "rows": int(len(splits["y"]["val"]))}
    report = write_report(outcome, out_dir, facts)
    write_scatter(outcome, out_dir, metric in LOWER_IS_BETTER)
    shutil.rmtree(out_dir / ".work", ignore_errors=True)
    result = CompressResult(out_dir, report, metric, outcome.original, outcome.variants, outcome.chosen,
                            outcome.best_failing, outcome.model_dir, cfg.max_drop, metric in LOWER_IS_BETTER,
                            guard=rules)
    if outcome.model_dir is not None:
        result.test_metrics = evaluate(outcome.model_dir).metrics
        if saved.config.tracking.enabled:
            parent = parent_version(model, local, saved)
            result.extras["registry"] = track_run(outcome.model_dir, load_run_config(outcome.model_dir),
                                               result.test_metrics, parent_version=parent,
                                               recipe=outcome.chosen["recipe"])
    result.wall_s = time.perf_counter() - started
    return result


def refusal(result: CompressResult) -> CompressError | None:
    """The verdict when no variant was kept, as the error `foundry compress` ends with: why (the closest variant
    and the guards it failed, or that none could be measured or none improved on the original); None when a
    variant was chosen."""
    if result.chosen is not None:
        return None
    from modelfoundry.compress.guard import failure_text

    failing = result.best_failing
    if failing is None:
        reason = "no variant could be measured"
    else:
        failed = [c for c in failing["guard"] if not c["passed"]]
        reason = (f"the closest, {failing['name']}, fails the {', '.join(c['metric'] for c in failed)} "
                  f"guard{'s' if len(failed) > 1 else ''}: {'; '.join(failure_text(c) for c in failed)}")
    kept = [e for e in result.variants if e["passed_guard"] and e["servable"]]
    if kept:  # what passed the guard is what matters, not the closest of those that did not
        reason = (f"the variants within the guard ({', '.join(e['name'] for e in kept)}) are neither faster nor "
                  "smaller than the original here")
    return CompressError(f"No compressed variant was kept: {reason}. The original is untouched; the "
                         f"measurements are in {result.report}.",
                         "Allow a larger drop of the primary metric with --max-drop, loosen compress.guard "
                         "(docs/compression.md#the-guard), or try other compressors (compress.variants).")


def _compress_metric(saved: Any, cfg: Any) -> str:
    from modelfoundry.config import CLASSIFICATION_METRICS, REGRESSION_METRICS

    own = CLASSIFICATION_METRICS if saved.task == "classification" else REGRESSION_METRICS
    headline = [m for m in saved.config.evaluation.metrics if m in own]
    metric = cfg.metric or (headline[0] if headline else "accuracy" if saved.task == "classification" else "r2")
    if metric not in own:
        raise ConfigError(f"compress.metric: {metric} does not apply to this {saved.task} model.",
                          f"Choose one of {', '.join(own)}.")
    return metric


@contextlib.contextmanager
def _steps(reporter: Reporter | None) -> Iterator[Callable[[str], None]]:
    """The search's steps as progress, each with its name (the total is not known in advance)."""
    if reporter is None:
        yield lambda name: None
        return
    reporter.start("compress")
    try:
        yield lambda name: reporter.advance(status=name)
    finally:
        reporter.finish()