"""Named, typed model inputs: the contract between the data stage, the models, the loop, export and serving.

It lives with the artifacts (not in data/) because it is part of what a saved model records (model.json
`inputs`), and every stage, the records included, reads it.

A model takes one or more named inputs, each an array with a batch dimension first:

    numeric         float32 (B, F)          tabular features after preprocessing
    image           float32 (B, C, H, W)    pixels after scaling
    tokens          int64   (B, T)          token ids (text models); `vocab_size` ids, 0..vocab_size-1
    attention_mask  int64   (B, T)          1 for a real token, 0 for padding
    series          float32 (B, T, F)       a window of a time series (F values per step)

Long texts split into windows (data.text.stride) give `tokens` and `attention_mask` of shape (B, W, T): W
windows of T tokens per row; the tokens field then says how the windows' outputs are pooled (`pool`).

An `InputSpec` lists them in order (name, dtype, one row's shape). It is saved with the model (model.json
`inputs`), gives the ONNX graph one input per name, and tells the server and `predict` what to build. A
batch of inputs (`Inputs`) is a plain dict name -> array in the spec's order; a model's `forward` takes the
arrays as arguments in that order (`model(*spec.arrange(batch))`), so a single-input model is an ordinary
`nn.Module` over one tensor.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from modelfoundry.errors import DataError, RunDirError

if TYPE_CHECKING:  # numpy is imported where arrays are handled: validating a config reads the model table,
    import numpy as np  # which names InputSpec, and must stay light

Inputs = dict[str, "np.ndarray"]  # name -> (N, *shape) array, in the spec's order; the same N for every name

DTYPES = ("float32", "int64")
KNOWN = {"numeric": "float32", "image": "float32", "tokens": "int64", "attention_mask": "int64"}


@dataclass(frozen=True)
class InputField:
    """One named input: its dtype, one row's shape (no batch dimension) and, for token ids, how many ids
    there are (an embedding's size)."""

    name: str
    dtype: str
    shape: tuple[int, ...]
    vocab_size: int | None = None  # int64 id inputs (tokens): ids run 0..vocab_size-1
    pool: str | None = None  # windowed tokens (W, T): "mean" or "max" of the windows' outputs per row

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.vocab_size is not None:
            out["vocab_size"] = self.vocab_size
        return {**out, "pool": self.pool} if self.pool is not None else out


class InputSpec(Sequence[InputField]):
    """The ordered named inputs of a model."""

    def __init__(self, fields: Iterable[InputField]):
        self.fields = tuple(fields)
        names = [f.name for f in self.fields]
        if not names or len(set(names)) != len(names):
            raise ValueError(f"An input spec needs one or more inputs with distinct names, got {names}.")

    @classmethod
    def single(cls, name: str, shape: Sequence[int], dtype: str = "float32") -> InputSpec:
        return cls([InputField(name, dtype, tuple(int(d) for d in shape))])

    @classmethod
    def for_shape(cls, shape: Sequence[int]) -> InputSpec:
        """The spec of a model from before named inputs: one float32 input, `image` for (C, H, W) rows,
        else `numeric`."""
        return cls.single("image" if len(shape) == 3 else "numeric", shape)

    @classmethod
    def from_json(cls, data: Any, origin: str = "the input spec") -> InputSpec:
        """An `InputSpec` from its JSON list; a malformed one is a RunDirError naming `origin`."""
        try:
            fields = [InputField(str(d["name"]), str(d["dtype"]), tuple(d["shape"]), d.get("vocab_size"), d.get("pool"))
                      for d in data]
            spec = cls(fields)
        except (TypeError, KeyError, ValueError) as exc:
            raise RunDirError(f"{origin} holds a malformed input spec ({exc}); each input needs a name, a dtype "
                              f"({' or '.join(DTYPES)}) and a shape.", "Use a model saved by modelfoundry.") from None
        for f in spec:
            vocab_ok = f.vocab_size is None or isinstance(f.vocab_size, int) and not isinstance(f.vocab_size, bool) \
                and f.vocab_size > 0 and f.dtype == "int64"
            vocab_ok = vocab_ok and f.pool in (None, "mean", "max")
            if f.dtype not in DTYPES or not vocab_ok or not all(isinstance(d, int) and not isinstance(d, bool) and d > 0
                                                                for d in f.shape):
                raise RunDirError(f"{origin} holds a malformed input spec: input '{f.name}' has dtype {f.dtype!r}, "
                                  f"shape {list(f.shape)} and vocab_size {f.vocab_size!r}; dtypes are "
                                  f"{', '.join(DTYPES)}, shapes positive whole numbers, and a vocab_size (int64 "
                                  "inputs only) a positive whole number.", "Use a model saved by modelfoundry.")
        return spec

    def to_json(self) -> list[dict[str, Any]]:
        return [f.to_json() for f in self.fields]

    # ------------------------------------------------------------------------------------- Sequence
    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, str):
            for f in self.fields:
                if f.name == key:
                    return f
            raise KeyError(key)
        return self.fields[key]

    def __len__(self) -> int:
        return len(self.fields)

    def __iter__(self) -> Iterator[InputField]:
        return iter(self.fields)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, InputSpec) and self.fields == other.fields

    def __hash__(self) -> int:
        return hash(self.fields)

    def __repr__(self) -> str:
        return "InputSpec(" + ", ".join(f"{f.name}: {f.dtype} {list(f.shape)}" for f in self.fields) + ")"

    def with_field(self, field: InputField) -> InputSpec:
        """This spec with `field` added at the end."""
        return InputSpec([*self.fields, field])

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.fields]

    def window_pool(self) -> str | None:
        """How the windows of long texts are pooled ("mean" / "max") when token inputs are windowed (W, T)."""
        return next((f.pool for f in self.fields if f.name == "tokens" and len(f.shape) == 2), None)

    def per_window(self) -> InputSpec:
        """The spec a model sees for one window: windowed token inputs (W, T) as (T,), the rest unchanged."""
        return InputSpec([InputField(f.name, f.dtype, f.shape[1:], f.vocab_size)
                          if f.name in ("tokens", "attention_mask") and len(f.shape) == 2 else f for f in self.fields])

    # ------------------------------------------------------------------------------------- batches
    def arrange(self, batch: Mapping[str, Any]) -> tuple[Any, ...]:
        """The arrays of `batch` in the spec's order: the positional arguments of the model."""
        return tuple(batch[name] for name in self.names)

    def example(self, rows: int, seed: int | None = None) -> Inputs:
        """A batch of `rows` rows: standard-normal floats (zeros without `seed`), zero token ids, an
        attention mask of ones."""
        import numpy as np

        rng = np.random.default_rng(seed) if seed is not None else None
        out: Inputs = {}
        for f in self.fields:
            if f.dtype == "int64":
                fill = 1 if f.name == "attention_mask" else 0
                out[f.name] = np.full((rows, *f.shape), fill, dtype=np.int64)
            elif rng is not None:
                out[f.name] = rng.standard_normal((rows, *f.shape)).astype(np.float32)
            else:
                out[f.name] = np.zeros((rows, *f.shape), dtype=np.float32)
        return out

    def check(self, batch: Mapping[str, Any], origin: str = "the input") -> Inputs:
        """`batch` as the model takes it: every named input present, of its dtype and row shape, the same
        number of rows in each; anything else is a DataError naming the input."""
        import numpy as np

        missing = [n for n in self.names if n not in batch]
        if missing:
            raise DataError(f"{origin} lacks the model input(s) {missing}; the model takes {self.names}.",
                            "Build inputs with the model's preprocessing (or InputSpec.example).")
        out: Inputs = {}
        for f in self.fields:
            array = np.asarray(batch[f.name])
            if array.shape[1:] != f.shape:
                raise DataError(f"Model input '{f.name}' of {origin} has rows of shape {list(array.shape[1:])}; "
                                f"the model takes {list(f.shape)}.", "Send rows of the shape the model was trained on.")
            if np.dtype(f.dtype).kind == "f" and array.dtype.kind not in "fiub" or \
                    np.dtype(f.dtype).kind == "i" and array.dtype.kind not in "iub":
                raise DataError(f"Model input '{f.name}' of {origin} is {array.dtype}; the model takes {f.dtype}.",
                                "Send numbers of that type.")
            out[f.name] = np.require(array, dtype=f.dtype, requirements=["C"])
        rows = {len(a) for a in out.values()}
        if len(rows) > 1:
            raise DataError(f"The model inputs of {origin} have different numbers of rows "
                            f"({ {n: len(a) for n, a in out.items()} }).", "Send the same rows for every input.")
        return out


def rows_of(batch: Mapping[str, Any]) -> int:
    """The number of rows of a batch of inputs."""
    return len(next(iter(batch.values())))


def take(batch: Mapping[str, Any], rows: Any) -> Inputs:
    """The rows `rows` (a slice, positions or a mask) of every input."""
    return {name: array[rows] for name, array in batch.items()}


def concat(parts: Sequence[Mapping[str, np.ndarray]]) -> Inputs:
    """Batches of the same inputs, one after another."""
    if len(parts) == 1:
        return dict(parts[0])
    import numpy as np

    return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}


def features_matrix(batch: Mapping[str, np.ndarray]) -> np.ndarray:
    """(N, D) float: the float inputs flattened side by side; what a scikit-learn baseline is fitted on."""
    import numpy as np

    floats = [a.reshape(len(a), -1) for a in batch.values() if a.dtype.kind == "f"]
    if not floats:
        return np.zeros((rows_of(batch), 0), dtype=np.float32)
    return floats[0] if len(floats) == 1 else np.hstack(floats)



class PaddingTrim:
    """Cut a batch of token inputs to its longest real sequence: padding past it (right-padded, masked) changes
    nothing a masked model computes, and costs as much as real tokens. Short texts padded to a long
    max_length train several times faster. Only for models that say so (`padding_invariant = True`: their
    outputs do not depend on padding, e.g. they mask attention and pooling); others see the full length."""

    def __init__(self, mask: int, sequences: list[int]):
        self.mask, self.sequences = mask, sequences  # positions of attention_mask and of the (B, T, ...) inputs

    def __call__(self, inputs: tuple[Any, ...]) -> tuple[Any, ...]:  # tensors or arrays, in spec order
        mask = inputs[self.mask]  # (B, T), or (B, W, T) for windows of long texts (used windows first)
        if not len(mask):
            return inputs
        length = max(1, int(mask.sum(-1).max()))
        windows = max(1, int((mask.sum(-1) > 0).sum(1).max())) if mask.ndim == 3 else None
        if length >= mask.shape[-1] and (windows is None or windows >= mask.shape[1]):
            return inputs
        cut = (slice(None), slice(None, windows)) if windows is not None else (slice(None),)
        return tuple(x[(*cut, slice(None, length))] if i in self.sequences else x for i, x in enumerate(inputs))


def padding_trim(names: list[str]) -> PaddingTrim | None:
    """The trim for inputs named `names`: tokens and attention_mask are cut together; None without a mask."""
    if "attention_mask" not in names:
        return None
    return PaddingTrim(names.index("attention_mask"), [names.index(n) for n in ("tokens", "attention_mask")
                                                       if n in names])
