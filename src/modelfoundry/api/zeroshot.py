"""`zeroshot`: classify texts with a pretrained encoder and no training, by embedding similarity.

Each label becomes a sentence (`template`, e.g. "This text is positive."); each text and each label sentence
is embedded by the encoder (attention-masked mean of the last hidden states, L2-normalised, as sentence
encoders such as all-MiniLM-L6-v2 are trained to be used), and a text's class probabilities are the softmax
of its cosine similarities to the labels over a temperature. With a target column the predictions are scored
like any model's: the zero-shot baseline a fine-tune must beat.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from modelfoundry.reporting import Reporter

TEMPERATURE = 0.05  # cosine similarities are close together; this spreads them into usable probabilities


@dataclass
class ZeroShotResult:
    predictions: pd.DataFrame  # prediction + prob_<label> per row, in the data's order
    labels: list[str]
    metrics: dict[str, float] = field(default_factory=dict)  # when the data has the target column
    text_column: str = ""
    rows: int = 0
    wall_s: float = 0.0


def zeroshot(model: str | Path, data: str | Path, labels: list[str], *, text_column: str | None = None,
             target: str | None = None, template: str = "This text is {}.", max_length: int = 128,
             batch_size: int = 64, progress: Reporter | bool | None = None) -> ZeroShotResult:
    """Zero-shot classification of the texts in `data` (a file or a bundled source) into `labels`.

    Args:
        model: a local Hugging Face encoder directory, or a short name (`minilm`).
        text_column: the column of texts; default the only text-like column.
        target: a column of true labels to score against (values compared with `labels` case-insensitively);
            default `target`, `label`, `sentiment` or `class` when present.
        template: how a label becomes a sentence; `{}` is replaced by the label.
    """
    import numpy as np

    from modelfoundry.data.sources import load_source
    from modelfoundry.reporting import reporter_for

    started = time.perf_counter()
    labels = [label.strip() for label in labels if label.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ConfigError(f"Zero-shot classification needs two or more distinct labels, got {labels}.",
                          'Pass --labels "positive,negative,neutral".')
    if "{}" not in template:
        raise ConfigError(f"The template must contain {{}} where the label goes, got {template!r}.",
                          'Use e.g. --template "This review is {}."')
    frame = load_source(str(data))
    column = _text_column(frame, text_column, str(data))
    truth = _target_column(frame, target, column)
    encoder = _Encoder(model, max_length)
    reporter = reporter_for(progress)
    if reporter:
        reporter.start("zero-shot", len(frame))
    label_vectors = encoder.embed([template.format(label) for label in labels])  # (K, D)
    texts = ["" if v is None or v != v else str(v) for v in frame[column].tolist()]
    parts = []
    for start in range(0, len(texts), batch_size):
        parts.append(encoder.embed(texts[start:start + batch_size]) @ label_vectors.T)  # (B, K)
        if reporter:
            reporter.advance(min(start + batch_size, len(texts)))
    if reporter:
        reporter.finish()
    similarity = np.concatenate(parts) if parts else np.zeros((0, len(labels)))
    scaled = similarity / TEMPERATURE
    proba = np.exp(scaled - scaled.max(axis=1, keepdims=True))
    proba /= proba.sum(axis=1, keepdims=True)
    predictions = _table(frame.index, labels, proba)
    result = ZeroShotResult(predictions, labels, text_column=column, rows=len(frame))
    if truth is not None:
        result.metrics = _score(frame[truth], labels, proba, str(data))
    result.wall_s = time.perf_counter() - started
    return result


class _Encoder:
    """A pretrained encoder and its tokenizer; `embed(texts)` gives (N, D) unit vectors."""

    def __init__(self, model: str | Path, max_length: int):
        import torch

        from modelfoundry.models.pretrained import load_encoder, load_tokenizer, resolve_path

        path = resolve_path(str(model))
        self.tokenizer = load_tokenizer(path)
        self.tokenizer.no_padding()
        self.tokenizer.enable_truncation(max_length=max_length)
        self.model = load_encoder(path).eval()
        self.torch = torch

    def embed(self, texts: list[str]) -> np.ndarray:
        import numpy as np

        torch = self.torch
        encodings = self.tokenizer.encode_batch(texts)
        length = max((len(e.ids) for e in encodings), default=1)
        ids = np.zeros((len(texts), length), dtype=np.int64)
        mask = np.zeros((len(texts), length), dtype=np.int64)
        for i, e in enumerate(encodings):
            ids[i, :len(e.ids)], mask[i, :len(e.ids)] = e.ids, 1
        with torch.inference_mode():
            ids_t, mask_t = torch.from_numpy(ids), torch.from_numpy(mask)
            hidden = self.model(input_ids=ids_t, attention_mask=mask_t).last_hidden_state  # (N, T, D)
            from modelfoundry.models.layers import masked_mean

            return torch.nn.functional.normalize(masked_mean(hidden, mask_t), dim=1).numpy()  # (N, D)


def _text_column(frame: pd.DataFrame, wanted: str | None, origin: str) -> str:
    if wanted is not None:
        if wanted not in frame.columns:
            from modelfoundry.errors import did_you_mean

            raise DataError(f"{origin} has no column '{wanted}'.{did_you_mean(wanted, frame.columns)}",
                            f"Columns: {', '.join(map(str, frame.columns[:12]))}.")
        return wanted
    import pandas as pd

    texts = [c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c]) and frame[c].notna().any()
             and frame[c].dropna().astype(str).str.split().str.len().median() >= 3]
    if len(texts) != 1:
        raise DataError(f"{origin} has {'no' if not texts else 'several'} text column(s) "
                        f"({', '.join(map(str, texts)) or 'none with several words per value'}).",
                        "Name the column of texts with --text-column.")
    return texts[0]


def _target_column(frame: pd.DataFrame, wanted: str | None, text: str) -> str | None:
    if wanted is not None:
        if wanted not in frame.columns:
            raise DataError(f"The data has no target column '{wanted}'.", "Leave --target out to only predict.")
        return wanted
    return next((c for c in ("target", "label", "sentiment", "class") if c in frame.columns and c != text), None)


def _table(index: Any, labels: list[str], proba: np.ndarray) -> pd.DataFrame:
    import pandas as pd

    table = pd.DataFrame({"prediction": [labels[k] for k in proba.argmax(axis=1)]}, index=index)
    for k, label in enumerate(labels):
        table[f"prob_{label}"] = proba[:, k]
    return table


def _score(truth: pd.Series, labels: list[str], proba: np.ndarray, origin: str) -> dict[str, float]:
    """Classification metrics of the predictions against the target (labels matched case-insensitively)."""
    import numpy as np

    from modelfoundry.evaluate.metrics import classification_metrics

    index = {label.lower(): k for k, label in enumerate(labels)}
    keep = truth.notna().to_numpy()
    codes = np.array([index.get(str(v).strip().lower(), -1) for v in truth[keep]])
    if (codes < 0).any():
        unknown = sorted({str(v) for v, c in zip(truth[keep], codes) if c < 0})[:5]
        raise DataError(f"The target column of {origin} has values {unknown} that are not among the labels "
                        f"{labels}.", "Pass every class as a label (they are matched case-insensitively).")
    return classification_metrics(codes, proba[keep], [])
