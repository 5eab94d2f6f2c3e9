"""An image beside numeric, categorical and text columns: each becomes its own named input, the same through
training, the portable description, the server's checks and ONNX export; a CNN takes numeric columns beside its
image, and the sequence models take an image (through a small CNN of its own) beside their text."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from modelfoundry.config import load_config
from modelfoundry.data.input_schema import InputSchema
from modelfoundry.data.portable import apply_portable, describe_preprocessor
from modelfoundry.data.prepare import prepare_data
from modelfoundry.errors import ConfigError, DataError
from tests.conftest import tiny_config

WORDS = ["small", "large", "blue", "red", "round", "square", "old", "new"]


def digits_with_columns(n: int = 400, seed: int = 0) -> pd.DataFrame:
    """sklearn's digits as 64 pixel columns, beside a numeric, a categorical and a free-text column."""
    from sklearn.datasets import load_digits

    frame = load_digits(as_frame=True).frame.iloc[:n].copy()
    rng = np.random.default_rng(seed)
    frame["ink"] = frame.filter(like="pixel_").sum(axis=1) + rng.normal(0, 1, n)
    frame["city"] = rng.choice(["Paris", "Rome", "Oslo"], n)
    frame["note"] = [" ".join(rng.choice(WORDS, 6)) + f" item {i}" for i in range(n)]
    return frame


def mixed_config(tmp_path, model: dict, **data) -> dict:
    path = tmp_path / "mixed.csv"
    if not path.exists():
        digits_with_columns().to_csv(path, index=False)
    config = tiny_config(data={"source": str(path), "features": {"pixel_*": {"type": "image"}},
                               "text": {"max_length": 16}, **data},
                         training={"epochs": 3, "batch_size": 32, "optimizer": {"name": "adam", "lr": 0.01}})
    config["model"] = model
    return config


def test_an_image_beside_table_and_text_columns_is_four_named_inputs_everywhere_alike(tmp_path):
    cfg = load_config(mixed_config(tmp_path, {"name": "mlp"}))
    data = prepare_data(cfg.data, cfg.seed)
    spec = data.input_spec
    assert spec.names == ["image", "numeric", "tokens", "attention_mask"]
    assert spec["image"].shape == (1, 8, 8) and spec["numeric"].shape == (4,)  # ink + 3 cities
    desc = json.loads(json.dumps(describe_preprocessor(data.preprocessor)))  # as preprocess.json holds it
    assert desc["kind"] == "tabular" and desc["image"]["shape"] == [1, 8, 8]
    rows = digits_with_columns(30, seed=1).drop(columns="target")
    expected = data.preprocessor.fitted.transform(rows)
    schema = InputSchema(desc)
    records = json.loads(rows.to_json(orient="records"))
    for got in (apply_portable(desc, rows), schema.from_frame(rows).inputs, schema.from_records(records).inputs):
        assert list(got) == spec.names
        for name in spec.names:
            np.testing.assert_allclose(got[name], expected[name], rtol=1e-5, atol=1e-6)
    with pytest.raises(DataError, match="pixel_0_0"):
        schema.from_records([{k: v for k, v in records[0].items() if k != "pixel_0_0"}])


def test_two_image_features_are_one_clear_data_error(tmp_path):
    cfg = load_config(mixed_config(tmp_path, {"name": "mlp"}, features={"pixel_0_*": {"type": "image", "shape": [1, 2, 4]},
                                                                        "pixel_1_*": {"type": "image", "shape": [1, 2, 4]}}))
    with pytest.raises(DataError, match="2 image features"):
        prepare_data(cfg.data, cfg.seed)


def test_models_that_cannot_take_the_mix_say_which_can(tmp_path):
    from modelfoundry.models import build_model

    cfg = load_config(mixed_config(tmp_path, {"name": "cnn", "channels": [8]}))
    data = prepare_data(cfg.data, cfg.seed)
    with pytest.raises(ConfigError, match="tokens"):
        build_model(cfg.model, data.input_spec, data.n_outputs)  # a CNN reads no text
    pretrained = load_config(mixed_config(tmp_path, {"name": "pretrained", "path": "minilm"})).model
    with pytest.raises(ConfigError, match="lstm, gru or transformer"):
        build_model(pretrained, data.input_spec, data.n_outputs)


@pytest.mark.slow  # two small runs and an ONNX export: ~15 s
def test_a_cnn_with_columns_and_an_lstm_with_an_image_train_predict_and_export(tmp_path):
    from modelfoundry.api import predict, run
    from modelfoundry.export import export_onnx
    from modelfoundry.rundir import load_model

    config = mixed_config(tmp_path, {"name": "cnn", "channels": [8, 16]}, features={
        "pixel_*": {"type": "image"}, "note": {"type": "ignore"}}) | {"name": "cnn"}
    config["training"]["epochs"] = 15
    cnn = run(config, run_dir=tmp_path / "cnn", progress=False)
    assert cnn.metrics["accuracy"] > 0.8  # digits: the image carries the label
    saved = load_model(tmp_path / "cnn")
    assert saved.record.input_spec.names == ["image", "numeric"]
    config = mixed_config(tmp_path, {"name": "lstm", "hidden": 16, "embedding_dim": 8}) | {"name": "lstm"}
    config["training"]["epochs"] = 15
    lstm = run(config, run_dir=tmp_path / "lstm", progress=False)
    assert lstm.metrics["accuracy"] > 0.5  # the label is only in the image, which reaches the head through its CNN
    rows = digits_with_columns(40, seed=2)
    rows.to_csv(tmp_path / "new.csv", index=False)
    table = predict(tmp_path / "lstm", tmp_path / "new.csv")
    assert len(table) == 40
    for name in ("cnn", "lstm"):
        exported = export_onnx(tmp_path / name)
        assert exported.max_abs_diff <= 1e-4 and exported.input_names[0] == "image"
