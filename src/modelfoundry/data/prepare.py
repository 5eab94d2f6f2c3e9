"""Compose the data stage: source -> typed, cleaned frame -> splits -> fitted preprocessing -> arrays."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.artifacts.inputs import Inputs, InputSpec
from modelfoundry.config import DataConfig
from modelfoundry.data import cache
from modelfoundry.data.balance import class_weights, resample
from modelfoundry.data.chunked import plan_workers, transform_parts
from modelfoundry.data.clean import FeatureSpec, clean_rows, infer_task, plan_features
from modelfoundry.data.fingerprint import fingerprint
from modelfoundry.data.portable import (
    PortablePreprocessor,
    describe_preprocessor,
    share_text_encoder,
    text_encoder,
)
from modelfoundry.data.sources import describe_source, load_source
from modelfoundry.data.split import split_indices, train_share
from modelfoundry.data.text import TextEncoder
from modelfoundry.data.transform import Preprocessor, TargetEncoder
from modelfoundry.errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

SPLITS = ("train", "val", "test")


@dataclass
class CleanData:
    frame: pd.DataFrame  # typed and cleaned rows; the index is the row number in the source
    specs: list[FeatureSpec]
    task: str
    info: dict[str, Any]  # fingerprint + cleaning report


@dataclass
class PreparedData:
    task: str
    X: dict[str, Inputs]  # split -> the model's named inputs, e.g. {"numeric": (N, F) float32}
    y: dict[str, np.ndarray]  # split -> class indices (int64) or standardised targets (float32)
    rows: dict[str, np.ndarray]  # split -> row numbers in the source, for error analysis
    preprocessor: PortablePreprocessor  # what is saved and applied everywhere; .fitted is the scikit-learn one
    target_encoder: TargetEncoder
    class_weights: np.ndarray | None
    info: dict[str, Any]  # what data.json records
    texts: Mapping[str, list[str]] | None = None  # split -> each row's text columns joined (the TF-IDF baseline)
    horizon: int = 1  # regression outputs per row: the forecast steps of a time series (data.time_series)
    # a causal LM's held-out examples, split -> [{"messages": the prompt, "reference": the answer, "row"}]
    references: Mapping[str, list[dict[str, Any]]] | None = None
    # split -> its raw rows (typed and cleaned, before preprocessing): the monitor's reference profile reads them
    frames: Mapping[str, pd.DataFrame] | None = None

    @property
    def input_spec(self) -> InputSpec:
        return self.preprocessor.input_spec_

    @property
    def n_outputs(self) -> int:
        # a GAN's: the classes of its label column (1 for unlabelled rows)
        return len(self.target_encoder.classes_) if self.task in ("classification", "generative") else self.horizon


def load_clean(cfg: DataConfig, seed: int = 0, raw: pd.DataFrame | None = None) -> CleanData:
    """Read `cfg.source` (or take its rows, `raw`), decide column kinds and the task, drop the rows cleaning
    removes, and keep a sample of `cfg.max_rows` rows if asked (stratified for classification; `seed` is the
    split seed)."""
    origin = cfg.source
    if cfg.task == "anomaly" and raw is None:  # its splits come from data/anomaly.py; this caller knows no others
        raise ConfigError("This command handles classification and regression data; data.task: anomaly (an "
                          "autoencoder's normal rows and threshold) is trained by `foundry run` or `foundry train` "
                          "and tuned by `foundry tune`.", "Train it with `foundry run CONFIG`, then evaluate, predict, "
                          "export or serve the run.")
    if cfg.task == "generative" and raw is None:  # its splits come from data/generative.py
        raise ConfigError("This command handles classification and regression data; data.task: generative (a GAN) "
                          "is trained by `foundry run` or `foundry train`, not cross-validated or tuned.",
                          "Train it with `foundry run CONFIG`, then draw rows with `foundry sample RUN_DIR`.")
    raw = load_source(cfg.source) if raw is None else raw
    frame = raw.copy()
    specs = plan_features(frame, cfg, origin)
    task = infer_task(frame[cfg.target], cfg.task)
    info = {"fingerprint": fingerprint(raw, cfg.target, task, describe_source(cfg.source))}
    frame, report = clean_rows(frame, specs, cfg, origin)
    if task == "classification" and frame[cfg.target].nunique() < 2:
        only = frame[cfg.target].iloc[0]
        only = only.item() if isinstance(only, np.generic) else only
        raise DataError(f"Target '{cfg.target}' of {origin} has a single class ({only!r}) after cleaning; "
                        "a classifier needs at least two.", "Check data.target, or set data.task: regression.")
    if task == "regression":
        frame[cfg.target] = _numeric_target(frame, cfg.target, origin)
    info["cleaning"] = asdict(report)
    if cfg.max_rows is not None and len(frame) > cfg.max_rows:
        info["cleaning"]["sampled"] = {"from": len(frame), "rows": cfg.max_rows}
        frame = _sample(frame, cfg.max_rows, cfg.target if task == "classification" else None, seed)
    info["features"] = [{"name": s.name, "kind": s.kind, "columns": len(s.columns)} for s in specs]
    return CleanData(frame, specs, task, info)


def _sample(frame: pd.DataFrame, rows: int, stratify: str | None, seed: int) -> pd.DataFrame:
    """`rows` rows of `frame` at random (seeded), in their original order; stratified by `stratify`'s classes."""
    from sklearn.model_selection import train_test_split

    labels = frame[stratify].astype(str) if stratify else None
    try:
        kept, _ = train_test_split(np.arange(len(frame)), train_size=rows, random_state=seed, stratify=labels)
    except ValueError:  # a class too rare to stratify: a plain random sample
        kept, _ = train_test_split(np.arange(len(frame)), train_size=rows, random_state=seed)
    return frame.iloc[np.sort(kept)]


def split_frame(clean: CleanData, cfg: DataConfig, seed: int) -> dict[str, np.ndarray]:
    """Row positions of each split; the same config and seed always give the same split."""
    labels = clean.frame[cfg.target].astype(str).to_numpy()
    stratify = cfg.split.stratify and clean.task == "classification"
    positions = split_indices(labels, cfg.split.val, cfg.split.test, stratify, split_seed(cfg, seed))
    if cfg.split.train_fraction < 1:
        positions["train"] = train_share(positions["train"], labels if stratify else None, cfg.split.train_fraction,
                                         split_seed(cfg, seed))
    return positions


def split_seed(cfg: DataConfig, seed: int) -> int:
    """The seed of the splits: data.split.seed, else the config's top-level seed."""
    return cfg.split.seed if cfg.split.seed is not None else seed


def prepare_data(cfg: DataConfig, seed: int, *, tokenizer: str | None = None) -> PreparedData:
    """The whole data stage for training: preprocessing is fitted on the training rows only.

    `tokenizer`: a pretrained model's tokenizer (its tokenizer.json text) for the text columns; None fits a
    vocabulary on the training split (data.text). A time series (data.time_series) becomes chronologically
    split windows instead (data/timeseries.py). With data.cache the prepared splits come from the disk cache
    when this source and these settings were prepared before (data/prepared_cache.py), without reading the source.
    """
    if cfg.time_series is not None:
        from modelfoundry.data.timeseries import prepare_series

        return prepare_series(cfg, split_seed(cfg, seed))
    if cfg.task == "anomaly":  # an autoencoder: normal rows to train on, a threshold from the normal val rows
        from modelfoundry.data.anomaly import prepare_anomaly

        return prepare_anomaly(cfg, split_seed(cfg, seed))
    if cfg.task == "generative":  # a GAN: one image or numeric columns, the label column optional
        from modelfoundry.data.generative import prepare_generative

        return prepare_generative(cfg, split_seed(cfg, seed))
    started = time.perf_counter()
    key = _source_key(cfg, split_seed(cfg, seed), tokenizer) if cfg.cache else None
    if key is not None:
        hit = _from_cache(key, started, lambda: _split_parts(cfg, seed)[1],
                          lambda: _prepare_unbalanced(*_split_parts(cfg, seed), cfg, seed, tokenizer))
        if hit is not None:
            hit.info["fingerprint"]["source"] = describe_source(cfg.source)  # the same bytes, maybe another path
            return _balanced(hit, cfg, split_seed(cfg, seed))
    clean, parts = _split_parts(cfg, seed)
    data = _prepare_unbalanced(clean, parts, cfg, seed, tokenizer)
    if key is not None:
        _store(key, data, started, parts)
    return _balanced(data, cfg, split_seed(cfg, seed))


def _split_parts(cfg: DataConfig, seed: int) -> tuple[CleanData, dict[str, pd.DataFrame]]:
    clean = load_clean(cfg, split_seed(cfg, seed))
    positions = split_frame(clean, cfg, seed)
    return clean, {name: clean.frame.iloc[positions[name]] for name in SPLITS}


def _prepare_unbalanced(clean: CleanData, parts: dict[str, pd.DataFrame], cfg: DataConfig, seed: int,
                        tokenizer: str | None) -> PreparedData:
    stratified = cfg.split.stratify and clean.task == "classification"
    return fit_transform(clean, parts, cfg, split_seed(cfg, seed), stratified, tokenizer=tokenizer)


def text_settings(cfg: DataConfig, tokenizer: str | None) -> dict[str, Any]:
    """The TextEncoder settings of `data.text`, with a pretrained tokenizer when the model brings one."""
    text = cfg.text
    return {"max_length": text.max_length, "truncation": text.truncation, "tokenizer": text.tokenizer,
            "max_vocab": text.max_vocab, "min_freq": text.min_freq, "lowercase": text.lowercase,
            "pretrained": tokenizer,
            **({"stride": text.stride, "max_windows": text.max_windows, "window_pool": text.window_pool}
               if text.stride is not None else {})}


def prepare_parts(clean: CleanData, parts: dict[str, pd.DataFrame], cfg: DataConfig, seed: int,
                  stratified: bool, *, tokenizer: str | None = None, target: Any = None) -> PreparedData:
    """Fit preprocessing and the target encoding on `parts['train']` only and turn every part into arrays.

    `parts` holds the train, val and test rows of `clean.frame` (a cross-validation fold puts its held-out
    rows in 'test'); `seed` (the split seed) and `stratified` are recorded in `info['split']`. `target`: a
    fitted target encoder to use instead (an anomaly task's labels, data/anomaly.py). With data.cache the arrays
    come from the disk cache when these rows were prepared with these settings before (every fold of a CV).
    """
    started = time.perf_counter()
    key = None
    if cfg.cache:
        from modelfoundry.data import prepared_cache as store

        # a given target encoder is fitted on clean.frame by the data settings: the key holds both
        key = store.entry_key({"data": store.data_settings(cfg), "clean": clean.info, "task": clean.task,
                               "specs": [asdict(s) for s in clean.specs], "seed": seed, "stratified": stratified,
                               "tokenizer": store.text_hash(tokenizer),
                               "target": type(target).__name__ if target is not None else None},
                              {name: part.index.to_numpy() for name, part in parts.items()})
        hit = _from_cache(key, started, lambda: parts, lambda: fit_transform(
            clean, parts, cfg, seed, stratified, tokenizer=tokenizer, target=target), target)
        if hit is not None:
            return _balanced(hit, cfg, seed)
    data = fit_transform(clean, parts, cfg, seed, stratified, tokenizer=tokenizer, target=target)
    if key is not None:
        _store(key, data, started, None)
    return _balanced(data, cfg, seed)


def fit_transform(clean: CleanData, parts: dict[str, pd.DataFrame], cfg: DataConfig, seed: int,
                  stratified: bool, *, tokenizer: str | None = None, target: Any = None) -> PreparedData:
    """`prepare_parts` without the cache and before resampling (data.balance) and class weights."""
    settings = text_settings(cfg, tokenizer)
    texts = [s.name for s in clean.specs if s.kind == "text"]
    key = cached = None
    if texts and cfg.text.cache:
        key = cache.cache_key(clean.info["fingerprint"]["sha256"], settings, texts,
                              {name: part.index.to_numpy() for name, part in parts.items()})
        cached = cache.load(key)
    encoder = TextEncoder.from_description(cached.description) if cached else None
    fitted = Preprocessor(clean.specs, cfg.clean.outliers.method, cfg.clean.outliers.factor, settings,
                          encoder).fit(parts["train"])
    pre = PortablePreprocessor(describe_preprocessor(fitted), fitted)
    _check_description(fitted, pre, parts["train"], text=cached is None)  # a cached tokenizer was checked
    target = target if target is not None else TargetEncoder(clean.task).fit(parts["train"][cfg.target])
    workers = plan_workers(sum(len(part) for part in parts.values()), cfg.chunk_rows, cfg.workers,
                           text="text" in pre.desc and cached is None)
    X = transform_parts(pre.desc, parts, {name: f"the {name} split of {cfg.source}" for name in parts},
                        cached is None, workers, cfg.chunk_rows)
    if cached is not None:
        share_text_encoder(pre.desc, fitted.text_)  # both read the cached description: one tokenizer
        for name in X:
            X[name].update(cached.arrays[name])
    elif key is not None:
        cache.save(key, fitted.text_.describe(), {name: {k: X[name][k] for k in ("tokens", "attention_mask")}
                                                  for name in X})
    y = {name: target.encode(part[cfg.target], f"the {name} split of {cfg.source}") for name, part in parts.items()}
    rows = {name: part.index.to_numpy() for name, part in parts.items()}
    info = dict(clean.info)
    info["split"] = {"seed": seed, "stratified": stratified,
                     **{name: len(part) for name, part in parts.items()}}
    info["input_shape"] = list(pre.input_shape_) if len(pre.input_spec_) == 1 else None
    info["inputs"] = pre.input_spec_.to_json()
    if key is not None:
        info["text_cache"] = {"hit": cached is not None, "key": key[:16]}
    if "attention_mask" in X["train"]:
        info["text"] = text_coverage(X["train"]["attention_mask"])
    texts = SplitTexts(fitted.text_, parts) if fitted.text_ is not None else None
    return PreparedData(clean.task, X, y, rows, pre, target, None, info, texts, frames=parts)


def _balanced(data: PreparedData, cfg: DataConfig, seed: int) -> PreparedData:
    """Class weights, and the training split resampled by data.balance (after the cache: seeded and cheap)."""
    if data.task != "classification":
        return data
    data.class_weights = class_weights(data.y["train"], data.target_encoder.classes_, cfg.balance.class_weights)
    X, y, rows, balanced = resample(data.X["train"], data.y["train"], data.rows["train"], cfg.balance, seed,
                                    data.preprocessor, list(data.target_encoder.classes_))
    data.X["train"], data.y["train"], data.rows["train"] = X, y, rows
    if balanced:
        data.info["balance"] = balanced
    return data


class SplitTexts(Mapping[str, list[str]]):
    """Each split's rows as their joined text, made when first asked for: only the TF-IDF baseline reads them,
    and a run on cached tokens should not pay for it before then."""

    def __init__(self, encoder: TextEncoder, parts: dict[str, pd.DataFrame]):
        self._encoder, self._parts, self._made = encoder, parts, {}

    def __getitem__(self, split: str) -> list[str]:
        if split not in self._made:
            self._made[split] = self._encoder.texts(self._parts[split], f"the {split} split")
        return self._made[split]

    def __iter__(self) -> Iterator[str]:
        return iter(self._parts)

    def __len__(self) -> int:
        return len(self._parts)


def text_coverage(mask: np.ndarray) -> dict[str, Any]:
    """How much of the texts the model reads: its length (and windows), and the share of rows that fill them
    all - texts that were probably cut (`data.text.max_length`, `stride` and `max_windows` decide)."""
    full = mask[:, -1] == 1 if mask.ndim == 2 else mask[:, -1, -1] == 1
    return {"length": int(mask.shape[-1]), "windows": int(mask.shape[1]) if mask.ndim == 3 else None,
            "at_limit": round(float(full.mean()), 4) if len(mask) else 0.0}


CHECK_ROWS = 512


def _check_description(fitted: Preprocessor, portable: PortablePreprocessor, train: pd.DataFrame,
                       text: bool = True) -> None:
    """The portable description must reproduce the scikit-learn preprocessing it was taken from; checked on
    up to CHECK_ROWS training rows (a bug here would make served predictions differ from evaluated ones).
    `text=False` leaves the text inputs out (a tokenizer from the cache was checked when it was saved)."""
    rows = train.iloc[:CHECK_ROWS]
    expected = fitted.transform(rows, "the training split", text=text)
    got = portable.transform(rows, "the training split", text=text)
    if list(expected) != list(got):
        raise RuntimeError(f"The portable preprocessing gives inputs {list(got)}, the fitted one {list(expected)}; "
                           "this is a bug in modelfoundry.")
    for name in expected:
        a, b = expected[name], got[name]
        if a.shape != b.shape or a.dtype != b.dtype or not np.allclose(b, a, rtol=1e-5, atol=1e-6):
            worst = float(np.abs(b - a).max()) if a.shape == b.shape else float("nan")
            raise RuntimeError(f"The portable preprocessing differs from the fitted one on input '{name}' (shapes "
                               f"{b.shape} vs {a.shape}, max difference {worst:.3g}); this is a bug in modelfoundry.")


def _numeric_target(frame: pd.DataFrame, target: str, origin: str) -> pd.Series:
    from modelfoundry.data.clean import to_numeric

    return to_numeric(frame[target], target, origin)


def rebuild_splits(cfg: DataConfig, seed: int, recorded_sha256: str, run_dir: Any) -> dict[str, pd.DataFrame]:
    """The raw rows of each split of a finished run, rebuilt from its source; the source must be unchanged. A time
    series' splits are histories (data/timeseries.py `split_histories`)."""
    if cfg.time_series is not None:
        from modelfoundry.data.timeseries import split_histories

        return split_histories(cfg, recorded_sha256, run_dir)
    if cfg.task == "anomaly":  # the parts an autoencoder was trained on: normal train/val rows, all test rows
        from modelfoundry.data.anomaly import anomaly_splits

        clean, parts, *_ = anomaly_splits(cfg, split_seed(cfg, seed))
    elif (stored := _cached_frames(cfg, seed, recorded_sha256)) is not None:
        return stored
    else:
        clean = load_clean(cfg, split_seed(cfg, seed))
    if clean.info["fingerprint"]["sha256"] != recorded_sha256:
        raise DataError(f"The source {cfg.source} changed since {run_dir} was trained (fingerprint "
                        f"{recorded_sha256[:12]} then, {clean.info['fingerprint']['sha256'][:12]} now), so its "
                        "splits cannot be rebuilt.", "Use a labelled file instead (for example "
                        f"`foundry evaluate {run_dir} --data FILE`), or restore the original data.")
    if cfg.task == "anomaly":
        return parts
    positions = split_frame(clean, cfg, seed)
    return {name: clean.frame.iloc[positions[name]] for name in SPLITS}


# ---------------------------------------------------------------------------------------- the prepared-data cache
def _source_key(cfg: DataConfig, seed: int, tokenizer: str | None) -> str | None:
    """The cache key of `prepare_data` for this source and settings, found without reading the source (None when
    its file cannot be read: preparing then says why)."""
    from modelfoundry.data import prepared_cache as store
    from modelfoundry.data.fingerprint import source_identity

    try:
        source = source_identity(cfg.source)
    except OSError:
        return None
    return store.entry_key({"source": source, "data": store.data_settings(cfg), "seed": seed,
                            "tokenizer": store.text_hash(tokenizer)})


def _from_cache(key: str, started: float, frames: Callable[[], Mapping[str, pd.DataFrame]],
                refit: Callable[[], PreparedData], target: Any = None) -> PreparedData | None:
    """The entry `key` as PreparedData (before resampling), or None. `frames` gives the split frames when the entry
    does not hold them; `refit` prepares afresh, for the scikit-learn preprocessing only tests and tools ask for;
    `target`: the caller's fitted target encoder (else the entry's)."""
    from modelfoundry.data import prepared_cache as store

    cached = store.load(key, rebuild=frames)
    if cached is None:
        return None
    try:
        pre = PortablePreprocessor(cached.preprocessor, store.FittedOnDemand(lambda: refit().preprocessor.fitted))
        target = target if target is not None else TargetEncoder.from_description(cached.target)
    except (DataError, KeyError, TypeError, ValueError):
        return None
    info = cached.info
    loaded_s = time.perf_counter() - started
    info["cache"] = {"hit": True, "key": key[:16], "prepare_s": round(cached.prepare_s, 3),
                     "load_s": round(loaded_s, 3), "saved_s": round(max(cached.prepare_s - loaded_s, 0.0), 3)}
    if "text_cache" in info:
        info["text_cache"]["hit"] = True  # its tokens come from a cache
    frames = cached.frames if cached.frames is not None else frames()
    texts = SplitTexts(text_encoder(pre.desc), frames) if "text" in pre.desc else None
    return PreparedData(cached.task, cached.X, cached.y, cached.rows, pre, target, None, info, texts,
                        horizon=cached.horizon, frames=frames)


def _store(key: str, data: PreparedData, started: float, frames: Mapping[str, pd.DataFrame] | None) -> None:
    """Write `data` (before resampling) as the entry `key`; what data.json then says about the cache."""
    from modelfoundry.data import prepared_cache as store
    from modelfoundry.data.portable import describe_target

    prepare_s = time.perf_counter() - started
    meta = {"task": data.task, "preprocessor": data.preprocessor.desc, "horizon": data.horizon,
            "target": describe_target(data.target_encoder) if isinstance(data.target_encoder, TargetEncoder) else None,
            "info": data.info, "prepare_s": prepare_s}
    stored = store.save(key, {"X": data.X, "y": data.y, "rows": data.rows}, meta, frames)
    data.info["cache"] = {"hit": False, "key": key[:16], "prepare_s": round(prepare_s, 3), "stored": stored}


def _cached_frames(cfg: DataConfig, seed: int, recorded_sha256: str) -> dict[str, pd.DataFrame] | None:
    """The split frames a cache entry of this unchanged source holds (its fingerprint the recorded one), else None.
    Looked up without a pretrained tokenizer: a run of a pretrained encoder rebuilds its splits from the source."""
    from modelfoundry.data import prepared_cache as store

    key = _source_key(cfg, split_seed(cfg, seed), None) if cfg.cache else None
    cached = store.load(key) if key is not None else None
    if cached is None or cached.frames is None or cached.info["fingerprint"]["sha256"] != recorded_sha256:
        return None
    try:
        return {name: cached.frames[name] for name in SPLITS}
    except KeyError:
        return None
