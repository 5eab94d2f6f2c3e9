"""The monitor's statistics: drift tests, the Benjamini-Hochberg alert rule, patience, the reference profile's
JSON, and the out-of-distribution scorer."""

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfoundry.config.monitor import DriftConfig
from modelfoundry.monitor.columns import PREDICTION
from modelfoundry.monitor.drift import TESTS, Alerts, compare
from modelfoundry.monitor.ood import MahalanobisScorer, ood_space
from modelfoundry.monitor.profile import ColumnProfile, Reference, profile_column

NUMERIC_TESTS = ("ks", "psi", "wasserstein")
CATEGORICAL_TESTS = ("chi2", "jensen_shannon", "psi")


def reference_of(columns: dict, prediction=None) -> Reference:
    profiles = {name: profile_column(name, "numeric" if np.asarray(v).dtype.kind == "f" else "categorical", v)
                for name, v in columns.items()}
    pred = None if prediction is None else profile_column(PREDICTION, "categorical", prediction)
    return Reference("classification", None, 0, profiles, pred, {}, None)


def one_column(test: str, reference: np.ndarray, current: np.ndarray, **drift):
    """The ColumnDrift of one column tested with `test`."""
    kind = "numeric" if test in NUMERIC_TESTS and reference.dtype.kind == "f" else "categorical"
    config = DriftConfig(**{("numeric_test" if kind == "numeric" else "categorical_test"): test, **drift})
    [column] = compare(reference_of({"x": reference}), {"x": current}, config, len(current)).columns
    assert column.test == test
    return column


# ------------------------------------------------------------------------------------------- numeric tests
@pytest.mark.parametrize("test", NUMERIC_TESTS)
def test_a_sample_against_itself_does_not_drift_and_a_shifted_normal_does(test):
    rng = np.random.default_rng(0)
    reference = rng.normal(size=3000)
    same = one_column(test, reference, reference[:400])
    assert not same.drifted and np.isfinite(same.score)
    shifted = one_column(test, reference, rng.normal(0.6, 1.0, size=400))
    assert shifted.drifted and shifted.score > same.score
    if test == "ks":
        assert 0 <= shifted.p_value < 1e-6 < same.p_value <= 1


@pytest.mark.parametrize("test", NUMERIC_TESTS)
def test_constant_reference_columns_drift_only_when_they_stop_being_constant(test):
    zeros = np.zeros(1500)
    assert not one_column(test, zeros, np.zeros(200)).drifted
    moved = one_column(test, zeros, np.random.default_rng(1).normal(0, 1, 200))
    assert moved.drifted and np.isfinite(moved.score)
    assert one_column(test, zeros, np.full(200, 3.0)).drifted  # constant in both, another value


@pytest.mark.parametrize("test", NUMERIC_TESTS)
def test_a_column_suddenly_all_missing_is_drift(test):
    reference = np.random.default_rng(2).normal(size=1000)
    column = one_column(test, reference, np.full(300, np.nan))
    assert column.drifted and np.isfinite(column.score)
    some_missing = reference.copy()
    some_missing[::10] = np.nan  # 10% missing in both: no drift
    current = np.random.default_rng(3).normal(size=300)
    current[::10] = np.nan
    assert not one_column(test, some_missing, current).drifted


def test_wasserstein_is_in_reference_standard_deviations():
    rng = np.random.default_rng(4)
    reference = rng.normal(0, 5.0, size=5000)
    column = one_column("wasserstein", reference, reference[:2000] + 2.5)  # half a standard deviation
    assert column.score == pytest.approx(0.5, abs=0.05)


# --------------------------------------------------------------------------------------- categorical tests
@pytest.mark.parametrize("test", CATEGORICAL_TESTS)
def test_categories_against_themselves_do_not_drift_and_a_moved_share_does(test):
    rng = np.random.default_rng(5)
    reference = rng.choice(["a", "b", "c"], p=[0.6, 0.3, 0.1], size=3000).astype(object)
    assert not one_column(test, reference, reference[:500]).drifted
    moved = rng.choice(["a", "b", "c"], p=[0.2, 0.3, 0.5], size=500).astype(object)
    column = one_column(test, reference, moved)
    assert column.drifted
    if test == "chi2":
        assert 0 <= column.p_value < 1e-6


def test_chi2_pools_new_categories_and_merges_rare_ones():
    rng = np.random.default_rng(6)
    reference = rng.choice(["yes", "no", "rare"], p=[0.5, 0.499, 0.001], size=5000).astype(object)
    assert not one_column("chi2", reference, reference[:300]).drifted  # 'rare' merged, no false alarm
    new = np.concatenate([reference[:200], np.full(100, "Atlantis", dtype=object)])
    assert one_column("chi2", reference, new).drifted
    assert not one_column("chi2", reference, np.array(["yes"], dtype=object)).drifted  # one row: nothing to say


def test_a_binary_column_with_chi2():
    rng = np.random.default_rng(7)
    reference = rng.choice(["0", "1"], size=2000).astype(object)
    assert not one_column("chi2", reference, rng.choice(["0", "1"], size=200).astype(object)).drifted
    assert one_column("chi2", reference, rng.choice(["0", "1"], p=[0.8, 0.2], size=200).astype(object)).drifted


# ----------------------------------------------------------------------------------------- the alert rule
def test_auto_picks_by_kind_and_window_size():
    reference = reference_of({"n": np.random.default_rng(8).normal(size=2000),
                              "c": np.array(["a", "b"] * 1000, dtype=object)})
    config = DriftConfig(large_sample=1000)
    for rows, expected in ((500, {"n": "ks", "c": "chi2"}), (1500, {"n": "wasserstein", "c": "jensen_shannon"})):
        current = {"n": np.random.default_rng(9).normal(size=rows), "c": np.array(["a", "b"] * (rows // 2), object)}
        assert {c.column: c.test for c in compare(reference, current, config, rows).columns} == expected


def test_benjamini_hochberg_keeps_chance_quiet_and_finds_the_shifted_column():
    rng = np.random.default_rng(10)
    columns = {f"x{i}": rng.normal(size=2000) for i in range(64)}
    reference = reference_of(columns)
    false_alarms = 0
    for _ in range(20):
        window = {name: rng.normal(size=200) for name in columns}
        result = compare(reference, window, DriftConfig(), 200)
        false_alarms += len(result.drifted)
        assert not result.dataset_drift
    assert false_alarms <= 2  # of 1,280 column-windows; without the correction about 64
    window = {name: rng.normal(size=200) for name in columns}
    window["x3"] = rng.normal(1.0, 1.0, size=200)
    result = compare(reference, window, DriftConfig(), 200)
    assert result.drifted == ["x3"] and result.share == pytest.approx(1 / 64)
    [x3] = [c for c in result.columns if c.column == "x3"]
    assert x3.p_value <= x3.threshold <= 0.05


def test_dataset_drift_by_share_and_the_prediction_outside_the_input_family():
    rng = np.random.default_rng(21)
    columns = {f"x{i}": rng.normal(size=1000) for i in range(4)}
    labels = rng.choice(["cat", "dog"], size=1000).astype(object)
    reference = reference_of(columns, prediction=labels)
    window = {"x0": rng.normal(2, 1, 300), "x1": rng.normal(2, 1, 300), "x2": rng.normal(size=300),
              "x3": rng.normal(size=300), PREDICTION: np.array(["cat"] * 200 + ["dog"] * 100, dtype=object)}
    result = compare(reference, window, DriftConfig(share=0.5), 300)
    assert set(result.drifted) == {"x0", "x1", PREDICTION} and result.share == 0.5 and result.dataset_drift
    assert not compare(reference, window, DriftConfig(share=0.75), 300).dataset_drift


def test_alerts_wait_for_patience_windows_in_a_row():
    rng = np.random.default_rng(12)
    reference = reference_of({"x": rng.normal(size=1000)})
    drifted = compare(reference, {"x": rng.normal(3, 1, 200)}, DriftConfig(), 200)
    quiet = compare(reference, {"x": rng.normal(size=200)}, DriftConfig(), 200)
    alerts = Alerts(patience=2)
    assert alerts.update(drifted) == {"x": False}
    assert alerts.update(drifted) == {"x": True}
    assert alerts.update(quiet) == {"x": False}
    assert alerts.update(drifted) == {"x": False}


values_strategy = st.one_of(
    st.lists(st.one_of(st.floats(allow_nan=True, allow_infinity=False, width=32), st.just(0.0)), max_size=40)
    .map(lambda v: np.asarray(v, dtype=np.float64)),
    st.lists(st.sampled_from(["a", "b", "<missing>", "zzz", ""]), max_size=40).map(lambda v: np.asarray(v, object)))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reference=values_strategy, current=values_strategy, numeric_test=st.sampled_from(["auto", *NUMERIC_TESTS]),
       categorical_test=st.sampled_from(["auto", *CATEGORICAL_TESTS]), large=st.integers(10, 50))
def test_compare_never_raises_and_never_gives_nan(reference, current, numeric_test, categorical_test, large):
    ref = reference_of({"x": reference, "y": reference}, prediction=np.array(["a", "b", "a"], dtype=object))
    config = DriftConfig(numeric_test=numeric_test, categorical_test=categorical_test, large_sample=large)
    window = {"x": current, "y": current[:1], PREDICTION: current}  # the wrong kind too: "not tested", no error
    result = compare(ref, window, config, len(current))
    assert len(result.columns) == 3
    for column in result.columns:
        assert np.isfinite(column.score) and np.isfinite(column.threshold)
        assert column.p_value is None or 0.0 <= column.p_value <= 1.0
    json.dumps(result.to_json(), allow_nan=False)


# ------------------------------------------------------------------------------------------- the profile
def test_the_reference_survives_json_and_gives_the_same_tests():
    rng = np.random.default_rng(13)
    x = rng.normal(size=3000)
    x[::7] = np.nan
    columns = {"x": x, "pixel": rng.integers(0, 17, 3000).astype(np.float64),
               "c": rng.choice(["a", "b", "<missing>"], size=3000).astype(object)}
    reference = reference_of(columns, prediction=rng.choice(["0", "1"], size=300).astype(object))
    reference.ood = MahalanobisScorer().fit(rng.normal(size=(500, 5))).calibrate(rng.normal(size=(200, 5)), 0.05)
    text = json.dumps(reference.to_json(), separators=(",", ":"), allow_nan=False)
    loaded = Reference.from_json(json.loads(text))
    assert len(loaded.columns["pixel"].quantiles) == 1000 and len(text) < 60_000  # pixels run-length coded
    np.testing.assert_array_equal(loaded.columns["x"].quantiles, reference.columns["x"].quantiles)
    assert loaded.columns["x"].missing == pytest.approx(reference.columns["x"].missing)
    window = {"x": rng.normal(0.2, 1, 300), "pixel": rng.integers(0, 17, 300).astype(np.float64),
              "c": rng.choice(["a", "b"], size=300).astype(object), PREDICTION: np.array(["0"] * 300, object)}
    for test in ("ks", "psi", "wasserstein"):
        config = DriftConfig(numeric_test=test)
        assert compare(loaded, window, config, 300).to_json() == compare(reference, window, config, 300).to_json()
    probe = rng.normal(size=(50, 5))
    np.testing.assert_allclose(loaded.ood.score(probe), reference.ood.score(probe), rtol=1e-5)
    assert loaded.ood.threshold_ == pytest.approx(reference.ood.threshold_, rel=1e-6)


def test_profile_of_a_numeric_column():
    values = np.array([3.0, 1.0, np.nan, 2.0, 2.0, np.nan, 5.0, 4.0])
    profile = profile_column("v", "numeric", values)
    assert profile.n == 8 and profile.missing == 0.25
    np.testing.assert_array_equal(profile.quantiles, [1, 2, 2, 3, 4, 5])
    assert profile.counts.sum() == 6 and profile.counts[0] == 0 and profile.counts[-1] == 0  # below min, above max
    assert profile.edges[0] == -np.inf and profile.edges[-1] == np.inf
    assert profile.mean == pytest.approx(17 / 6)
    np.testing.assert_array_equal(profile_column("c", "categorical", np.array(["a", "b", "a"], object)).sample(),
                                  ["a", "a", "b"])
    assert isinstance(ColumnProfile.from_json(profile.to_json()).quantiles, np.ndarray)


def test_test_table_names():
    assert set(TESTS) == {"ks", "psi", "wasserstein", "chi2", "jensen_shannon"}


# --------------------------------------------------------------------------------------------------- OOD
def test_ood_flags_about_the_false_alarm_rate_of_fresh_rows_and_most_far_ones():
    rng = np.random.default_rng(14)
    mixing = rng.normal(size=(6, 40))

    def rows(n):  # 6 latent factors in 40 features, 8 of them constant (like digits' corner pixels)
        X = rng.normal(size=(n, 6)) @ mixing + 0.1 * rng.normal(size=(n, 40))
        X[:, :8] = 0.0
        return X

    scorer = MahalanobisScorer().fit(rows(3000)).calibrate(rows(2000), 0.05)
    fresh = scorer.flag(rows(4000)).mean()
    assert 0.02 < fresh < 0.09
    noisy = rows(500) + rng.normal(0, 1.0, size=(500, 40))
    assert scorer.flag(noisy).mean() > 0.9
    corner = rows(500)
    corner[:, 0] = 0.5  # a constant feature that moved
    assert scorer.flag(corner).mean() > 0.9 and np.isfinite(scorer.score(corner)).all()
    assert len(scorer.components_) <= 64


def test_ood_space_reads_numeric_or_image_inputs_only():
    assert ood_space({"numeric": np.ones((3, 4), np.float32)}).shape == (3, 4)
    assert ood_space({"image": np.ones((3, 1, 8, 8), np.float32)}).shape == (3, 64)
    assert ood_space({"tokens": np.ones((3, 16), np.int64), "attention_mask": np.ones((3, 16))}) is None
    with pytest.raises(RuntimeError, match="not fitted"):
        MahalanobisScorer().score(np.ones((2, 2)))



def test_a_rare_class_of_a_binary_column_is_tested_exactly_when_chi2_has_too_few_rows():
    rng = np.random.default_rng(15)
    reference = rng.choice(["no", "yes"], p=[0.98, 0.02], size=5000).astype(object)
    quiet = one_column("chi2", reference, rng.choice(["no", "yes"], p=[0.98, 0.02], size=100).astype(object))
    assert not quiet.drifted and quiet.note == "Fisher's exact test"
    moved = one_column("chi2", reference, np.array(["yes"] * 40 + ["no"] * 60, dtype=object))
    assert moved.drifted and moved.p_value < 1e-6


def test_tokens_of_a_short_window_from_the_same_text_do_not_drift_and_new_words_do():
    rng = np.random.default_rng(16)
    weights = 1.0 / np.arange(1, 3001)  # Zipf-like vocabulary of 3,000 token ids
    weights /= weights.sum()

    def tokens(n, p=weights):
        return rng.choice(3000, size=n, p=p).astype(str).astype(object)

    reference = Reference("classification", None, 0, {"t:tokens": profile_column("t:tokens", "categorical",
                                                                                 tokens(100_000))}, None, {}, None)
    assert len(reference.columns["t:tokens"].categories) == 501  # the top 500 and <other>
    for n in (500, 3000, 20_000):
        [column] = compare(reference, {"t:tokens": tokens(n)}, DriftConfig(), 100).columns
        assert column.test == "jensen_shannon" and not column.drifted, (n, column.score)
    shifted = np.roll(weights, 700)  # other words are now the frequent ones
    [column] = compare(reference, {"t:tokens": tokens(3000, shifted)}, DriftConfig(), 100).columns
    assert column.drifted


@pytest.mark.parametrize("test", ["jensen_shannon", "psi"])
def test_distance_tests_over_many_categories_do_not_mistake_sampling_noise_for_drift(test):
    rng = np.random.default_rng(17)
    names = np.array([f"c{i}" for i in range(200)], dtype=object)
    reference = rng.choice(names, size=50_000)
    assert not one_column(test, reference, rng.choice(names, size=1500)).drifted
    assert one_column(test, reference, rng.choice(names[:40], size=1500)).drifted  # 160 categories gone
