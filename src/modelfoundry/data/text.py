"""Text columns -> token ids and an attention mask, with the fast (Rust) `tokenizers` library.

The tokenizer is either fitted on the training split (a word-level or WordPiece vocabulary of at most
`max_vocab` entries seen at least `min_freq` times; id 0 is padding, 1 unknown, 2 the separator) or a
pretrained model's own (its tokenizer.json). Several text columns of a row are joined into one text with the
separator. Sequences are cut to `max_length` tokens (from the end or, with `truncation: left`, from the
start) and padded on the right to one length per model: the longest training sequence, at most
`max_length`. Both the tokens and the mask become named inputs (`tokens`, `attention_mask`, int64).

Long documents: with a `stride`, a text longer than `max_length` is not cut but split into overlapping
windows of `max_length` tokens (neighbours share `stride` tokens; each window gets the tokenizer's special
tokens), at most `max_windows` per document (the first ones; with `truncation: left`, the last ones). The
inputs are then (N, W, T): W windows per row, unused ones all padding (mask 0); the model reads every window
and pools their outputs per document (models/windows.py), the same at training, evaluation and serving.

Its saved form is plain JSON - the tokenizer's own JSON plus a few numbers - so preprocess.json stays a
data-only file that any server can apply (`TextEncoder.from_description`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.artifacts.inputs import InputField
from modelfoundry.errors import DataError

if TYPE_CHECKING:
    import pandas as pd
    from tokenizers import Tokenizer

PAD, UNK, SEP = "[PAD]", "[UNK]", "[SEP]"
PAD_CANDIDATES = ("[PAD]", "<pad>", "<|padding|>", "<|endoftext|>")
SEP_CANDIDATES = ("[SEP]", "</s>", "<|endoftext|>")


class TextEncoder:
    """Fit a vocabulary on training texts (or take a pretrained tokenizer), then encode texts to fixed-length
    token ids and masks. The scikit-learn estimator contract: `fit` returns self, learnt state ends in `_`."""

    def __init__(self, columns: Sequence[str], *, max_length: int = 128, truncation: str = "right",
                 tokenizer: str = "word", max_vocab: int = 20000, min_freq: int = 2, lowercase: bool = True,
                 pretrained: str | None = None, stride: int | None = None, max_windows: int = 8,
                 window_pool: str = "mean"):
        self.columns = list(columns)
        self.max_length = max_length
        self.truncation = truncation
        self.tokenizer = tokenizer
        self.max_vocab = max_vocab
        self.min_freq = min_freq
        self.lowercase = lowercase
        self.pretrained = pretrained  # a pretrained tokenizer's JSON (tokenizer.json), or None to fit one
        self.stride = stride  # None: one window per text, cut to max_length
        self.max_windows = max_windows
        self.window_pool = window_pool
        self._tokenizer: Tokenizer | None = None
        self._tokenizer_json: str | None = None  # a described tokenizer, built on first use

    @property
    def tokenizer_(self) -> Tokenizer:
        """The fitted tokenizer (a described one is built from its JSON when first needed: tens of ms)."""
        if self._tokenizer is None:
            if self._tokenizer_json is None:
                raise AttributeError("tokenizer_")
            from tokenizers import Tokenizer

            try:
                self._tokenizer = Tokenizer.from_str(self._tokenizer_json)
            except Exception as exc:  # noqa: BLE001 - the Rust library raises its own exception type
                raise DataError(f"The saved tokenizer cannot be read ({exc}).",
                                "Use a model saved by modelfoundry.") from None
            self._tokenizer_json = None
        return self._tokenizer

    @tokenizer_.setter
    def tokenizer_(self, tokenizer: Tokenizer) -> None:
        self._tokenizer, self._tokenizer_json = tokenizer, None

    # ------------------------------------------------------------------------------------------- fitting
    def fit(self, frame: pd.DataFrame) -> TextEncoder:
        texts = self.texts(frame)
        if self.pretrained is not None:
            from tokenizers import Tokenizer

            self.tokenizer_ = Tokenizer.from_str(self.pretrained)
        else:
            self.tokenizer_ = _train(texts, self.tokenizer, self.max_vocab, self.min_freq, self.lowercase)
        self.tokenizer_.no_padding()
        self.tokenizer_.no_truncation()
        self.pad_id_, self.separator_ = _pad_id(self.tokenizer_), _separator(self.tokenizer_)
        self.windows_ = 1
        encodings = self._encode(texts, self.max_length)
        lengths = [len(e.ids) for e in encodings]
        if self.stride is not None:
            counts = [1 + len(e.overflowing) for e in encodings]
            self.windows_ = max(1, min(self.max_windows, max(counts, default=1)))
            lengths += [len(o.ids) for e in encodings for o in e.overflowing]
        self.length_ = max(1, min(self.max_length, max(lengths, default=1)))
        if self.stride is not None:  # windows as long as the training texts need: the overlap fits in them
            self.stride = min(self.stride, self.length_ // 2)
        self.vocab_size_ = self.tokenizer_.get_vocab_size(with_added_tokens=True)
        return self

    @property
    def windowed(self) -> bool:
        """Whether long texts become several windows (inputs (N, W, T)) rather than one cut sequence."""
        return self.stride is not None

    @classmethod
    def from_description(cls, desc: dict[str, Any]) -> TextEncoder:
        """The fitted encoder of a `describe()` entry (what preprocess.json holds)."""
        windows = desc.get("windows")  # absent: one cut sequence per text (and in models saved before windows)
        encoder = cls(desc["columns"], max_length=int(desc["length"]), truncation=desc["truncation"],
                      stride=None if windows is None else int(windows["stride"]),
                      max_windows=1 if windows is None else int(windows["count"]),
                      window_pool="mean" if windows is None else str(windows["pool"]))
        if not isinstance(desc["tokenizer"], str):
            raise DataError("The saved tokenizer is not the tokenizers library's JSON text.",
                            "Use a model saved by modelfoundry.")
        encoder._tokenizer_json = desc["tokenizer"]  # built when first used: a cached run may never need it
        encoder.pad_id_, encoder.separator_ = int(desc["pad_id"]), str(desc["separator"])
        encoder.length_, encoder.vocab_size_ = int(desc["length"]), int(desc["vocab_size"])
        encoder.windows_ = encoder.max_windows
        return encoder

    def describe(self) -> dict[str, Any]:
        out = {"columns": self.columns, "length": self.length_, "truncation": self.truncation,
               "pad_id": self.pad_id_, "separator": self.separator_, "vocab_size": self.vocab_size_,
               "pretrained": self.pretrained is not None, "tokenizer": self._tokenizer_json or self.tokenizer_.to_str()}
        if self.windowed:
            out["windows"] = {"count": self.windows_, "stride": self.stride, "pool": self.window_pool}
        return out

    def input_fields(self) -> list[InputField]:
        if self.windowed:
            shape: tuple[int, ...] = (self.windows_, self.length_)
            return [InputField("tokens", "int64", shape, self.vocab_size_, pool=self.window_pool),
                    InputField("attention_mask", "int64", shape)]
        return [InputField("tokens", "int64", (self.length_,), self.vocab_size_),
                InputField("attention_mask", "int64", (self.length_,))]

    # ------------------------------------------------------------------------------------------ encoding
    def texts(self, frame: pd.DataFrame, origin: str = "the input") -> list[str]:
        """One text per row: the text columns joined with the separator; a missing cell is empty text."""
        missing = [c for c in self.columns if c not in frame.columns]
        if missing:
            raise DataError(f"{origin} lacks the text column(s) {missing} the model reads.",
                            "Send the same columns as the training data.")
        return self.join([_as_text(frame[c]) for c in self.columns])

    def join(self, columns: list[list[str]]) -> list[str]:
        """Per row, the texts of the text columns (one list per column) joined with the separator."""
        if len(columns) == 1:
            return columns[0]
        separator = f" {getattr(self, 'separator_', SEP)} "
        return [separator.join(row) for row in zip(*columns)]

    def transform(self, frame: pd.DataFrame, origin: str = "the input") -> dict[str, np.ndarray]:
        """{"tokens": (N, length) int64, "attention_mask": (N, length) int64} for the rows of `frame`."""
        return self.encode(self.texts(frame, origin))

    def encode(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """Texts -> ids cut to the model's length and padded on the right with the pad id, and their mask:
        (N, T) each, or (N, W, T) with windows (a row's windows in text order, unused ones all padding)."""
        if not hasattr(self, "length_"):
            raise RuntimeError("This TextEncoder is not fitted yet; call fit() first.")
        n, length = len(texts), self.length_
        shape = (n, self.windows_, length) if self.windowed else (n, length)
        tokens = np.full(shape, self.pad_id_, dtype=np.int64)
        mask = np.zeros(shape, dtype=np.int64)
        for i, encoding in enumerate(self._encode(list(texts), length)):
            if not self.windowed:
                ids = encoding.ids
                tokens[i, :len(ids)] = ids
                mask[i, :len(ids)] = 1
                continue
            for w, window in enumerate(([encoding] + encoding.overflowing)[:self.windows_]):
                ids = window.ids
                tokens[i, w, :len(ids)] = ids
                mask[i, w, :len(ids)] = 1
        return {"tokens": tokens, "attention_mask": mask}

    def _encode(self, texts: list[str], length: int) -> list[Any]:
        """The tokenizer's encodings, truncated to `length` tokens (special tokens included), with the overflow
        as further windows when windowed; fast and parallel in Rust for a batch."""
        try:
            self.tokenizer_.enable_truncation(max_length=length, direction=self.truncation, stride=self.stride or 0)
        except Exception as exc:  # noqa: BLE001 - the Rust library raises its own exception type
            raise DataError(f"Text windows of {length} tokens cannot overlap by data.text.stride={self.stride} "
                            f"tokens ({exc}).", "Use a smaller data.text.stride (a quarter of max_length is "
                            "usual).") from None
        try:
            return self.tokenizer_.encode_batch(texts)
        finally:
            self.tokenizer_.no_truncation()


def _train(texts: list[str], kind: str, max_vocab: int, min_freq: int, lowercase: bool) -> Tokenizer:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

    specials = [PAD, UNK, SEP]  # ids 0, 1, 2
    if kind == "subword":
        tokenizer = Tokenizer(models.WordPiece(unk_token=UNK))
        trainer: Any = trainers.WordPieceTrainer(vocab_size=max_vocab, min_frequency=min_freq, special_tokens=specials,
                                                 show_progress=False)
    else:
        tokenizer = Tokenizer(models.WordLevel(unk_token=UNK))
        trainer = trainers.WordLevelTrainer(vocab_size=max_vocab, min_frequency=min_freq, special_tokens=specials,
                                            show_progress=False)
    steps = [normalizers.NFKC(), normalizers.Lowercase()] if lowercase else [normalizers.NFKC()]
    tokenizer.normalizer = normalizers.Sequence(steps)
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()  # words and runs of punctuation
    tokenizer.train_from_iterator(texts, trainer=trainer, length=len(texts))
    return tokenizer


def _pad_id(tokenizer: Tokenizer) -> int:
    padding = tokenizer.padding
    if padding and padding.get("pad_id") is not None:
        return int(padding["pad_id"])
    for token in PAD_CANDIDATES:
        found = tokenizer.token_to_id(token)
        if found is not None:
            return int(found)
    return 0  # no padding token: the mask alone tells padding apart


def _separator(tokenizer: Tokenizer) -> str:
    return next((t for t in SEP_CANDIDATES if tokenizer.token_to_id(t) is not None), " ")


def valid_text(value: str) -> str:
    """`value` as text the tokenizer takes: a lone surrogate (what JSON's "\\udcff" or Python's surrogateescape
    leave from bytes that were not UTF-8) becomes U+FFFD, as undecodable bytes do."""
    if value.isascii():
        return value
    try:
        value.encode("utf-8")
        return value
    except UnicodeEncodeError:
        pass
    try:  # bytes smuggled in as surrogates (U+DC80..U+DCFF): back to bytes, decoded with replacement
        return value.encode("utf-8", errors="surrogateescape").decode("utf-8", errors="replace")
    except UnicodeEncodeError:  # other lone surrogates
        return value.encode("utf-8", errors="replace").decode("utf-8")


def _as_text(series: pd.Series) -> list[str]:
    """A column as text, missing cells as empty strings; bytes that are not UTF-8 are replaced, not refused."""
    out = []
    for value, missing in zip(series.tolist(), series.isna().to_numpy()):
        if missing:
            out.append("")
        elif type(value) is str and value.isascii():  # the common case, checked without a call
            out.append(value)
        elif isinstance(value, bytes):
            out.append(value.decode("utf-8", errors="replace"))
        else:
            out.append(valid_text(str(value)))
    return out
