"""The server on a model with numeric and categorical columns: random bad input never yields a 500 nor
touches the good requests sharing its batch; OIP datatypes; input warnings; serve.on_unseen."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from modelfoundry.config import ServeConfig, load_config
from modelfoundry.api.training import run
from modelfoundry.serve.app import create_app
from modelfoundry.serve.store import RunDirStore
from tests.conftest import tiny_config
from tests.unit.test_export import iris_with_categories

NUMERIC = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
COLUMNS = [*NUMERIC, "colour", "size"]
GOOD = [{"sepal length (cm)": 5.1, "sepal width (cm)": 3.5, "petal length (cm)": 1.4, "petal width (cm)": 0.2,
         "colour": "red", "size": "M"},
        {"sepal length (cm)": 6.7, "sepal width (cm)": 3.0, "petal length (cm)": 5.2, "petal width (cm)": 2.3,
         "colour": "blue", "size": "S"}]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve_inputs")
    iris_with_categories(tmp / "iris.csv")
    cfg = load_config(tiny_config(name="flowers", data={"source": str(tmp / "iris.csv"),
                                                        "features": {"size": {"encode": "ordinal"}}}))
    run(cfg, run_dir=tmp / "run", progress=False)
    return tmp / "run"


def infer_body(records):
    return {"inputs": [{"name": c, "shape": [len(records)], "datatype": "BYTES" if c in ("colour", "size") else "FP64",
                        "data": [r.get(c) for r in records]} for c in COLUMNS]}


@pytest.fixture(scope="module")
def expected(run_dir):
    """What each good request gets when it is alone on an unbatched server."""
    with TestClient(create_app(ServeConfig(batching=False), RunDirStore(run_dir))) as c:
        return {"predict": c.post("/predict", json={"records": GOOD}).json(),
                "infer": c.post("/v2/models/flowers/infer", json=infer_body(GOOD)).json()}


@pytest.fixture(scope="module")
def batched(run_dir):
    """Batching on with a window long enough that concurrent requests share batches."""
    with TestClient(create_app(ServeConfig(max_latency_ms=30), RunDirStore(run_dir))) as c:
        yield c


# ------------------------------------------------------------------------------------------- strategies
scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.sampled_from([10 ** 400, -(10 ** 309), 2 ** 1024]),
                    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from([1e308, -1e308, 1e-320, 0.0]),
                    st.text(max_size=8), st.sampled_from(["inf", "nan", "1e400", "red", "Atlantis", "", "3.5"]))
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.text(max_size=4), inner, max_size=3)),
                      max_leaves=6)
keys = st.one_of(st.sampled_from(COLUMNS), st.text(max_size=6))
record = st.builds(lambda base, drop, extra: {**{k: v for k, v in base.items() if k not in drop}, **extra},
                   st.sampled_from(GOOD), st.sets(st.sampled_from(COLUMNS), max_size=2),
                   st.dictionaries(keys, values, max_size=3))
predict_bodies = st.one_of(st.builds(lambda rs: {"records": rs}, st.lists(st.one_of(record, values), max_size=3)),
                           st.dictionaries(st.sampled_from(["records", "rows", "inputs"]), values, max_size=2),
                           values)
tensor = st.fixed_dictionaries({"name": keys, "shape": st.lists(st.integers(-2, 3), max_size=3),
                                "datatype": st.sampled_from(["FP64", "FP32", "INT64", "BYTES", "BOOL", "STRING"]),
                                "data": st.lists(values, max_size=3)})
infer_bodies = st.one_of(st.builds(lambda ts: {"inputs": ts}, st.lists(tensor, max_size=7)),
                         st.builds(lambda rs: infer_body(rs), st.lists(record, min_size=1, max_size=2)), values)


def as_bytes(body, cut):
    text = json.dumps(body, allow_nan=True)  # NaN, Infinity and -Infinity literals, as Python's json reads them
    return text.encode()[:cut] if cut is not None else text.encode()


def same_answer(got, want):
    if "outputs" in want:  # OIP: compare by output name
        got, want = ({o["name"]: o["data"] for o in body["outputs"]} for body in (got, want))
    assert got["predictions"] == want["predictions"]
    np.testing.assert_allclose(np.ravel(got["probabilities"]), np.ravel(want["probabilities"]), atol=1e-6)


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@pytest.mark.slow  # a few seconds: the full suite runs it
@given(bad_predict=predict_bodies, bad_infer=infer_bodies, cut=st.one_of(st.none(), st.integers(0, 40)))
def test_random_bad_json_never_500s_nor_touches_good_requests(batched, expected, bad_predict, bad_infer, cut):
    good_predict, good_infer = {"records": GOOD}, infer_body(GOOD)
    calls = [("/predict", as_bytes(bad_predict, None)), ("/predict", json.dumps(good_predict).encode()),
             ("/v2/models/flowers/infer", as_bytes(bad_infer, cut)), ("/v2/models/flowers/infer",
                                                                      json.dumps(good_infer).encode()),
             ("/predict", as_bytes(bad_predict, cut)), ("/predict", json.dumps(good_predict).encode()),
             ("/v2/models/flowers/infer", as_bytes(bad_infer, None))]
    with ThreadPoolExecutor(len(calls)) as pool:
        answers = list(pool.map(lambda call: batched.post(call[0], content=call[1],
                                                          headers={"content-type": "application/json"}), calls))
    for (path, body), answer in zip(calls, answers):
        assert answer.status_code < 500, (path, body[:300], answer.text)
        if answer.status_code != 200:
            assert set(answer.json()) == {"error", "hint"} and answer.json()["hint"], answer.text
    for k, route in ((1, "predict"), (3, "infer"), (5, "predict")):
        assert answers[k].status_code == 200, answers[k].text
        same_answer(answers[k].json(), expected[route])


def test_a_400_digit_integer_fails_its_own_request_only(batched, expected):
    poison = {"records": [GOOD[0] | {"petal length (cm)": 10 ** 400}]}
    bodies = [poison if k % 4 == 0 else {"records": GOOD} for k in range(16)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda body: batched.post("/predict", json=body), bodies))
    assert [a.status_code for a in answers] == [422 if k % 4 == 0 else 200 for k in range(16)]
    assert "'petal length (cm)'" in answers[0].json()["error"] and "too large" in answers[0].json()["error"]
    for answer in answers[1:4]:
        same_answer(answer.json(), expected["predict"])


@pytest.mark.parametrize("literal", [b"Infinity", b"-Infinity", b"NaN", b"1e400"])
def test_non_finite_literals_are_422_naming_the_field(batched, literal):
    body = json.dumps({"records": [GOOD[0] | {"sepal width (cm)": "X"}]}).replace('"X"', literal.decode()).encode()
    answer = batched.post("/predict", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "'sepal width (cm)'" in answer.json()["error"], answer.text
    tensors = infer_body(GOOD)
    tensors["inputs"][1]["data"][0] = "X"
    body = json.dumps(tensors).replace('"X"', literal.decode()).encode()
    answer = batched.post("/v2/models/flowers/infer", content=body, headers={"content-type": "application/json"})
    assert answer.status_code == 422 and "'sepal width (cm)'" in answer.json()["error"], answer.text


def test_oip_metadata_declares_bytes_for_categorical_inputs_and_checks_datatypes(batched):
    meta = batched.get("/v2/models/flowers").json()
    assert {i["name"]: i["datatype"] for i in meta["inputs"]} == {**{c: "FP64" for c in NUMERIC},
                                                                  "colour": "BYTES", "size": "BYTES"}
    wrong = infer_body(GOOD)
    wrong["inputs"][4]["datatype"] = "FP64"  # colour
    answer = batched.post("/v2/models/flowers/infer", json=wrong)
    assert answer.status_code == 422 and "'colour'" in answer.json()["error"] and "BYTES" in answer.json()["error"]
    wrong = infer_body(GOOD)
    wrong["inputs"][0]["datatype"] = "BYTES"
    answer = batched.post("/v2/models/flowers/infer", json=wrong)
    assert answer.status_code == 422 and "'sepal length (cm)'" in answer.json()["error"]
    assert "FP64" in answer.json()["error"]
    fp32 = infer_body(GOOD)
    fp32["inputs"][0]["datatype"] = "FP32"  # any numeric datatype is read as numbers
    assert batched.post("/v2/models/flowers/infer", json=fp32).status_code == 200


def test_warnings_per_row_in_predict_oip_and_metrics(batched):
    atlantis = {"colour": "Atlantis", "size": None, **{c: None for c in NUMERIC}}
    far = GOOD[0] | {"petal length (cm)": 400.0}
    body = batched.post("/predict", json={"records": [GOOD[0], atlantis, far]}).json()
    assert body["warnings"][0] == []
    kinds = {(w["column"], w["kind"]) for w in body["warnings"][1]}
    assert ("colour", "unseen_category") in kinds and ("size", "imputed") in kinds
    assert {(c, "imputed") for c in NUMERIC} <= kinds
    assert body["warnings"][2] == [{"column": "petal length (cm)", "kind": "out_of_range", "value": 400.0,
                                    "range": body["warnings"][2][0]["range"]}]
    assert "warnings" not in batched.post("/predict", json={"records": GOOD}).json()  # none: no key
    outputs = {o["name"]: o for o in batched.post("/v2/models/flowers/infer",
                                                  json=infer_body([GOOD[0], atlantis])).json()["outputs"]}
    rows = [json.loads(text) for text in outputs["warnings"]["data"]]
    assert outputs["warnings"]["datatype"] == "BYTES" and rows[0] == [] and {"column": "colour",
                                                                             "kind": "unseen_category",
                                                                             "value": "Atlantis"} in rows[1]
    text = batched.get("/metrics").text
    assert 'foundry_input_warnings_total{column="colour",kind="unseen_category"}' in text
    assert 'foundry_input_warnings_total{column="petal length (cm)",kind="out_of_range"}' in text


def test_on_unseen_reject_answers_422_naming_column_and_value(run_dir):
    with TestClient(create_app(ServeConfig(on_unseen="reject"), RunDirStore(run_dir))) as c:
        answer = c.post("/predict", json={"records": [GOOD[0], GOOD[1] | {"colour": "Atlantis"}]})
        assert answer.status_code == 422
        assert "'colour'" in answer.json()["error"] and "'Atlantis'" in answer.json()["error"]
        assert "red" in answer.json()["hint"]
        assert c.post("/predict", json={"records": GOOD}).status_code == 200
        assert c.get("/v2/models/flowers").json()["parameters"]["on_unseen"] == "reject"


def test_foundry_predict_writes_warnings_and_a_one_line_summary(run_dir, tmp_path):
    import pandas as pd
    from typer.testing import CliRunner

    from modelfoundry.cli import app as cli_app

    pd.DataFrame([GOOD[0], GOOD[1] | {"colour": "Atlantis", "petal length (cm)": None}]).to_csv(tmp_path / "rows.csv",
                                                                                              index=False)
    result = CliRunner().invoke(cli_app, ["predict", str(run_dir), str(tmp_path / "rows.csv"),
                                          "-o", str(tmp_path / "out.csv")])
    assert result.exit_code == 0, result.output
    summary = next(line for line in result.output.splitlines() if "warnings" in line)
    assert "1 of 2 rows" in summary and "unseen category ('colour' 1)" in summary
    assert "imputed ('petal length (cm)' 1)" in summary
    table = pd.read_csv(tmp_path / "out.csv", keep_default_na=False)
    assert table["warnings"][0] == ""
    assert {"column": "colour", "kind": "unseen_category", "value": "Atlantis"} in json.loads(table["warnings"][1])
    with TestClient(create_app(ServeConfig(), RunDirStore(run_dir))) as c:  # the server agrees, row for row
        body = c.post("/predict", json={"records": [GOOD[0], GOOD[1] | {"colour": "Atlantis",
                                                                          "petal length (cm)": None}]}).json()
    assert body["warnings"] == [[], json.loads(table["warnings"][1])]
    assert body["predictions"] == table["prediction"].tolist()


def test_long_client_values_are_cut_in_warnings_and_errors(batched):
    body = batched.post("/predict", json={"records": [GOOD[0] | {"colour": "x" * 100_000}]}).json()
    assert len(body["warnings"][0][0]["value"]) == 100
    tensors = infer_body(GOOD)
    tensors["inputs"][0]["datatype"] = "Y" * 100_000
    answer = batched.post("/v2/models/flowers/infer", json=tensors)
    assert answer.status_code == 422 and len(answer.json()["error"]) < 300
