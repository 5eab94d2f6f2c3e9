"""`data.task: anomaly`: the config pairing, the autoencoder, the labels, the threshold and the metrics; and a
whole run on unlabelled synthetic rows (every row normal) in a few seconds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfoundry.artifacts.inputs import InputField, InputSpec
from modelfoundry.config import load_config
from modelfoundry.errors import ConfigError, DataError
from tests.conftest import tiny_config

BC = {"source": "sklearn:breast_cancer", "task": "anomaly"}
AE = {"name": "autoencoder", "hidden": [8, 2]}


# ---------------------------------------------------------------------------------------------- the config
def test_autoencoder_implies_the_anomaly_task_and_the_normal_label_becomes_a_list():
    config = load_config(tiny_config(data={"source": "sklearn:breast_cancer", "anomaly": {"normal": 1}}, model=AE))
    assert config.data.task == "anomaly" and config.data.anomaly.normal == [1]
    assert config.data.anomaly.false_alarm_rate == 0.01


@pytest.mark.parametrize("data, model, words", [
    ({"source": "sklearn:iris", "task": "classification"}, AE, "model.name: autoencoder"),
    (BC, {"name": "mlp", "hidden": [4]}, "data.task: anomaly"),
    ({"source": "sklearn:iris", "target": None, "task": "classification"}, {"name": "mlp"}, "data.target: null"),
    ({"source": "sklearn:iris", "target": None}, {"name": "mlp"}, "only suits data.task: anomaly"),
])
def test_an_autoencoder_and_the_anomaly_task_go_together_in_one_clear_paragraph(data, model, words):
    with pytest.raises(ConfigError) as info:
        load_config(tiny_config(data=data, model=model))
    assert words in info.value.message and "\n\n" not in info.value.message


@pytest.mark.parametrize("anomaly", [{"false_alarm_rate": 0}, {"false_alarm_rate": 0.5}, {"normal": []},
                                     {"threshold": 2}])
def test_bad_anomaly_keys_are_refused(anomaly):
    with pytest.raises(ConfigError, match="data.anomaly"):
        load_config(tiny_config(data={**BC, "anomaly": anomaly}, model=AE))


# -------------------------------------------------------------------------------------------- the model
def test_the_autoencoder_outputs_each_rows_mean_squared_reconstruction_error():
    import torch

    from modelfoundry.models import build_model

    config = load_config(tiny_config(data=BC, model=AE)).model
    model = build_model(config, InputSpec.single("image", (1, 4, 4)), 1).eval()
    x = torch.randn(5, 1, 4, 4)
    flat = x.flatten(1)
    expected = ((model.reconstruct(flat) - flat) ** 2).mean(1, keepdim=True)
    torch.testing.assert_close(model(x), expected)
    assert model(x).shape == (5, 1) and (model(x) >= 0).all()
    with torch.no_grad():
        assert float(model.training_loss()(model(x), torch.zeros(5))) == pytest.approx(float(expected.mean()))
    widths = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert widths == [8, 2, 8, 16]  # the decoder mirrors the encoder back to the 16 pixels


def test_the_autoencoder_refuses_text_inputs_saying_how_to_leave_them_out():
    from modelfoundry.models import build_model

    config = load_config(tiny_config(data=BC, model=AE)).model
    spec = InputSpec([InputField("numeric", "float32", (3,)), InputField("tokens", "int64", (8,), 50),
                      InputField("attention_mask", "int64", (8,))])
    with pytest.raises(ConfigError, match="reconstructs numeric features or an image") as info:
        build_model(config, spec, 1)
    assert "type: ignore" in info.value.hint


def test_a_run_on_data_with_a_text_column_is_refused_before_training(tmp_path):
    from modelfoundry import run

    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"x": rng.normal(size=60), "note": [f"word{i % 7} other{i % 3}" for i in range(60)]})
    frame.to_csv(tmp_path / "rows.csv", index=False)
    config = load_config(tiny_config(data={"source": str(tmp_path / "rows.csv"), "target": None,
                                           "features": {"note": {"type": "text"}}}, model=AE))
    with pytest.raises(ConfigError, match=r"text column\(s\) \['note'\]") as info:
        run(config, run_dir=tmp_path / "run", progress=False)
    assert "type: ignore" in info.value.hint and not (tmp_path / "run").exists()


# ---------------------------------------------------------------------------------- labels and threshold
def test_labels_are_normal_or_anomaly_and_the_description_round_trips():
    from modelfoundry.data.anomaly import AnomalyTarget, target_from_description

    labels = pd.Series(["ok", "ok", "bad", "ok", "worse", None], name="status")
    target = AnomalyTarget().fit(labels)
    assert target.normal_ == ["ok"]  # the most frequent
    assert target.encode(labels).tolist() == [0, 0, 1, 0, 1, 0]
    target.threshold_ = 0.5
    again = target_from_description(target.describe())
    assert again.flag(np.array([0.2, 0.5, 0.7])).tolist() == [False, False, True]
    assert again.encode(labels).tolist() == target.encode(labels).tolist() and again.column_ == "status"
    numbers = AnomalyTarget(normal=[1]).fit(pd.Series([0, 1, 1.0, 2], name="y"))  # 1 and 1.0 are one label
    assert numbers.encode(pd.Series([0, 1, 1.0, 2])).tolist() == [1, 0, 0, 1]
    with pytest.raises(DataError, match=r"matches no value.*\['0', '1', '2'\]"):
        AnomalyTarget(normal=["7"]).fit(pd.Series([0, 1, 2], name="y"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(0, 1e6, allow_nan=False), min_size=1, max_size=300), st.floats(0.001, 0.49))
def test_the_threshold_lets_at_most_the_false_alarm_rate_of_validation_scores_through(scores, rate):
    from modelfoundry.models.autoencoder import calibrate_threshold

    values = np.array(scores)
    threshold = calibrate_threshold(values, rate)
    assert threshold in values  # an observed score
    above = float((values > threshold).mean())
    assert above <= rate + 1e-12
    assert (values >= threshold).mean() > rate - 1e-9  # the lowest such score: one lower lets too many through


def test_metrics_count_anomalies_as_positives():
    from modelfoundry.evaluate.anomaly import anomaly_metrics

    scores = np.array([0.1, 0.2, 0.9, 0.4, 0.8, 0.3])
    truth = np.array([False, False, True, True, True, False])
    metrics = anomaly_metrics(scores, truth, threshold=0.35)  # flags 0.9, 0.4, 0.8: all three anomalies
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (3, 0, 3, 0)
    assert metrics["precision"] == metrics["recall"] == metrics["f1"] == metrics["roc_auc"] == 1.0
    low = anomaly_metrics(scores, truth, threshold=0.15)  # flags 5 of 6: one false alarm among 3 normal
    assert low["precision"] == pytest.approx(0.6) and low["false_alarm_rate"] == pytest.approx(2 / 3)
    unlabelled = anomaly_metrics(scores, None, threshold=0.35)
    assert unlabelled["flagged_share"] == 0.5 and "roc_auc" not in unlabelled and "score_p50" in unlabelled


# ------------------------------------------------------------------------------ a run without any labels
def test_a_run_on_unlabelled_rows_takes_every_row_as_normal_and_flags_shifted_rows(tmp_path):
    from modelfoundry import predict, run

    rng = np.random.default_rng(0)
    latent = rng.normal(size=(300, 2))
    frame = pd.DataFrame(latent @ rng.normal(size=(2, 6)) + 0.05 * rng.normal(size=(300, 6)),
                         columns=[f"x{i}" for i in range(6)])
    frame.to_csv(tmp_path / "normal.csv", index=False)
    config = load_config(tiny_config(name="unlabelled", data={"source": str(tmp_path / "normal.csv")},
                                     model={"name": "autoencoder", "hidden": [4, 2]},
                                     training={"epochs": 30, "batch_size": 32, "optimizer": {"lr": 0.01}}))
    result = run(config, run_dir=tmp_path / "run", progress=False)
    assert config.data.task == "anomaly"
    assert "roc_auc" not in result.metrics and 0 <= result.metrics["flagged_share"] <= 0.2
    assert result.headline == ["flagged_share", "threshold"]

    shifted = frame.head(40) + rng.normal(scale=3.0, size=(40, 6))  # off the plane the normal rows lie on
    shifted.to_csv(tmp_path / "shifted.csv", index=False)
    frame.tail(40).to_csv(tmp_path / "same.csv", index=False)
    assert predict(result.run_dir, tmp_path / "shifted.csv")["anomaly"].mean() > 0.8
    assert predict(result.run_dir, tmp_path / "same.csv")["anomaly"].mean() < 0.2


def test_cross_validation_refuses_an_anomaly_config_saying_what_handles_it():
    from modelfoundry.api.cross_validation import cross_validate

    config = load_config(tiny_config(data=BC, model=AE))
    with pytest.raises(ConfigError, match=r"data.task: anomaly .* is trained by `foundry run`"):
        cross_validate(config, folds=2, progress=False)


def test_normal_labels_without_a_label_column_are_an_error_not_ignored(tmp_path):
    from modelfoundry import run

    pd.DataFrame({"x": np.arange(40.0), "label": ["ok", "bad"] * 20}).to_csv(tmp_path / "rows.csv", index=False)
    config = load_config(tiny_config(data={"source": str(tmp_path / "rows.csv"), "anomaly": {"normal": "ok"}},
                                     model=AE))
    with pytest.raises(DataError, match=r"no label column 'target' .* x, label") as info:
        run(config, run_dir=tmp_path / "run", progress=False)
    assert "data.target" in info.value.hint
