"""Time series forecasting (data.time_series): config, chronological windows without leakage, baselines, season
detection, forecasts from a history, server requests, H > 1 outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from modelfoundry.config import DataConfig
from modelfoundry.errors import DataError


def _series_csv(path: Path, n: int = 120, period: int = 12, seed: int = 0, dates: bool = False,
                covariate: bool = False) -> Path:
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    y = 50 + 10 * np.sin(2 * np.pi * t / period) + 0.2 * t + rng.normal(0, 0.5, n)
    frame = pd.DataFrame({"t": pd.date_range("2000-01-01", periods=n, freq="W").strftime("%Y-%m-%d") if dates else t,
                          "y": y})
    if covariate:
        frame["x"] = np.cos(2 * np.pi * t / period)
    frame.sample(frac=1.0, random_state=seed).to_csv(path, index=False)  # shuffled: the stage sorts by time
    return path


def _cfg(source: Path | str, **ts) -> DataConfig:
    return DataConfig(source=str(source), time_series={"time": "t", "target": "y", "window": 12, **ts},
                      split={"val": 0.2, "test": 0.2})


# ------------------------------------------------------------------------------------------------ config
def test_config_takes_the_target_from_either_place_and_refuses_contradictions():
    assert DataConfig(source="x.csv", target="y", time_series={"time": "t", "window": 3}).time_series.target == "y"
    assert DataConfig(source="x.csv", time_series={"time": "t", "target": "y", "window": 3}).target == "y"
    for bad, words in [({"target": "a", "time_series": {"time": "t", "target": "b", "window": 3}}, "differ"),
                       ({"task": "classification", "time_series": {"time": "t", "window": 3}}, "classification"),
                       ({"max_rows": 50, "time_series": {"time": "t", "window": 3}}, "max_rows"),
                       ({"features": {"x": {"type": "numeric"}}, "time_series": {"time": "t", "window": 3}},
                        "data.time_series.features"),
                       ({"time_series": {"time": "t", "window": 1}}, "window"),
                       ({"time_series": {"time": "t", "window": 3, "season": 0}}, "season")]:
        with pytest.raises(ValueError, match=words):
            DataConfig(source="x.csv", **bad)


# -------------------------------------------------------------------------------------------------- data
def test_windows_are_chronological_standardised_on_training_and_shaped(tmp_path):
    from modelfoundry.data.prepare import prepare_data

    data = prepare_data(_cfg(_series_csv(tmp_path / "s.csv", covariate=True), features=["x"], horizon=3), 0)
    assert data.n_outputs == 3 and data.task == "regression"
    assert data.input_spec.to_json() == [{"name": "series", "dtype": "float32", "shape": [12, 2]}]
    for name in ("train", "val", "test"):
        assert data.X[name]["series"].shape == (len(data.y[name]), 12, 2) and data.y[name].shape[1] == 3
    # rows are the source rows of each window's first forecast step (the file is shuffled); times increase by split
    source = pd.read_csv(tmp_path / "s.csv")
    times = {name: source.loc[data.rows[name], "t"].to_numpy() for name in ("train", "val", "test")}
    assert times["train"].max() < times["val"].min() <= times["val"].max() < times["test"].min()
    assert np.all(np.diff(times["train"]) > 0)
    raw = source.sort_values("t")
    train_y = raw["y"].to_numpy()[:72]  # 120 steps, 20% + 20% held out: the training period is 72 steps
    assert data.target_encoder.mean_ == pytest.approx(train_y.mean())
    assert data.target_encoder.std_ == pytest.approx(train_y.std())
    # the first training window: steps 0..11 standardised, forecasting steps 12..14
    np.testing.assert_allclose(data.X["train"]["series"][0, :, 0], (raw["y"].to_numpy()[:12] - train_y.mean())
                               / train_y.std(), rtol=1e-5)
    np.testing.assert_allclose(data.target_encoder.decode(data.y["train"][0]), raw["y"].to_numpy()[12:15], rtol=1e-5)
    assert data.info["split"]["chronological"] and data.info["time_series"]["season"] == 12


def test_dates_are_parsed_and_sorted(tmp_path):
    from modelfoundry.data.prepare import prepare_data

    data = prepare_data(_cfg(_series_csv(tmp_path / "s.csv", dates=True)), 0)
    assert data.info["split"]["periods"]["train"][0].startswith("2000-01-02")
    test_times = pd.to_datetime(pd.read_csv(tmp_path / "s.csv").loc[data.rows["test"], "t"])
    assert test_times.is_monotonic_increasing and len(test_times) == 24 - 1 + 1  # horizon 1: every test step


def test_test_period_values_change_nothing_before_it(tmp_path):
    from modelfoundry.data.prepare import prepare_data

    path = _series_csv(tmp_path / "s.csv")
    before = prepare_data(_cfg(path, horizon=2), 0)
    frame = pd.read_csv(path)
    frame.loc[frame["t"] >= 100, "y"] += 1000.0  # the test period (its last 24 steps start at 96)
    frame.to_csv(path, index=False)
    after = prepare_data(_cfg(path, horizon=2), 0)
    for name in ("train", "val"):
        np.testing.assert_array_equal(before.X[name]["series"], after.X[name]["series"])
        np.testing.assert_array_equal(before.y[name], after.y[name])
    assert (before.target_encoder.mean_, before.target_encoder.std_) == (after.target_encoder.mean_,
                                                                         after.target_encoder.std_)
    assert before.preprocessor.desc["time_series"] == after.preprocessor.desc["time_series"]
    assert not np.array_equal(before.y["test"], after.y["test"])


@settings(max_examples=60, deadline=None)
@given(n=st.integers(20, 200), window=st.integers(2, 12), horizon=st.integers(1, 6), step=st.integers(1, 3),
       val=st.sampled_from([0.1, 0.2, 0.3]), test=st.sampled_from([0.1, 0.2, 0.3]))
def test_no_target_belongs_to_two_splits(n, window, horizon, step, val, test):
    from modelfoundry.data.timeseries import period_bounds, window_origins

    bounds = period_bounds(n, val, test)
    origins = window_origins(n, window, horizon, step, bounds)
    periods = {"train": (0, bounds[0]), "val": (bounds[0], bounds[1]), "test": (bounds[1], n)}
    for name, found in origins.items():
        start, end = periods[name]
        assert np.all(found - window >= 0) and np.all(found + horizon <= n)
        assert np.all(found >= start) and np.all(found + horizon <= end)  # every target step in its own period
        assert np.all(np.diff(found) % step == 0)
    targets = {name: {int(t + h) for t in found for h in range(horizon)} for name, found in origins.items()}
    assert not (targets["train"] & targets["val"]) and not (targets["train"] & targets["test"])
    assert not (targets["val"] & targets["test"])


@pytest.mark.parametrize("change,words", [("duplicate", "repeats times"), ("missing_time", "missing or unreadable"),
                                          ("missing_value", "missing value")])
def test_broken_series_are_clear_errors(tmp_path, change, words):
    from modelfoundry.data.prepare import prepare_data

    path = _series_csv(tmp_path / "s.csv")
    frame = pd.read_csv(path)
    if change == "duplicate":
        frame.loc[3, "t"] = frame.loc[4, "t"]
    elif change == "missing_time":
        frame.loc[3, "t"] = np.nan
    else:
        frame.loc[3, "y"] = np.nan
    frame.to_csv(path, index=False)
    with pytest.raises(DataError, match=words) as info:
        prepare_data(_cfg(path), 0)
    assert info.value.hint


def test_a_configured_season_is_used_and_must_fit_the_window(tmp_path):
    from modelfoundry.data.prepare import prepare_data

    path = _series_csv(tmp_path / "s.csv")
    data = prepare_data(_cfg(path, season=6), 0)
    assert (data.info["time_series"]["season"], data.info["time_series"]["season_from"]) == (6, "config")
    with pytest.raises(DataError, match="longer than the window") as info:
        prepare_data(_cfg(path, season=13), 0)
    assert "window to at least 13" in info.value.hint


def test_too_short_a_series_says_what_to_change(tmp_path):
    from modelfoundry.data.prepare import prepare_data

    with pytest.raises(DataError, match="too few windows"):
        prepare_data(_cfg(_series_csv(tmp_path / "s.csv", n=20), window=12), 0)


# --------------------------------------------------------------------------------------- season, baselines
def test_season_detection_finds_a_sine_period_and_nothing_in_noise():
    from modelfoundry.data.timeseries import detect_season

    t = np.arange(400)
    assert detect_season(np.sin(2 * np.pi * t / 7) + 0.01 * t, 30)[0] == 7
    assert detect_season(np.sin(2 * np.pi * t / 12), 30)[0] == 12
    assert detect_season(np.random.default_rng(0).normal(size=400), 30) == (1, None)


def test_baselines_on_a_hand_checked_series():
    from modelfoundry.evaluate.baselines import forecast_baselines, last_value, seasonal_naive

    past = np.array([[1.0, 2.0, 3.0, 4.0, 5.0]])  # y[t-5..t-1]
    np.testing.assert_array_equal(last_value(past, 3), [[5.0, 5.0, 5.0]])
    # season 2: y[t] = y[t-2] = 4, y[t+1] = y[t-1] = 5, y[t+2] = y[t] -> y[t-2] = 4
    np.testing.assert_array_equal(seasonal_naive(past, 3, 2), [[4.0, 5.0, 4.0]])
    np.testing.assert_array_equal(seasonal_naive(past, 2, 5), [[1.0, 2.0]])
    with pytest.raises(ValueError):
        seasonal_naive(past, 1, 6)
    # the metrics, in target units: truth (N=2, H=2), identity decode
    X = {"train": {"series": np.arange(24, dtype=np.float32).reshape(4, 3, 2)},
         "test": {"series": np.array([[[1, 0], [2, 0], [3, 0]], [[3, 0], [4, 0], [6, 0]]], dtype=np.float32)}}
    y = {"train": np.arange(8, dtype=np.float32).reshape(4, 2), "test": np.array([[4.0, 5.0], [7.0, 9.0]])}
    out = forecast_baselines(X, y, lambda v: np.asarray(v, dtype=np.float64), season=2)
    # last value: [[3, 3], [6, 6]] -> errors 1, 2, 1, 3
    assert out["baseline_last_value_mae"] == pytest.approx(7 / 4)
    assert out["baseline_last_value_rmse"] == pytest.approx(np.sqrt((1 + 4 + 1 + 9) / 4))
    # seasonal naive, season 2: [[2, 3], [4, 6]] -> errors 2, 2, 3, 3
    assert out["baseline_seasonal_naive_mae"] == pytest.approx(2.5)
    assert out["baseline_seasonal_naive_smape"] == pytest.approx(np.mean([4 / 6, 4 / 8, 6 / 11, 6 / 15]))
    assert out["baseline_season"] == 2 and "baseline_linear_rmse" in out


def test_smape_is_symmetric_and_zero_for_a_perfect_forecast():
    from modelfoundry.evaluate.metrics import regression_metrics, smape

    assert smape(np.array([0.0, 2.0]), np.array([0.0, 2.0])) == 0.0
    assert smape(np.array([1.0]), np.array([3.0])) == smape(np.array([3.0]), np.array([1.0])) == pytest.approx(1.0)
    two = regression_metrics(np.array([[1.0, 2.0], [3.0, 4.0]]), np.array([[1.0, 2.0], [3.0, 8.0]]))
    assert two["mae"] == pytest.approx(1.0) and two["smape"] == pytest.approx((2 * 4 / 12) / 4)


# ------------------------------------------------------------------------------------------------ sources
def test_bundled_series_are_complete():
    from modelfoundry.data.sources import load_source

    sun = load_source("statsmodels:sunspots")
    assert list(sun.columns) == ["YEAR", "SUNACTIVITY"] and len(sun) == 309
    co2 = load_source("statsmodels:co2")
    assert list(co2.columns) == ["date", "co2"] and len(co2) == 2284 and not co2["co2"].isna().any()



def test_airline_passengers_from_river_when_installed():
    import importlib.util

    from modelfoundry.data.sources import load_source

    if importlib.util.find_spec("river") is None:
        with pytest.raises(DataError, match="pip install river"):
            load_source("river:airline_passengers")
        return
    air = load_source("river:airline_passengers")
    assert list(air.columns) == ["month", "passengers"] and len(air) == 144 and air["passengers"].iloc[0] == 112


# ----------------------------------------------------------------------------------------------- inference
def test_history_gives_one_window_per_origin_the_last_beyond_the_end(tmp_path):
    from modelfoundry.data.prepare import prepare_data
    from modelfoundry.data.timeseries import history_inputs

    path = _series_csv(tmp_path / "s.csv")
    data = prepare_data(_cfg(path, horizon=2), 0)
    history = pd.read_csv(path).sort_values("t").iloc[-40:]
    got = history_inputs(data.preprocessor.desc, history.sample(frac=1.0, random_state=1))
    assert got.inputs["series"].shape == (40 - 12 + 1, 12, 1)
    assert got.times.iloc[-1] == history["t"].iloc[-1]
    # the origins inside the test period are exactly the test windows: matched by the time before each origin
    source = pd.read_csv(path)
    before_origin = source.loc[data.rows["test"], "t"].to_numpy() - 1
    mine = {int(t): i for i, t in enumerate(got.times)}
    for k, t in enumerate(before_origin):
        np.testing.assert_allclose(got.inputs["series"][mine[int(t)]], data.X["test"]["series"][k], rtol=1e-6)


@pytest.mark.parametrize("instance,words", [({"y": [1.0] * 5}, "5 values"), ({"y": "abc"}, "str"),
                                            ({"y": [1.0] * 11 + ["a"]}, "not numbers"),
                                            ({"y": [1.0] * 11 + [float("nan")]}, "NaN"), ({}, "NoneType"),
                                            ([1, 2], "object")])
def test_server_instances_are_checked(tmp_path, instance, words):
    from modelfoundry.data.prepare import prepare_data
    from modelfoundry.data.timeseries import request_inputs

    desc = prepare_data(_cfg(_series_csv(tmp_path / "s.csv")), 0).preprocessor.desc
    with pytest.raises(DataError, match=words):
        request_inputs(desc, instance)
    window = request_inputs(desc, {"y": list(range(30))})  # more than the window: the last 12 are used
    entry = desc["time_series"]
    np.testing.assert_allclose(window[:, 0], (np.arange(18, 30) - entry["mean"][0]) / entry["std"][0], rtol=1e-6)


# ---------------------------------------------------------------------------------------- models, cv
def test_a_sequence_model_gives_one_output_per_forecast_step():
    from modelfoundry.artifacts.inputs import InputSpec
    from modelfoundry.models import build_model
    from modelfoundry.models.inference import predict_outputs
    from modelfoundry.models.rnn import GRUConfig

    spec = InputSpec.single("series", (12, 2))
    model = build_model(GRUConfig(name="gru", hidden=4), spec, 3)
    assert predict_outputs(model, spec.example(5, seed=0), "regression").shape == (5, 3)
    one = build_model(GRUConfig(name="gru", hidden=4), spec, 1)
    assert predict_outputs(one, spec.example(5, seed=0), "regression").shape == (5,)  # horizon 1: as before


def test_cv_of_a_time_series_rolls_its_origin_forward(tmp_path, make_config):
    from modelfoundry.api import cross_validate
    from modelfoundry.data.timeseries import rolling_origin_folds

    path = _series_csv(tmp_path / "s.csv", n=100)
    config = make_config(data={"source": str(path), "target": "y", "split": {"val": 0.2, "test": 0.2},
                               "time_series": {"time": "t", "window": 8, "horizon": 2}},
                         model={"name": "gru", "hidden": 4}, training={"epochs": 1, "batch_size": 32})
    source = pd.read_csv(path)
    folds = list(rolling_origin_folds(config.data, 0, 3))
    blocks = []
    for data in folds:  # every fold: train, then validation, then its test block, in time
        times = {name: source.loc[data.rows[name], "t"].to_numpy() for name in ("train", "val", "test")}
        assert times["train"].max() + 2 <= times["val"].min() and times["val"].max() + 2 <= times["test"].min()
        blocks.append((times["test"].min(), times["test"].max()))
    assert blocks[0][1] < blocks[1][0] and blocks[1][1] < blocks[2][0] and blocks[2][1] == 99 - 1  # horizon 2
    assert len(folds[0].y["train"]) < len(folds[2].y["train"])  # the training past grows
    result = cross_validate(config, folds=3)
    assert result.info["rolling_origin"] and len(result.folds) == 3 and "smape" in result.mean
    assert result.folds[2]["heldout_rows"] == [int(r) for r in folds[2].rows["test"]]
