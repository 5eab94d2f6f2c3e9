"""One training of one config on prepared data: the unit that `run`, tuning trials and CV folds share.

It sits after `evaluate` in the direction because the per-epoch validation metrics the loop does not
compute itself (val_f1_macro, val_roc_auc, ...) come from evaluate/metrics.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Sequence

from modelfoundry.config import FAST_MONITORS, Config

if TYPE_CHECKING:
    import numpy as np

    from modelfoundry.data.prepare import PreparedData
    from modelfoundry.reporting import Reporter
    from modelfoundry.train.callbacks import Callback
    from modelfoundry.train.loop import FitResult


def model_tokenizer(model_config: Any) -> str | None:
    """The tokenizer a model brings (a pretrained encoder's tokenizer.json), else None: the data stage then
    fits a vocabulary on the training split. A model config class provides it with a `tokenizer_json()`
    method."""
    provide = getattr(model_config, "tokenizer_json", None)
    return provide() if callable(provide) else None


def prepare(config: Config) -> PreparedData:
    """The data stage for `config`: its data section, its seed, and its model's tokenizer if it brings one."""
    from modelfoundry.data.prepare import prepare_data, split_seed

    if config.data.augment.active:  # augmentation for a task it cannot apply to: refused before reading any data
        from modelfoundry.data.augment import check_augment_task

        check_augment_task(config.data)
    if config.data.task == "causal_lm":  # examples tokenized with the base model's tokenizer and chat template
        from modelfoundry.data.lm import prepare_lm
        from modelfoundry.models.llm_base import load_tokenizer

        return prepare_lm(config.data, split_seed(config.data, config.seed), load_tokenizer(config.model.base))
    data = prepare_data(config.data, config.seed, tokenizer=model_tokenizer(config.model))
    if config.data.balance.method == "gan" and data.task == "classification":  # rows of a conditional GAN
        from modelfoundry.train.gan_balance import add_gan_rows

        add_gan_rows(data, config.data.balance.ratio, config.seed, config.training.device)
    if config.data.augment.active:  # transforms that do not fit the data: refused before a run or trial starts
        build_augmenter(config, data)
    return data


def fit_config(config: Config, data: PreparedData, *, run_dir: Path | None = None, resume: bool = False,
               progress: Reporter | bool | None = None, callbacks: Sequence[Callback] = (),
               metrics: Iterable[str] = (), initial_state: dict[str, Any] | None = None) -> FitResult:
    """Seed, build the config's model for `data` and train it.

    Args:
        initial_state: weights to start from instead of the built model's initialisation (a warm retrain starts
            from the champion's: what `trained_state` saved, so `data` must give the inputs it was trained on).
        metrics: extra `val_*` names each epoch record must carry (besides the early-stopping monitor),
            e.g. the metric a tuning study optimises.
        callbacks: more per-epoch callbacks (a tuning pruner, ...), called after the built-in ones.
        progress: a Reporter to report training to; None or a bool: none.
    """
    from modelfoundry.models import build_model
    from modelfoundry.train.loop import fit
    from modelfoundry.train.runtime import seed_everything

    seed_everything(config.seed, config.training.deterministic)
    model = build_model(config.model, data.input_spec, data.n_outputs)
    if initial_state is not None:
        from modelfoundry.train.loop import load_weights

        load_weights(model, initial_state)
    augmenter = build_augmenter(config, data, model)
    if data.task == "generative":  # a GAN: its own loop (train/gan_loop.py)
        return _fit_gan(config, data, model, run_dir, resume, progress, callbacks, metrics)
    target_std = data.target_encoder.std_ if data.task == "regression" else 1.0
    stopping = config.training.early_stopping
    names = {stopping.monitor if stopping else "val_loss", *metrics}
    return fit(model, data.X, data.y, config.training, task=data.task, class_weights=data.class_weights,
               target_std=target_std, seed=config.seed, run_dir=run_dir, resume=resume, progress=progress,
               val_metrics=val_metric_fn(names, data), callbacks=list(callbacks), feature_cache=config.data.text.cache,
               augmenter=augmenter)


def build_augmenter(config: Config, data: PreparedData, model: Any = None) -> Any:
    """The training batches' augmenter for `config.data.augment` on `data` (None when none is configured); a
    ConfigError, before training, lists every transform that does not fit the data or the `model` (one whose
    frozen encoder's outputs are cached takes no augmentation)."""
    if not config.data.augment.active:
        return None
    from modelfoundry.data.augment import build_augmenter as build

    frozen = getattr(model, "frozen_features", None)
    return build(config.data.augment, data.task, data.input_spec, data.preprocessor.desc, data.X["train"],
                 config.seed, frozen_encoder=callable(frozen) and frozen() is not None)


def _fit_gan(config: Config, data: PreparedData, model: Any, run_dir: Path | None, resume: bool,
             progress: Reporter | bool | None, callbacks: Sequence[Callback], metrics: Iterable[str]) -> FitResult:
    """Train a GAN (two Adam optimizers of its own: training.optimizer and training.scheduler do not apply),
    scored each epoch by the Frechet distance of generated rows to the validation rows."""
    from modelfoundry.errors import ConfigError
    from modelfoundry.evaluate.generative import epoch_quality
    from modelfoundry.train.gan_loop import fit_gan

    if set(metrics) - {"val_fd"}:  # a tuning study's objective: a GAN's epochs record no val_loss or val_<metric>
        raise ConfigError(f"A GAN's epochs record val_fd, not {', '.join(sorted(set(metrics)))}, so `foundry tune` "
                          "cannot score its trials.", "Compare GAN settings with separate `foundry run`s (their "
                          "eval/report.md), or tune the classifier that uses its rows (data.balance.method: gan).")
    defaults = type(config.training)()
    foreign = [key for key in ("optimizer", "scheduler") if getattr(config.training, key) != getattr(defaults, key)]
    if foreign:
        raise ConfigError(f"A GAN trains with two Adam optimizers of its own, so training.{foreign[0]} does not "
                          "apply.", f"Remove training.{foreign[0]}; set the learning rates with model.g_lr and "
                          "model.d_lr.")
    gan = config.model
    val = next(iter(data.X["val"].values()))
    return fit_gan(model, data.X, data.y, config.training, g_lr=gan.g_lr, d_lr=gan.d_lr,
                   label_smoothing=gan.label_smoothing, n_critic=gan.n_critic, ema_decay=gan.ema_decay,
                   seed=config.seed, run_dir=run_dir,
                   resume=resume, progress=progress, quality=epoch_quality(val) if len(val) > 1 else None,
                   callbacks=list(callbacks))


def val_metric_fn(names: Iterable[str], data: PreparedData) -> Callable[[np.ndarray], dict[str, float]] | None:
    """The per-epoch function for the `val_*` names the loop does not compute itself, else None."""
    from modelfoundry.evaluate.metrics import classification_metrics, regression_metrics

    wanted = sorted(n for n in set(names) if n not in FAST_MONITORS)
    if not wanted:
        return None
    y_val = data.y["val"]
    if data.task == "classification":
        def compute(proba: np.ndarray) -> dict[str, float]:
            values = classification_metrics(y_val, proba, [])
            return {n: values.get(n.removeprefix("val_"), float("nan")) for n in wanted}
        return compute
    decode, truth = data.target_encoder.decode, data.target_encoder.decode(y_val)

    def compute_regression(pred: np.ndarray) -> dict[str, float]:
        values = regression_metrics(truth, decode(pred))
        return {n: values.get(n.removeprefix("val_"), float("nan")) for n in wanted}
    return compute_regression


def describe(exc: BaseException) -> str:
    """An exception as one line for a record (a failed trial, a failed fold)."""
    from modelfoundry.errors import first_line

    message = getattr(exc, "message", None)
    return f"{type(exc).__name__}: {message.splitlines()[0] if message else first_line(exc)}"

