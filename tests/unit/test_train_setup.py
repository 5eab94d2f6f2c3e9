"""The loop's builder (train/setup.py): preloaded and streamed batches give the same training, 'auto' picks
streaming for memory-mapped data, and a model of several named typed inputs trains, predicts and exports."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from modelfoundry.artifacts.inputs import InputSpec
from modelfoundry.config import TrainingConfig
from modelfoundry.data.prepare import prepare_data
from modelfoundry.models import build_model
from modelfoundry.train.loop import fit
from modelfoundry.train.runtime import seed_everything
from modelfoundry.train.setup import PreloadedBatches, StreamedBatches, build_setup, choose_loading


def train_iris(make_config, X=None, **training):
    cfg = make_config(training={"epochs": 3, "batch_size": 16, "early_stopping": None, **training},
                      model={"name": "mlp", "hidden": [8], "batch_norm": True, "dropout": 0.2})
    data = prepare_data(cfg.data, cfg.seed)
    seed_everything(cfg.seed, True)
    model = build_model(cfg.model, data.input_spec, data.n_outputs)
    return fit(model, X or data.X, data.y, cfg.training, task=data.task, seed=cfg.seed, progress=False)


def memmapped(X, directory):
    """Every input of every split written to a .npy file and opened memory-mapped (read-only)."""
    out = {}
    for split, inputs in X.items():
        out[split] = {}
        for name, array in inputs.items():
            path = directory / f"{split}-{name}.npy"
            np.save(path, array)
            out[split][name] = np.load(path, mmap_mode="r")
    return out


@pytest.mark.slow  # four short trainings and a DataLoader worker process
def test_streamed_batches_train_exactly_the_model_preloaded_batches_train(make_config, tmp_path):
    preloaded = train_iris(make_config, data_loading="preload")
    streamed = train_iris(make_config, data_loading="stream")
    cfg = make_config()
    on_disk = memmapped(prepare_data(cfg.data, cfg.seed).X, tmp_path)
    assert isinstance(on_disk["train"]["numeric"], np.memmap)
    automatic = train_iris(make_config, X=on_disk)  # auto: memory-mapped data is streamed
    with_worker = train_iris(make_config, X=on_disk, data_loading="stream", loader_workers=1)
    expected = [r["val_loss"] for r in preloaded.history]
    for other in (streamed, automatic, with_worker):
        assert [r["val_loss"] for r in other.history] == expected  # same batches, same order, same arithmetic
        for (name, a), b in zip(preloaded.model.state_dict().items(), other.model.state_dict().values()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert preloaded.history[-1]["train_loss"] < preloaded.history[0]["train_loss"]


def test_auto_preloads_arrays_in_memory_and_streams_memory_mapped_ones(tmp_path):
    cpu = torch.device("cpu")
    in_memory = np.zeros((10, 3), np.float32)
    np.save(tmp_path / "a.npy", in_memory)
    mapped = np.load(tmp_path / "a.npy", mmap_mode="r")
    assert choose_loading("auto", [in_memory], cpu) == "preload"
    assert choose_loading("auto", [in_memory, mapped], cpu) == "stream"
    assert choose_loading("preload", [mapped], cpu) == "preload" and choose_loading("stream", [in_memory], cpu) == "stream"


@pytest.mark.parametrize(("rows", "batch_size", "sizes"), [(10, 4, [4, 4, 2]), (9, 4, [4, 4]), (1, 4, [1]), (8, 4, [4, 4])])
def test_both_kinds_of_batches_cover_the_rows_in_the_same_order(rows, batch_size, sizes):
    x = np.arange(rows * 2, dtype=np.float32).reshape(rows, 2)
    y = torch.arange(rows)
    preloaded = PreloadedBatches((torch.from_numpy(x),), y, batch_size, torch.Generator().manual_seed(3))
    streamed = StreamedBatches((x,), y, batch_size, torch.Generator().manual_seed(3), torch.device("cpu"))
    assert len(preloaded) == len(streamed) == len(sizes)
    for epoch in range(2):  # the generator moves on between epochs, identically for both
        got = [(idx.tolist(), xs[0].tolist(), yb.tolist()) for idx, xs, yb in preloaded]
        assert [(idx.tolist(), xs[0].tolist(), yb.tolist()) for idx, xs, yb in streamed] == got
        assert [len(idx) for idx, _, _ in got] == sizes
        seen = [i for idx, _, _ in got for i in idx]
        assert len(set(seen)) == len(seen) and len(seen) >= rows - 1  # a lone last row waits for the next epoch
        assert all(xs == x[idx].tolist() and yb == idx for idx, xs, yb in got)


class NumericAndTokens(nn.Module):
    """A model of two named inputs: features (B, F) float32 and token ids (B, T) int64."""

    def __init__(self, features: int, vocab: int, n_outputs: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, 4)
        self.head = nn.Linear(features + 4, n_outputs)

    def forward(self, numeric, tokens):  # (B, F), (B, T) -> (B, n_outputs)
        return self.head(torch.cat([numeric, self.embed(tokens).mean(1)], dim=1))


def two_inputs(rows: int, rng: np.random.Generator):
    tokens = rng.integers(0, 10, size=(rows, 5))
    numeric = rng.normal(size=(rows, 3)).astype(np.float32)
    y = (numeric[:, 0] + 1.5 * (tokens == 7).sum(1) - 0.75 > 0).astype(np.int64)  # needs both inputs
    return {"numeric": numeric, "tokens": tokens.astype(np.int64)}, y


@pytest.mark.slow  # ~500 steps and an ONNX export
def test_a_model_of_several_typed_inputs_trains_predicts_and_exports_one_graph_input_each(tmp_path):
    from modelfoundry.export import _batch_dims, _export_model
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.models.onnx_graph import OnnxGraph, ort_session

    spec = InputSpec([*InputSpec.single("numeric", (3,)), *InputSpec.single("tokens", (5,), "int64")])
    rng = np.random.default_rng(0)
    X, y = {}, {}
    for split, rows in (("train", 600), ("val", 200)):
        X[split], y[split] = two_inputs(rows, rng)
        X[split] = spec.check(X[split], f"the {split} split")
    torch.manual_seed(0)
    model = NumericAndTokens(3, 10, 2)
    cfg = TrainingConfig(epochs=25, batch_size=32, optimizer={"lr": 0.03}, early_stopping=None)
    for loading in ("preload", "stream"):
        setup = build_setup(model, X, y, cfg.model_copy(update={"data_loading": loading}), task="classification")
        idx, inputs, targets = next(iter(setup.train))
        assert [t.dtype for t in inputs] == [torch.float32, torch.int64] and inputs[1].shape == (len(idx), 5)
    result = fit(model, X, y, cfg, task="classification", progress=False)
    assert result.history[-1]["val_accuracy"] > 0.9

    proba = predict_outputs(result.model, X["val"], "classification")
    assert proba.shape == (200, 2) and np.allclose(proba.sum(1), 1)
    shuffled = {**X["val"], "tokens": rng.permutation(X["val"]["tokens"])}  # the tokens no longer match the rows
    accuracy = (proba.argmax(1) == y["val"]).mean()
    assert accuracy > (predict_outputs(result.model, shuffled, "classification").argmax(1) == y["val"]).mean() + 0.1

    path = tmp_path / "two.onnx"
    flat, nested = _batch_dims(result.model, spec), _batch_dims(OnnxGraph(path, "regression"), spec)
    assert [list(d) for d in flat] == [[0], [0, 1]] and [list(d) for d in nested[0]] == [[0], [0, 1]]  # tokens: steps
    assert len(nested) == 1
    _export_model(result.model.eval(), spec, path, "logits", None)
    session = ort_session(path)
    assert [(i.name, i.type) for i in session.get_inputs()] == [("numeric", "tensor(float)"), ("tokens", "tensor(int64)")]
    logits = session.run(None, {k: v[:7] for k, v in X["val"].items()})[0]
    expected = result.model(*(torch.from_numpy(v[:7]) for v in spec.arrange(X["val"]))).detach().numpy()
    np.testing.assert_allclose(logits, expected, rtol=0, atol=1e-5)
    graph = OnnxGraph(path, "regression")  # regression: forward returns the graph's output as it is
    np.testing.assert_allclose(graph(*(torch.from_numpy(v[:7]) for v in spec.arrange(X["val"]))).numpy(), expected,
                               rtol=0, atol=1e-5)


class Staged(nn.Module):
    """A body frozen until epoch 3 and trained at a tenth of the rate, a head trained from the start."""

    def __init__(self):
        super().__init__()
        self.body, self.head = nn.Linear(3, 8), nn.Linear(8, 2)
        self.body.requires_grad_(False)
        self.epochs_seen: list[int] = []

    def forward(self, numeric):
        return self.head(torch.relu(self.body(numeric)))

    def parameter_groups(self, lr):
        return [{"params": self.body.parameters(), "lr": lr / 10}, {"params": self.head.parameters(), "lr": lr}]

    def on_epoch_start(self, epoch):
        self.epochs_seen.append(epoch)
        self.body.requires_grad_(epoch >= 3)


def test_a_model_can_bring_its_parameter_groups_and_hear_each_epoch_start(tmp_path):
    rng = np.random.default_rng(0)
    X = {s: {"numeric": rng.normal(size=(64, 3)).astype(np.float32)} for s in ("train", "val")}
    y = {s: (x["numeric"][:, 0] > 0).astype(np.int64) for s, x in X.items()}
    torch.manual_seed(0)
    model = Staged()
    cfg = TrainingConfig(epochs=4, batch_size=16, optimizer={"lr": 0.1, "weight_decay": 0.01}, early_stopping=None)
    setup = build_setup(model, X, y, cfg, task="classification")
    lrs = sorted({g["lr"] for g in setup.optimizer.param_groups})
    assert lrs == pytest.approx([0.01, 0.1])  # the model's groups, each with its own rate
    assert {g["weight_decay"] for g in setup.optimizer.param_groups if g["params"][0].ndim == 1} == {0.0}
    body_before = model.body.weight.detach().clone()

    class Watch:
        changed: list[bool] = []

        def on_epoch_end(self, record):
            self.changed.append(not torch.equal(model.body.weight, body_before))

        def close(self):
            pass

    watch = Watch()
    fit(model, X, y, cfg, task="classification", progress=False, callbacks=[watch])
    assert model.epochs_seen == [1, 2, 3, 4] and watch.changed == [False, False, True, True]  # unfrozen at 3
