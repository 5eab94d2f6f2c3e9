"""The data stage of a causal language model (`data.task: causal_lm`): a table of examples -> token ids whose
labels are the completion (assistant) tokens only.

An example is a conversation: `data.lm.messages` names a column of chat messages, or `data.lm.prompt` and
`data.lm.completion` (each a column name or a template such as "Classify the sentiment of: {text}") make a
user turn and an assistant answer, after `data.lm.system` if set. The conversation is rendered with the chat
template (artifacts/chat.py) and tokenized once; a token carries loss when its characters lie in an assistant
turn (`train_on: completion`, the default) - so the model learns to answer, not to repeat prompts.

Rows are split (stratified when the completions are labels), then each split becomes arrays: `tokens` and
`attention_mask` (N, T), right-padded, and labels (N, T) already shifted (labels[t] is the token after t, or
-100). With `packing`, short examples share rows of max_length tokens. The tokenized splits are cached on disk
like other text (.foundry-cache/tokens/lm-*.npz, data only).
"""

from __future__ import annotations

import io
import json
import string
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from modelfoundry.artifacts.inputs import InputField, InputSpec
from modelfoundry.config import DataConfig, LMDataConfig
from modelfoundry.artifacts.chat import check_messages, render
from modelfoundry.errors import DataError
from modelfoundry.storage import write_bytes_atomic

if TYPE_CHECKING:
    import pandas as pd

    from modelfoundry.data.prepare import PreparedData

IGNORE = -100
LABEL_CLASSES = 20  # completions with at most this many distinct values are labels: the split is stratified on them
CACHE_FORMAT = 1


@dataclass
class Examples:
    conversations: list[list[dict[str, str]]]  # each ends with the assistant's answer
    rows: np.ndarray  # row numbers in the source
    dropped: int  # rows without a usable prompt or answer


class LMFormat:
    """What the data stage did to the examples, saved with the model (preprocess.json) and used to prompt it
    the same way at generation and serving time."""

    def __init__(self, lm: LMDataConfig, length: int, chat_template: str | None, tokenizer: Any = None):
        self.settings = lm.model_dump(mode="json")
        self.tokenizer = tokenizer  # the HF tokenizer the examples were tokenized with (saved with the model)
        self.chat_template = chat_template
        self.input_spec_ = InputSpec([InputField("tokens", "int64", (length,)),
                                      InputField("attention_mask", "int64", (length,))])
        self.columns: list[str] = []
        self.input_shape_ = (length,)

    def describe(self) -> dict[str, Any]:
        return {"kind": "causal_lm", "lm": self.settings, "chat_template": self.chat_template,
                "inputs": self.input_spec_.to_json()}


def read_examples(frame: pd.DataFrame, lm: LMDataConfig, origin: str) -> Examples:
    """The conversations of `frame`'s rows; rows with a missing prompt or answer are dropped (and counted)."""
    conversations, rows, dropped = [], [], 0
    system = [{"role": "system", "content": lm.system}] if lm.system else []
    if lm.messages is not None:
        _need_columns(frame, [lm.messages], origin, "data.lm.messages")
        for row, value in zip(frame.index, frame[lm.messages]):
            if isinstance(value, np.ndarray):  # Parquet gives lists as arrays
                value = value.tolist()
            if isinstance(value, str):
                try:
                    value = json.loads(value)
                except ValueError:
                    raise DataError(f"{origin}, row {row}: column '{lm.messages}' is not a JSON list of messages.",
                                    'Write each row as [{"role": "user", "content": "..."}, ...].') from None
            messages = check_messages(value, f"{origin}, row {row}")
            if messages[-1]["role"] != "assistant":
                raise DataError(f"{origin}, row {row}: the conversation ends with a {messages[-1]['role']} "
                                "message; a training example ends with the assistant's answer.",
                                "Add the answer, or drop the row.")
            conversations.append((system if messages[0]["role"] != "system" else []) + messages)
            rows.append(row)
        return Examples(conversations, np.asarray(rows, dtype=np.int64), 0)
    prompt, completion = _field(frame, lm.prompt, origin, "prompt"), _field(frame, lm.completion, origin, "completion")
    for row, (p, c) in enumerate(zip(prompt, completion)):
        if p is None or c is None or not c.strip():
            dropped += 1
            continue
        conversations.append([*system, {"role": "user", "content": p}, {"role": "assistant", "content": c}])
        rows.append(frame.index[row])
    if not conversations:
        raise DataError(f"{origin} has no row with both a prompt and a completion ({dropped} rows without).",
                        "Check data.lm.prompt and data.lm.completion (column names or templates).")
    return Examples(conversations, np.asarray(rows, dtype=np.int64), dropped)


def _as_json(value: Any) -> Any:
    if isinstance(value, np.ndarray):
        value = value.tolist()
    return json.dumps(value, default=str, sort_keys=True) if isinstance(value, (list, dict)) else value


def _field(frame: pd.DataFrame, spec: str, origin: str, key: str) -> list[str | None]:
    """One text per row: the column `spec`, or the template `spec` filled from each row's columns."""
    fields = [name for _, name, _, _ in string.Formatter().parse(spec) if name is not None] \
        if "{" in spec else None
    if fields is None:
        _need_columns(frame, [spec], origin, f"data.lm.{key}")
        return [None if _missing(v) else str(v) for v in frame[spec]]
    if any(not f for f in fields):
        raise DataError(f"data.lm.{key} {spec!r} has an empty placeholder {{}}.",
                        "Name a column inside the braces, for example {text}; write {{ and }} for literal braces.")
    _need_columns(frame, fields, origin, f"data.lm.{key}")
    columns = {f: frame[f].tolist() for f in dict.fromkeys(fields)}
    out: list[str | None] = []
    for i in range(len(frame)):
        values = {f: columns[f][i] for f in columns}
        out.append(None if any(_missing(v) for v in values.values()) else spec.format_map(
            {f: str(v) for f, v in values.items()}))
    return out


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _need_columns(frame: pd.DataFrame, names: list[str], origin: str, key: str) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise DataError(f"{key} names column(s) {', '.join(repr(m) for m in missing)}, which {origin} does not have "
                        f"(columns: {', '.join(map(str, frame.columns[:20]))}).",
                        f"Fix {key}: a column name, or a template such as \"Answer: {{question}}\".")


def encode(tokenizer: Any, conversations: list[list[dict[str, str]]], lm: LMDataConfig,
           origin: str) -> tuple[list[np.ndarray], list[np.ndarray], int]:
    """(token ids, loss mask) per example, cut to max_length; examples whose answer is cut off entirely are
    kept with an empty mask (they are dropped by `assemble`). Returns the number of examples that were cut."""
    texts, spans = [], []
    for messages in conversations:
        full = render(tokenizer, messages, lm.template, add_generation_prompt=False)
        turns = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant" and lm.train_on == "completion":
                continue
            start = len(render(tokenizer, messages[:i], lm.template, True)) if i and lm.train_on == "completion" else 0
            upto = render(tokenizer, messages[:i + 1], lm.template, False)
            if lm.train_on == "completion" and not full.startswith(upto):
                raise DataError(f"{origin}: the chat template renders a conversation differently from its beginning, "
                                "so the answer tokens cannot be found.", "Set data.lm.template: chatml or plain.")
            turns.append((start, len(upto)))
        texts.append(full)
        spans.append(turns)
    encoded = tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True)
    ids_out, masks_out, cut = [], [], 0
    for ids, offsets, turns in zip(encoded["input_ids"], encoded["offset_mapping"], spans):
        ids = np.asarray(ids, dtype=np.int64)
        starts = np.asarray([o[0] for o in offsets]) if len(offsets) else np.zeros(0)
        ends = np.asarray([o[1] for o in offsets]) if len(offsets) else np.zeros(0)
        mask = np.zeros(len(ids), dtype=bool)
        for a, b in turns:
            mask |= (ends > a) & (starts < b)
        if len(ids) > lm.max_length:
            cut += 1
            ids, mask = ids[:lm.max_length], mask[:lm.max_length]
        ids_out.append(ids)
        masks_out.append(mask)
    return ids_out, masks_out, cut


def shifted_labels(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """labels[t] = ids[t + 1] where token t + 1 carries loss, else IGNORE; the last position is IGNORE."""
    labels = np.full(len(ids), IGNORE, dtype=np.int64)
    labels[:-1] = np.where(mask[1:], ids[1:], IGNORE)
    return labels


def assemble(ids: list[np.ndarray], masks: list[np.ndarray], length: int, pad_id: int,
             packing: bool) -> dict[str, np.ndarray]:
    """Rows of `length` tokens: one example each (right-padded), or with `packing` as many whole examples as
    fit, one after another. Examples without a labelled token are left out."""
    pieces = [(i, shifted_labels(i, m)) for i, m in zip(ids, masks)]
    pieces = [(i, lab) for i, lab in pieces if (lab != IGNORE).any()]
    rows: list[list[tuple[np.ndarray, np.ndarray]]] = []
    used = length + 1
    for piece in pieces:
        if packing and rows and used + len(piece[0]) <= length:
            rows[-1].append(piece)
            used += len(piece[0])
        else:
            rows.append([piece])
            used = len(piece[0])
    n = len(rows)
    tokens = np.full((n, length), pad_id, dtype=np.int64)
    attention = np.zeros((n, length), dtype=np.int64)
    labels = np.full((n, length), IGNORE, dtype=np.int64)
    for r, row in enumerate(rows):
        at = 0
        for piece_ids, piece_labels in row:
            tokens[r, at:at + len(piece_ids)] = piece_ids
            labels[r, at:at + len(piece_ids)] = piece_labels
            at += len(piece_ids)
        attention[r, :at] = 1
    return {"tokens": tokens, "attention_mask": attention, "labels": labels}


def prepare_lm(cfg: DataConfig, seed: int, tokenizer: Any) -> PreparedData:
    """The whole data stage of a causal LM: examples, split, tokenized (or from the cache) arrays per split."""
    from modelfoundry.data.fingerprint import fingerprint
    from modelfoundry.data.prepare import PreparedData, SPLITS
    from modelfoundry.data.sources import describe_source, load_source
    from modelfoundry.data.split import split_indices

    lm, origin = cfg.lm, str(cfg.source)
    frame = load_source(cfg.source)
    plain = frame.map(_as_json) if lm.messages else frame  # message lists hash as their JSON text
    info: dict[str, Any] = {"fingerprint": fingerprint(plain, plain.columns[0], "causal_lm", describe_source(origin))}
    examples = read_examples(frame, lm, origin)
    order = np.arange(len(examples.conversations))
    if cfg.max_rows is not None and len(order) > cfg.max_rows:
        order = np.sort(np.random.default_rng(seed).choice(len(order), cfg.max_rows, replace=False))
    references = [examples.conversations[i][-1]["content"].strip() for i in order]
    labels = sorted(set(references))
    stratify = cfg.split.stratify and len(labels) <= LABEL_CLASSES and len(order) >= 20
    try:
        positions = split_indices(np.asarray(references, dtype=object), cfg.split.val, cfg.split.test, stratify, seed)
    except DataError:
        positions = split_indices(np.asarray(references, dtype=object), cfg.split.val, cfg.split.test, False, seed)
    parts = {s: order[positions[s]] for s in SPLITS}
    arrays, stats = _tokenized(tokenizer, examples, parts, lm, info["fingerprint"]["sha256"])
    length = max(a["tokens"].shape[1] for a in arrays.values())
    X, y = {}, {}
    for split in SPLITS:
        a = _pad_to(arrays[split], length, tokenizer.pad_token_id)
        X[split] = {"tokens": a["tokens"], "attention_mask": a["attention_mask"]}
        y[split] = a["labels"]
        if not len(y[split]):
            raise DataError(f"The {split} split of {origin} has no example with an answer token left.",
                            "Use more rows, larger data.split fractions, or a larger data.lm.max_length.")
    info["split"] = {"seed": seed, "stratified": bool(stratify), **{s: int(len(parts[s])) for s in SPLITS}}
    info["lm"] = {"examples": len(examples.conversations), "dropped_rows": examples.dropped,
                  "labels": labels if len(labels) <= LABEL_CLASSES else None, "length": int(length), **stats}
    fmt = LMFormat(lm, length, getattr(tokenizer, "chat_template", None), tokenizer)
    info["inputs"] = fmt.input_spec_.to_json()
    held_out = {s: [{"messages": examples.conversations[i][:-1],
                     "reference": examples.conversations[i][-1]["content"], "row": int(examples.rows[i])}
                    for i in parts[s]] for s in ("val", "test")}
    rows = {s: examples.rows[parts[s]] for s in SPLITS}
    return PreparedData("causal_lm", X, y, rows, fmt, None, None, info, None, references=held_out)


def _tokenized(tokenizer: Any, examples: Examples, parts: dict[str, np.ndarray], lm: LMDataConfig,
               sha256: str) -> tuple[dict[str, dict[str, np.ndarray]], dict[str, Any]]:
    """Each split's arrays, from the cache when the same data, settings, tokenizer and rows were tokenized before."""
    from modelfoundry.data.cache import cache_dir

    key = _cache_key(tokenizer, lm, sha256, parts)
    path = cache_dir() / f"lm-{key}.npz"
    if lm.cache and path.is_file():
        try:
            with np.load(path, allow_pickle=False) as data:
                stats = json.loads(str(data["stats"]))
                arrays = {s: {k: data[f"{s}.{k}"].astype(np.int64) for k in ("tokens", "attention_mask", "labels")}
                          for s in parts}
            return arrays, {**stats, "cache_hit": True}
        except (OSError, ValueError, KeyError):
            pass
    arrays, cut = {}, 0
    for split, index in parts.items():
        ids, masks, n_cut = encode(tokenizer, [examples.conversations[i] for i in index], lm, f"the {split} split")
        cut += n_cut
        longest = max((len(i) for i in ids), default=1)
        arrays[split] = assemble(ids, masks, lm.max_length if lm.packing else longest,
                                 tokenizer.pad_token_id, lm.packing)
    tokens = int(sum(a["attention_mask"].sum() for a in arrays.values()))
    stats = {"cut_examples": cut, "tokens": tokens,
             "answer_tokens": int(sum((a["labels"] != IGNORE).sum() for a in arrays.values()))}
    if lm.cache:
        flat = {f"{s}.{k}": v.astype(np.int32) for s, a in arrays.items() for k, v in a.items()}
        buffer = io.BytesIO()
        np.savez(buffer, stats=np.asarray(json.dumps(stats)), **flat)
        try:
            write_bytes_atomic(path, buffer.getvalue())
        except OSError:  # a read-only or full disk: the run goes on without a cache
            pass
    return arrays, {**stats, "cache_hit": False}


def _cache_key(tokenizer: Any, lm: LMDataConfig, sha256: str, parts: dict[str, np.ndarray]) -> str:
    """The entry name: the text cache's key (data, settings, rows of each split) with the tokenizer described by
    a sample of its vocabulary, its special tokens and chat template (cheap, and what the ids depend on)."""
    from modelfoundry.data.cache import cache_key

    vocab = sorted(tokenizer.get_vocab().items())[:50_000:97]
    identity = json.dumps({"vocab": len(tokenizer), "sample": vocab, "eos": tokenizer.eos_token,
                           "pad": tokenizer.pad_token_id, "template": getattr(tokenizer, "chat_template", None)})
    settings = {"lm": lm.model_dump(mode="json"), "lm_format": CACHE_FORMAT, "pretrained": identity}
    return cache_key(sha256, settings, [], parts)


def _pad_to(arrays: dict[str, np.ndarray], length: int, pad_id: int) -> dict[str, np.ndarray]:
    have = arrays["tokens"].shape[1]
    if have == length:
        return arrays
    extra = length - have
    return {"tokens": np.pad(arrays["tokens"], ((0, 0), (0, extra)), constant_values=pad_id),
            "attention_mask": np.pad(arrays["attention_mask"], ((0, 0), (0, extra))),
            "labels": np.pad(arrays["labels"], ((0, 0), (0, extra)), constant_values=IGNORE)}
