"""The data checks on real data: a planted leak is found and clean datasets raise no false alarms, a real ID column
is flagged, personal data is found by pattern (cards only when the Luhn check passes) without being shown, row and
column problems are counted, shift between two files is found, and any small table gives findings or a clean
DataError, never a crash."""

from __future__ import annotations

import json
import os
import string
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfoundry.data.quality.checkup import check_frame, quick_check
from modelfoundry.data.quality.findings import failing, parse_fail_on
from modelfoundry.data.quality.pii import iban_valid, luhn_valid, mask
from modelfoundry.data.sources import load_source
from modelfoundry.errors import ConfigError, DataError


def kinds_of(result, kind):
    return [f for f in result.findings if f.kind == kind]


def columns_of(result, kind):
    return {c for f in kinds_of(result, kind) for c in f.columns}


@pytest.fixture(scope="module")
def breast_cancer():
    return load_source("sklearn:breast_cancer")


def test_a_leaked_column_planted_in_breast_cancer_is_an_error_and_no_real_feature_is(breast_cancer):
    frame = breast_cancer.copy()
    frame["leak"] = frame["target"] + np.random.default_rng(0).normal(0, 0.1, len(frame))
    result = check_frame(frame, source="bc", target="target")
    leaks = kinds_of(result, "leakage")
    assert [f.columns for f in leaks] == [["leak"]]
    assert leaks[0].severity == "error" and leaks[0].value >= 0.98
    # the real top features score high but far from perfect, and are listed beside it
    scores = {s["column"]: s["score"] for s in result.leakage}
    assert 0.8 < scores["worst perimeter"] < 0.95


def test_a_post_outcome_category_is_leakage(breast_cancer):
    frame = breast_cancer.copy()
    rng = np.random.default_rng(1)
    outcome = np.where(frame["target"] == 1, "discharged", "referred to oncology")
    flip = rng.random(len(frame)) < 0.005
    frame["follow_up"] = np.where(flip, "lost to follow-up", outcome)
    assert columns_of(check_frame(frame, source="bc", target="target"), "leakage") == {"follow_up"}


@pytest.mark.parametrize("name", ["sklearn:iris", "sklearn:breast_cancer", "sklearn:diabetes", "sklearn:wine"])
def test_clean_real_datasets_have_no_leakage_or_id_findings(name):
    result = check_frame(load_source(name), source=name, target="target")
    assert not kinds_of(result, "leakage")
    assert not kinds_of(result, "id_like")
    assert result.leakage  # every column was scored


def test_the_id_column_of_a_real_dataset_is_flagged():
    """Fair's affairs survey as statsmodels ships it (fair_pt.csv, read directly): 'identifier' is a respondent
    number, and 'constant' a column of ones."""
    import statsmodels

    frame = pd.read_csv(Path(statsmodels.__file__).parent / "datasets" / "fair" / "fair_pt.csv")
    result = check_frame(frame, source="fair_pt.csv", target="naffairs")
    assert columns_of(result, "id_like") == {"identifier"}
    assert "constant" in columns_of(result, "constant")
    assert not kinds_of(result, "leakage")


def test_an_id_column_in_a_file_sorted_by_the_target_is_reported_as_both(breast_cancer):
    frame = breast_cancer.sort_values("target", kind="stable").reset_index(drop=True)
    frame.insert(0, "row_id", np.arange(1, len(frame) + 1))
    result = check_frame(frame, source="sorted.csv", target="target")
    assert "row_id" in columns_of(result, "id_like")
    leak = [f for f in kinds_of(result, "leakage") if f.columns == ["row_id"]]
    assert leak and leak[0].detail["id_like"] and "sorted by the target" in leak[0].message


def test_uuid_and_key_strings_are_id_like_but_free_text_is_not():
    rng = np.random.default_rng(0)
    import uuid

    n = 200
    frame = pd.DataFrame({"customer": [str(uuid.UUID(int=int(rng.integers(2 ** 62)))) for _ in range(n)],
                          "comment": [" ".join(rng.choice(["good", "bad", "slow", "fast", "fine", "ok"], 6))
                                      + f" {i}" for i in range(n)],
                          "y": rng.integers(0, 2, n)})
    result = check_frame(frame, source="t", target="y")
    assert columns_of(result, "id_like") == {"customer"}


def test_a_regression_leak_is_found_by_r2():
    frame = load_source("sklearn:diabetes")
    frame["leak"] = frame["target"] * 2 + np.random.default_rng(0).normal(0, 1, len(frame))
    result = check_frame(frame, source="diabetes", target="target")
    assert result.task == "regression"
    assert columns_of(result, "leakage") == {"leak"}


def test_luhn_and_iban_checks():
    assert luhn_valid("4111111111111111") and luhn_valid("5555555555554444") and luhn_valid("378282246310005")
    assert not luhn_valid("4111111111111112") and not luhn_valid("1234567812345678")
    assert iban_valid("GB82 WEST 1234 5698 7654 32") and not iban_valid("GB82 WEST 1234 5698 7654 33")


def _luhn_complete(prefix: str) -> str:
    """`prefix` plus the check digit that makes it pass Luhn."""
    return next(prefix + d for d in string.digits if luhn_valid(prefix + d))


def test_pii_columns_are_found_by_pattern_and_never_shown():
    rng = np.random.default_rng(0)
    n = 300
    emails = [f"user{i}.{rng.integers(1000)}@example{i % 7}.org" for i in range(n)]
    phones = [f"+44 20 {rng.integers(1000, 9999)} {rng.integers(1000, 9999)}" for _ in range(n)]
    valid = [_luhn_complete("4" + "".join(rng.choice(list(string.digits), 14))) for _ in range(n)]
    invalid = [c[:-1] + str((int(c[-1]) + 1) % 10) for c in valid]
    frame = pd.DataFrame({"email": emails, "phone": phones, "card": [f"{c[:4]} {c[4:8]} {c[8:12]} {c[12:]}"
                                                                     for c in valid],
                          "not_a_card": invalid, "note": ["call me maybe"] * n, "y": rng.integers(0, 2, n)})
    result = check_frame(frame, source="people.csv", target="y")
    patterns = {f.columns[0]: f.detail["pattern"] for f in kinds_of(result, "pii")}
    assert patterns == {"email": "email", "phone": "phone number", "card": "card number"}
    assert all(f.severity == "error" and f.value == 1.0 for f in kinds_of(result, "pii"))
    text = " ".join(f.message + f.fix for f in result.findings)
    assert not any(value in text for value in emails + phones + valid)
    assert mask("ann@mail.com") == "a**@m***.com" and mask("4111 1111 1111 1111") == "**** **** **** **11"


def test_pii_in_free_text_counts_the_share_of_values():
    texts = [f"please write to me at person{i}@mail.example.com soon" if i % 10 == 0 else f"no contact {i}"
             for i in range(200)]
    found = kinds_of(check_frame(pd.DataFrame({"text": texts}), source="t"), "pii")
    assert len(found) == 1 and found[0].severity == "warning" and found[0].value == pytest.approx(0.1)


def test_duplicates_exact_and_after_normalisation_and_conflicting_targets():
    frame = pd.DataFrame({"name": ["Ann", "Bob", "Ann", " ann ", "Cid", "Dee", "Dee"],
                          "x": [1.0, 2.0, 1.0, 1.0000000001, 3.0, 4.0, 4.0],
                          "y": [0, 1, 0, 0, 1, 0, 1]})
    result = check_frame(frame, source="t", target="y")
    assert kinds_of(result, "duplicates")[0].detail["rows"] == 1  # row 2 repeats row 0
    assert kinds_of(result, "near_duplicates")[0].detail["rows"] == 1  # ' ann ', 1.0000000001
    assert kinds_of(result, "conflicting_targets")[0].detail["rows"] == 2  # the two 'Dee' rows


def test_missing_constant_mixed_types_and_target_findings():
    n = 100
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"empty": [None] * n, "half": [1.0, None] * (n // 2), "same": ["a"] * n,
                          "amount": [str(v) for v in rng.normal(size=n - 5)] + ["N/A"] * 5,
                          "x": rng.normal(size=n), "y": [0, 1] * 45 + [None] * 10})
    result = check_frame(frame, source="t", target="y")
    by_column = {(f.kind, f.columns[0]): f for f in result.findings if f.columns}
    assert by_column[("missing", "empty")].severity == "error"
    assert by_column[("missing", "half")].value == 0.5
    assert by_column[("constant", "same")].severity == "warning"
    assert by_column[("mixed_types", "amount")].value == pytest.approx(0.95)
    assert by_column[("target_missing", "y")].detail["rows"] == 10


def test_class_imbalance_suggests_balance(breast_cancer):
    malignant = breast_cancer[breast_cancer["target"] == 0].iloc[:20]
    frame = pd.concat([breast_cancer[breast_cancer["target"] == 1], malignant])
    found = kinds_of(check_frame(frame, source="t", target="target"), "imbalance")
    assert found[0].severity == "warning" and found[0].detail["ratio"] == pytest.approx(357 / 20)
    assert "data.balance" in found[0].fix


def test_shift_between_two_splits_names_the_shifted_column(breast_cancer):
    shuffled = breast_cancer.sample(frac=1.0, random_state=0)
    first, second = shuffled.iloc[:280].copy(), shuffled.iloc[280:].copy()
    same = check_frame(first, source="a", target="target", compare=second, compare_name="b")
    assert not kinds_of(same, "adversarial")
    second["mean radius"] = second["mean radius"] * 1.5
    shifted = check_frame(first, source="a", target="target", compare=second, compare_name="b")
    worst = max(kinds_of(shifted, "shift"), key=lambda f: f.value)
    assert worst.columns == ["mean radius"] and worst.severity == "warning"
    adversarial = kinds_of(shifted, "adversarial")[0]
    assert adversarial.value > 0.9 and adversarial.columns[0] == "mean radius"


def test_fail_on_by_severity_and_by_kind(breast_cancer):
    frame = breast_cancer.copy()
    frame["leak"] = frame["target"]
    frame["constant"] = 1
    findings = check_frame(frame, source="t", target="target").findings
    assert {f.kind for f in failing(findings, "error")} == {"leakage"}
    assert {f.kind for f in failing(findings, "warning")} == {"leakage", "constant"}
    assert {f.kind for f in failing(findings, "constant")} == {"constant"}
    assert failing(findings, None) == [] and failing(findings, "pii") == []
    with pytest.raises(ConfigError, match="leakge.*Did you mean 'leakage'"):
        parse_fail_on("error,leakge")


def test_many_columns_of_one_finding_become_one():
    frame = pd.DataFrame({f"pixel_{i}": np.zeros(50) for i in range(30)} | {"y": [0, 1] * 25})
    constant = kinds_of(check_frame(frame, source="t", target="y"), "constant")
    assert len(constant) == 1 and len(constant[0].columns) == 30


def test_the_quick_check_samples_large_tables():
    n = 30_000
    frame = pd.DataFrame({"x": np.arange(n) % 97, "y": np.arange(n) % 2})
    assert quick_check(frame, source="t", target="y").rows == 20_000


def test_errors_are_data_errors():
    with pytest.raises(DataError, match="Target column 'tagret' is not in t. Did you mean 'target'"):
        check_frame(pd.DataFrame({"target": [1, 2]}), source="t", target="tagret")
    with pytest.raises(DataError, match="no rows"):
        check_frame(pd.DataFrame({"a": []}), source="t")


CELLS = st.one_of(st.none(), st.just(""), st.just("  "), st.integers(-5, 5), st.floats(allow_nan=True),
                  st.text(max_size=6), st.sampled_from(["a@b.co", "+1 555 123 4567", "4111111111111111", "x y z w"]))


@st.composite
def small_frames(draw):
    n_rows = draw(st.integers(1, 12))
    n_cols = draw(st.integers(1, 4))
    columns = {f"c{j}": draw(st.lists(CELLS, min_size=n_rows, max_size=n_rows)) for j in range(n_cols)}
    frame = pd.DataFrame(columns)
    if draw(st.booleans()):  # some columns numeric-typed, some all missing
        frame["c0"] = pd.to_numeric(frame["c0"], errors="coerce")
    target = draw(st.sampled_from([None, *frame.columns]))
    return frame, target


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_frames(), st.sampled_from(["auto", "classification", "regression"]), st.integers(0, 3))
def test_any_small_table_gives_findings_or_a_clean_data_error(case, task, compare):
    frame, target = case
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    other = frame.iloc[::-1] if compare == 0 else None  # a quarter of the cases compare (it fits a classifier)
    try:
        result = check_frame(frame, source="fuzz.csv", target=target, task=task, compare=other)
    except DataError as exc:
        assert exc.message and "Traceback" not in str(exc)
        return
    assert all(f.severity in ("info", "warning", "error") for f in result.findings)
    json.dumps(result.to_json(), allow_nan=False)  # strict JSON of plain values: findings.json is written from it


def test_foundry_run_shows_warnings_and_errors_only_a_few_and_how_to_see_all():
    from modelfoundry.api.data_check import SHOWN_AT_RUN, run_lines
    from modelfoundry.data.quality.findings import Finding

    findings = [Finding("constant", "warning", [f"c{i}"], 1.0, f"c{i} is constant.", "drop it") for i in range(9)]
    findings.append(Finding("outliers", "info", ["x"], 0.1, "x has outliers.", "check"))
    lines = run_lines(findings, "my data.csv", "label")
    assert lines[:SHOWN_AT_RUN] == [f"Data warning: c{i} is constant." for i in range(SHOWN_AT_RUN)]
    assert len(lines) == SHOWN_AT_RUN + 1 and "outliers" not in " ".join(lines)
    assert lines[-1].startswith(f"{9 - SHOWN_AT_RUN} more data findings.")
    assert "`foundry data check 'my data.csv' --target label`" in lines[-1]
    assert run_lines(findings[-1:], "d.csv", "y") == []


def test_a_date_recorded_only_for_one_class_is_leakage(breast_cancer):
    """A post-outcome column whose values are all distinct (a date of surgery, missing for benign cases): no single
    value repeats, but whether it is there gives the target away."""
    frame = breast_cancer.copy()
    days = np.random.default_rng(2).permutation(len(frame))
    dates = pd.to_datetime("2020-01-01") + pd.to_timedelta(days, unit="D")
    frame["surgery_date"] = np.where(frame["target"] == 0, dates.strftime("%Y-%m-%d"), None)
    assert columns_of(check_frame(frame, source="bc", target="target"), "leakage") == {"surgery_date"}


def test_the_report_skips_what_cannot_be_plotted_and_still_writes(tmp_path):
    from modelfoundry.data.quality.report import write_report

    frame = pd.DataFrame({"huge": [5.6295e14, 5.6295e14 + 0.01], "tiny": [1e-300, 2e-300], "y": [0, 1]})
    result = check_frame(frame, source="odd.csv", target="y")
    files = write_report(result, frame, tmp_path, "both")
    assert set(files) == {"findings", "md", "html"} and all(p.is_file() for p in files.values())
    assert (tmp_path / "plots" / "huge.png").is_file()


def test_high_cardinality_and_near_constant_columns():
    rng = np.random.default_rng(0)
    n = 1000
    towns = np.array(["".join(rng.choice(list("abcdefghij"), 6)) for _ in range(300)])
    frame = pd.DataFrame({"town": rng.choice(towns, n), "rare": ["x"] * 995 + ["y"] * 5,
                          "size": rng.choice(["S", "M", "L"], n), "y": rng.integers(0, 2, n)})
    result = check_frame(frame, source="t", target="y")
    high = kinds_of(result, "high_cardinality")
    assert [f.columns for f in high] == [["town"]] and high[0].value > 250
    near = kinds_of(result, "constant")
    assert [(f.columns, f.severity) for f in near] == [(["rare"], "info")] and near[0].value == 0.995


def test_timestamps_and_decimals_are_not_phone_numbers():
    values = [f"2024-0{1 + i % 9}-1{i % 10} 1{i % 10}:30:00" for i in range(50)] + \
             [f"{1000 + i}.{123456 + i}" for i in range(50)]
    assert not kinds_of(check_frame(pd.DataFrame({"when": values}), source="t"), "pii")
