"""The `data:` section: the source, the target, per-column overrides, cleaning, the split and class balance."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from modelfoundry.config.augment import AugmentConfig
from modelfoundry.config.base import SEED_MAX, Section

MissingStrategy = Literal["drop", "mean", "median", "most_frequent", "constant"]


class FeatureConfig(Section):
    """Per-column override. Keys of `data.features` are column names or glob patterns (`pixel_*`)."""

    type: Literal["auto", "numeric", "categorical", "image", "text", "ignore"] = "auto"
    missing: MissingStrategy | None = None  # None: median for numeric, most_frequent for categorical
    fill_value: float | int | str | None = None  # used by missing: constant
    scale: Literal["standard", "minmax", "none"] | None = None  # None: standard
    encode: Literal["onehot", "ordinal"] | None = None  # None: onehot
    shape: list[int] | None = None  # image only: (C, H, W) or (H, W)

    @model_validator(mode="after")
    def _check(self) -> FeatureConfig:
        if self.missing == "constant" and self.fill_value is None:
            raise ValueError("missing: constant needs a fill_value (for example fill_value: 0)")
        if self.shape is not None and (len(self.shape) not in (2, 3) or min(self.shape) < 1):
            raise ValueError(f"shape must be [H, W] or [C, H, W] of positive sizes, got {self.shape}")
        return self


class OutlierConfig(Section):
    method: Literal["none", "iqr", "zscore"] = "none"
    factor: float = Field(3.0, gt=0)  # IQR multiplier, or number of standard deviations


class CleanConfig(Section):
    duplicates: Literal["drop", "keep"] = "drop"
    outliers: OutlierConfig = OutlierConfig()


class SplitConfig(Section):
    val: float = Field(0.15, gt=0, lt=1)
    test: float = Field(0.15, gt=0, lt=1)
    stratify: bool = True
    seed: int | None = Field(None, ge=0, le=SEED_MAX)  # None: the top-level seed
    # train on a (stratified, seeded) share of the training split only; val and test stay whole (learning curves,
    # "what does augmentation buy with little data")
    train_fraction: float = Field(1.0, gt=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> SplitConfig:
        if self.val + self.test >= 0.9:
            raise ValueError(f"val + test must leave at least 10% for training, got {self.val + self.test:g}")
        return self


BalanceMethod = Literal["none", "oversample", "undersample", "smote", "adasyn", "smotenc", "gan"]


class BalanceConfig(Section):
    """Class imbalance (classification only): loss weights, and resampling of the training split (never val/test)."""

    class_weights: Literal["none", "balanced"] | dict[str, float] = "none"
    # oversample / undersample: random (imbalanced-learn); smote / adasyn: synthetic rows between neighbours;
    # smotenc: SMOTE that keeps categorical columns categorical; gan: rows from a class-conditional GAN
    method: BalanceMethod = "none"
    # each resampled class's size relative to the largest class (over-sampling) or to the smallest (under-sampling);
    # auto: every class as large as the largest (over) or as small as the smallest (under)
    ratio: float | Literal["auto"] = "auto"
    k_neighbors: int = Field(5, ge=1, le=100)  # smote / adasyn / smotenc neighbours

    @field_validator("ratio")
    @classmethod
    def _ratio(cls, v: Any) -> Any:
        if isinstance(v, float) and not 0 < v <= 1:
            raise ValueError(f"ratio must be above 0 and at most 1 (or auto), got {v:g}")
        return v

    @field_validator("class_weights", mode="before")
    @classmethod
    def _label_keys(cls, v: Any) -> Any:  # YAML reads {0: 2.0} with int keys; labels are matched as text
        return {str(k): w for k, w in v.items()} if isinstance(v, dict) else v

    @field_validator("class_weights")
    @classmethod
    def _weights(cls, v: Any) -> Any:
        bad = {k: w for k, w in v.items() if not 0 <= w <= 1e6} if isinstance(v, dict) else {}
        if bad:
            shown = ", ".join(f"{k}: {w:g}" for k, w in bad.items())
            raise ValueError(f"class weights must be between 0 and 1e6, got {shown}")
        return v


class TextConfig(Section):
    """How text columns become tokens (a pretrained model brings its own tokenizer: only the lengths apply)."""

    tokenizer: Literal["word", "subword"] = "word"  # a vocabulary fitted on the training split
    max_vocab: int = Field(20000, ge=10, le=2_000_000)
    min_freq: int = Field(2, ge=1)
    lowercase: bool = True
    max_length: int = Field(128, ge=2, le=8192)  # tokens per row (the text columns of a row joined)
    truncation: Literal["right", "left"] = "right"  # right: keep the start of long texts; left: keep the end
    # long documents: with a stride, a text longer than max_length becomes overlapping windows of max_length
    # tokens (`stride` tokens shared by neighbours), at most max_windows of them (from the start; with
    # truncation: left, from the end); the model reads each window and pools their outputs per document
    stride: int | None = Field(None, ge=0)  # None: no windows, long texts are cut to max_length
    max_windows: int = Field(8, ge=1, le=256)
    window_pool: Literal["mean", "max"] = "mean"  # how the windows' outputs become the document's
    cache: bool = True  # keep tokenized splits in .foundry-cache/tokens/ for the next run on the same data

    @model_validator(mode="after")
    def _check(self) -> TextConfig:
        if self.stride is not None and self.stride > self.max_length // 2:
            raise ValueError(f"stride ({self.stride}) must be at most half of max_length ({self.max_length}): it is "
                             "the number of tokens two neighbouring windows share (for example stride: "
                             f"{self.max_length // 4})")
        return self


class TimeSeriesConfig(Section):
    """A time-ordered table as forecasting windows: `window` past steps -> the next `horizon` target values."""

    time: str  # the column that orders the rows (dates or numbers); each time once, none missing
    target: str | None = None  # None: data.target
    window: int = Field(ge=2, le=100_000)  # past steps the model reads
    horizon: int = Field(1, ge=1, le=10_000)  # future target values it predicts
    step: int = Field(1, ge=1)  # steps between two windows' origins
    season: int | Literal["auto"] = "auto"  # the seasonal-naive baseline's period; auto: from the training period
    features: list[str] = []  # numeric covariate columns read beside the target at each step

    @field_validator("season")
    @classmethod
    def _season(cls, v: Any) -> Any:
        if isinstance(v, int) and v < 1:
            raise ValueError(f"season must be a whole number of steps >= 1 or auto, got {v}")
        return v


class LMDataConfig(Section):
    """Examples for a causal language model (`data.task: causal_lm`): prompt/completion pairs or chat messages."""

    # a column name, or a template with {column} placeholders ("Classify the sentiment of: {text}")
    prompt: str = "prompt"
    completion: str = "completion"  # a column name or a template, as prompt
    messages: str | None = None  # a column of chat messages [{role, content}, ...]; replaces prompt/completion
    system: str | None = None  # a system message put before every example (and every served chat)
    template: Literal["model", "chatml", "plain"] = "model"  # model: the base's own chat template
    max_length: int = Field(512, ge=8, le=131_072)  # tokens per example (prompt + completion)
    packing: bool = False  # put several short examples in one row of max_length tokens (EOS between them)
    train_on: Literal["completion", "all"] = "completion"  # completion: prompt tokens carry no loss
    cache: bool = True  # keep tokenized splits in .foundry-cache/tokens/ for the next run on the same data


class AnomalyConfig(Section):
    """An anomaly detector (`data.task: anomaly`): which labels mean normal, and the threshold's false-alarm rate."""

    # the data.target value(s) meaning normal (every other value is an anomaly); None: the most frequent one
    normal: list[str | int | float | bool] | str | int | float | bool | None = None
    false_alarm_rate: float = Field(0.01, gt=0, lt=0.5)  # share of normal validation rows above the threshold

    @field_validator("normal")
    @classmethod
    def _as_list(cls, v: Any) -> Any:
        if isinstance(v, list) and not v:
            raise ValueError("normal must name at least one label value (or be left out: the most frequent one)")
        return v if v is None or isinstance(v, list) else [v]


class DataConfig(Section):
    source: str  # sklearn:<name> or a path to .csv / .parquet / .jsonl
    target: str | None = "target"  # None: no label column (data.task: anomaly only, every row normal)
    task: Literal["auto", "classification", "regression", "causal_lm", "anomaly", "generative"] = "auto"
    features: dict[str, FeatureConfig] = {}
    max_rows: int | None = Field(None, ge=10)  # keep a random (stratified) sample of this many rows, for speed
    text: TextConfig = TextConfig()
    clean: CleanConfig = CleanConfig()
    split: SplitConfig = SplitConfig()
    balance: BalanceConfig = BalanceConfig()
    time_series: TimeSeriesConfig | None = None  # forecasting windows over a time-ordered table
    lm: LMDataConfig = LMDataConfig()  # read when data.task is causal_lm (a model: {name: llm})
    anomaly: AnomalyConfig = AnomalyConfig()  # read when data.task is anomaly (a model: {name: autoencoder})
    augment: AugmentConfig = AugmentConfig()  # random changes to the training batches (none by default)
    # the prepared splits (cleaned, split, fitted, transformed arrays) kept in .foundry-cache/prepared/, keyed by the
    # data's fingerprint and every setting they depend on: run, cv, tune trials and retrain share them
    cache: bool = True
    workers: int | Literal["auto"] = "auto"  # processes preparing a large table in chunks; auto: by its size and cores
    chunk_rows: int = Field(100_000, ge=1000)  # rows per chunk when a table is prepared in parallel

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: Any) -> Any:
        if isinstance(v, int) and not 1 <= v <= 64:
            raise ValueError(f"workers must be 1 to 64 or auto, got {v}")
        return v

    @model_validator(mode="after")
    def _labels(self) -> DataConfig:
        if self.task == "anomaly" and self.time_series is not None:
            raise ValueError("data.task: anomaly reads rows, not a time series; remove data.time_series")
        if self.target is None and self.task not in ("auto", "anomaly", "generative"):
            raise ValueError(f"data.target: null (no label column) only suits data.task: anomaly or generative; "
                             f"data.task is {self.task}, which needs a target column")
        return self

    @model_validator(mode="after")
    def _time_series(self) -> DataConfig:
        ts = self.time_series
        if ts is None:
            return self
        problems = []
        if ts.target is None:
            ts.target = self.target
        elif "target" in self.model_fields_set and self.target != ts.target:
            problems.append(f"data.target ({self.target!r}) and data.time_series.target ({ts.target!r}) differ; "
                            "give the forecast column once")
        else:
            self.target = ts.target
        if self.task == "classification":
            problems.append("data.task: classification does not apply to a time series (forecasts are regression); "
                            "remove it or set regression")
        if self.max_rows is not None:
            problems.append("data.max_rows samples rows at random, which would break a time series; remove it "
                            "(or cut the file to the period you want)")
        if self.features:
            problems.append("data.features does not apply to a time series: name its numeric covariates in "
                            "data.time_series.features")
        if ts.time in (ts.target, *ts.features) or ts.target in ts.features:
            problems.append(f"data.time_series: the time column ({ts.time!r}), the target ({ts.target!r}) and the "
                            f"features ({ts.features}) must be different columns")
        if problems:
            raise ValueError("; ".join(problems))
        return self
