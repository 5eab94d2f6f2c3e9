"""`cross_validate`: K folds over every cleaned row, written to cv.json next to the resolved config."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from modelfoundry.api.arguments import as_config, fresh_dir
from modelfoundry.config import Config
from modelfoundry.errors import RunDirError

if TYPE_CHECKING:
    from modelfoundry.reporting import Reporter
    from modelfoundry.cv import CVResult


def cross_validate(config: Config | str | Path, *, folds: int = 5, stratified: bool | None = None,
                   out: str | Path | None = None, progress: Reporter | bool | None = None) -> CVResult:
    """K-fold cross-validation of a config: per-fold and mean ± std held-out metrics, written to cv.json.

    The folds partition every cleaned row (an alternative estimate to the single test split of `run`);
    nothing is registered. Results go to `out`, default `<output.dir>/<name>-cv-<UTC timestamp>/`, next
    to the resolved config.yaml; `result.path` is the cv.json written.
    """
    from modelfoundry.cv import cross_validate as run_folds
    from modelfoundry.cv import write_cv_json
    from modelfoundry.data.sources import describe_source
    from modelfoundry.rundir import save_config

    config = as_config(config)
    # the source as `run` records it, so config_hash matches a run of the same config
    config = config.model_copy(update={"data": config.data.model_copy(
        update={"source": describe_source(config.data.source)})})
    out_dir = Path(out) if out is not None else fresh_dir(Path(config.output.dir), f"{config.name}-cv")
    if (out_dir / "cv.json").exists():
        raise RunDirError(f"'{out_dir}' already holds a cv.json.", "Pick a new --out, or remove the old results.")
    result = run_folds(config, folds=folds, stratified=stratified, progress=progress)
    save_config(out_dir, config)
    result.path = out_dir / "cv.json"
    write_cv_json(result, result.path)
    return result
