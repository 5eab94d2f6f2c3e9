"""The compression variant table (compress/variants.py): what the search tries comes from its entries, in
the order and with the recipes the if-chains it replaced produced; a new family is one builder + one entry."""

from __future__ import annotations

import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from modelfoundry.artifacts.inputs import InputSpec
from modelfoundry.compress import variants as table
from modelfoundry.compress.search import Bench, Variant
from modelfoundry.compress.variants import COMPRESSORS, STAGES, VARIANTS, Candidate, Family, Sofar, families
from modelfoundry.config import CompressConfig, load_config
from tests.conftest import tiny_config

MLP = ({"name": "mlp", "hidden": [8, 4]}, (4,))
CNN = ({"name": "cnn", "channels": [4, 8]}, (1, 8, 8))


def bench_for(model: dict, input_shape: tuple[int, ...], variants: list[str] | None = None) -> Bench:
    """A Bench over an untrained model (listing candidates builds nothing)."""
    from modelfoundry.models import build_model

    cfg = load_config(tiny_config(seed=3, model=model))
    spec = InputSpec.for_shape(input_shape)
    saved = SimpleNamespace(task="classification", record=SimpleNamespace(input_spec=spec, n_outputs=3),
                            config=cfg, model=build_model(cfg.model, spec, 3), run_dir=Path("/nowhere"))
    X = spec.example(40, seed=0)
    splits = {"X": {"train": X, "val": X}, "y": {"train": np.zeros(40), "val": np.zeros(40)}}
    compress = CompressConfig(variants=variants or list(COMPRESSORS), keep=[0.5, 0.25], sparsity=[0.5, 0.8])
    bench = Bench(saved, splits, "accuracy", compress, Path("/nowhere"))
    bench.original_metrics = {"accuracy": 1.0, "log_loss": 0.1, "ece": 0.01}
    return bench


def listing(bench: Bench) -> list[tuple[str, str, dict]]:
    """(stage, name, recipe) of every candidate, with one network variant that passed the guard."""
    passed = Variant("prune_structured_keep0.5", "onnxruntime", {"method": "prune_structured", "keep": 0.5},
                     metric=1.0, run_dir=Path("/r"), metrics={"accuracy": 1.0, "log_loss": 0.1, "ece": 0.01})
    sofar = Sofar(Path("/x.onnx"), [passed])
    return [(stage, c.name, c.recipe) for stage in STAGES for _, f in families(stage, bench)
            for c in f.candidates(bench, sofar)]


# the search's candidates before the table, recorded from the if-chains (same names, order and stage)
BEFORE = [("graph", "ort_fp16"), ("graph", "ort_int8_dynamic"), ("graph", "ort_int8_static_qdq"),
          ("graph", "ort_int8_static_qoperator"), ("network", "prune_structured_keep0.5"),
          ("network", "prune_structured_keep0.25"), ("network", "prune_unstructured_0.5"),
          ("network", "prune_unstructured_0.8"), ("network", "distill"), ("stacked", "prune_structured_keep0.5+int8"),
          ("torch", "torch_fp32"), ("torch", "torch_bf16"), ("torch", "torch_int8_eager (deprecated API)"),
          ("torch", "pt2e_int8")]


@pytest.mark.parametrize("model", [MLP, CNN], ids=["mlp", "cnn"])
def test_the_table_lists_what_the_if_chains_did(model):
    got = listing(bench_for(*model))
    assert [(stage, name) for stage, name, _ in got] == BEFORE
    recipes = {name: recipe for _, name, recipe in got}
    assert recipes["ort_int8_static_qoperator"] == {"method": "ort_int8_static", "format": "qoperator",
                                                    "activation": "uint8", "per_channel": True,
                                                    "calibration_rows": 40}
    assert recipes["prune_unstructured_0.8"] == {"method": "prune_unstructured", "sparsity": 0.8,
                                                 "finetune_epochs": 10}
    assert recipes["torch_fp32"] == {"method": "none", "note": "eager PyTorch, for reference"}


def test_stacked_int8_is_static_qdq_on_convolutions_and_dynamic_otherwise():
    cnn = {name: recipe for _, name, recipe in listing(bench_for(*CNN))}["prune_structured_keep0.5+int8"]
    mlp = {name: recipe for _, name, recipe in listing(bench_for(*MLP))}["prune_structured_keep0.5+int8"]
    assert cnn["steps"][1] == {"method": "ort_int8_static", "format": "qdq", "activation": "uint8"}
    assert mlp["steps"][1] == {"method": "ort_int8_dynamic"}
    # the int8 kind that suits the model was not asked for: nothing is stacked
    assert not [n for _, n, _ in listing(bench_for(*CNN, variants=["ort_int8_dynamic"])) if n.endswith("+int8")]
    assert [n for _, n, _ in listing(bench_for(*MLP, variants=["ort_int8_dynamic"]))] == [
        "ort_int8_dynamic", "prune_structured_keep0.5+int8", "torch_fp32"]


def test_only_names_the_families_asked_for_plus_the_eager_reference():
    got = [name for _, name, _ in listing(bench_for(*MLP, variants=["torch_bf16", "distill"]))]
    assert got == ["distill", "torch_fp32", "torch_bf16"]


def test_config_names_come_from_the_table():
    assert COMPRESSORS == tuple(n for n, f in VARIANTS.items() if f.option)
    assert "torch_fp32" not in COMPRESSORS and "stacked_int8" not in COMPRESSORS
    assert CompressConfig().variants == list(COMPRESSORS)
    with pytest.raises(ValueError) as caught:
        CompressConfig(variants=["ort_int8_dynamc"])
    text = str(caught.value)
    assert "Did you mean 'ort_int8_dynamic'?" in text
    assert all(name in text for name in COMPRESSORS)


def test_a_family_that_does_not_apply_to_the_model_is_left_out():
    bench = bench_for(*MLP)
    bench.saved.config = bench.saved.config.model_copy(update={"model": SimpleNamespace(name="pretrained")})
    names = {name for name, _ in families("network", bench)}
    assert names == {"prune_unstructured"}  # no structured pruning, no student derived for an unknown model
    bench.cfg = bench.cfg.model_copy(update={"distill": bench.cfg.distill.model_copy(
        update={"student": load_config(tiny_config()).model})})
    assert {name for name, _ in families("network", bench)} == {"prune_unstructured", "distill"}


def copy_graph(bench: Bench, sofar: Sofar) -> list[Candidate]:
    """A do-nothing graph variant: the fp32 graph, copied."""
    return [Candidate("copy_graph", {"method": "copy_graph"}, lambda out: Path(shutil.copyfile(sofar.fp32, out)))]


def test_a_new_family_is_one_builder_and_one_entry(monkeypatch):
    monkeypatch.setitem(VARIANTS, "copy_graph", Family("graph", copy_graph))
    bench = bench_for(*MLP, variants=["ort_fp16"])
    bench.cfg = bench.cfg.model_copy(update={"variants": ["ort_fp16", "copy_graph"]})
    assert [name for _, name, _ in listing(bench)] == ["ort_fp16", "copy_graph", "torch_fp32"]
    monkeypatch.setitem(VARIANTS, "copy_graph", Family("graph", copy_graph, applies=lambda b: False))
    assert [name for _, name, _ in listing(bench)] == ["ort_fp16", "torch_fp32"]


@pytest.mark.slow
def test_a_new_family_is_measured_judged_and_saved_like_the_others(monkeypatch, tmp_path):
    """End to end through the search on a trained model: the new entry's variant is measured on ONNX Runtime,
    judged by the guard and saved as a run directory that loads."""
    from modelfoundry.api.evaluation import reload_splits
    from modelfoundry.api.training import run
    from modelfoundry.compress.search import search
    from modelfoundry.rundir import load_model

    monkeypatch.setitem(VARIANTS, "copy_graph", Family("graph", copy_graph))
    run(load_config(tiny_config(training={"epochs": 2, "batch_size": 16, "early_stopping": None})),
        run_dir=tmp_path / "run", progress=False)
    saved = load_model(tmp_path / "run")
    cfg = CompressConfig(repeats=5, prefer="size").model_copy(update={"variants": ["copy_graph"]})
    outcome = search(Bench(saved, reload_splits(saved), "accuracy", cfg, tmp_path / "work"), tmp_path / "out")
    names = [e["name"] for e in outcome.variants]
    assert names == ["copy_graph", "torch_fp32"]
    copied = outcome.variants[0]
    assert copied["error"] is None and copied["passed_guard"]
    assert copied["metric"] == pytest.approx(outcome.original["metric"]) and copied["agreement"] == 1.0
    assert (tmp_path / "work" / "variants" / "copy_graph" / "model" / "onnx" / "model.onnx").is_file()
    assert table.VARIANTS["copy_graph"].stage == "graph"


def test_calibration_rows_are_the_same_seeded_sample_of_every_named_input():
    bench = bench_for(*MLP)
    n = 600
    numeric = np.arange(n, dtype=np.float64).reshape(n, 1)
    bench.splits["X"]["train"] = {"numeric": numeric, "tokens": np.arange(n).reshape(n, 1) * 10}
    rows = table.calibration_rows(bench)
    assert list(rows) == ["numeric", "tokens"]
    assert rows["numeric"].dtype == np.float32 and rows["tokens"].dtype == np.int64
    # the sample the single-matrix code took: 512 rows chosen with the run's seed, in the split's order
    take = np.sort(np.random.default_rng(bench.saved.config.seed).choice(n, size=512, replace=False))
    np.testing.assert_array_equal(rows["numeric"], numeric[take])
    np.testing.assert_array_equal(rows["tokens"][:, 0], take * 10)  # the same rows of the other input
