"""The prepared-data cache (data/prepared_cache.py): a hit gives what a fresh preparation gives, without reading the
source; every setting the arrays depend on is in the key; damaged entries are misses; chunked workers change nothing."""

from __future__ import annotations

import json
import os

import numpy as np
import pandas as pd
import pytest

from modelfoundry.config import load_config
from tests.conftest import tiny_config
from tests.unit.test_text_data import reviews


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("FOUNDRY_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache" / "prepared"


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "r.csv"
    reviews(160).to_csv(path, index=False)
    return path


def config(source, **data):
    return load_config(tiny_config(data={"source": str(source), "text": {"max_length": 16, "min_freq": 1}, **data}))


def prepare(cfg):
    from modelfoundry.data.prepare import prepare_data

    return prepare_data(cfg.data, cfg.seed)


def assert_same(a, b):
    assert list(a.X) == list(b.X) and a.task == b.task
    for split in a.X:
        assert list(a.X[split]) == list(b.X[split])  # the inputs' order (models read them by position)
        for name in a.X[split]:
            assert a.X[split][name].dtype == b.X[split][name].dtype
            np.testing.assert_array_equal(a.X[split][name], b.X[split][name])
        np.testing.assert_array_equal(a.y[split], b.y[split])
        np.testing.assert_array_equal(a.rows[split], b.rows[split])
    assert a.preprocessor.desc == b.preprocessor.desc
    assert a.target_encoder.classes_ == b.target_encoder.classes_
    assert a.info["fingerprint"] == b.info["fingerprint"] and a.info["split"] == b.info["split"]


def test_a_hit_gives_what_a_fresh_preparation_gives_without_reading_the_source(cache_dir, source, monkeypatch):
    import modelfoundry.data.prepare as prepare_module

    cfg = config(source)
    first = prepare(cfg)
    fresh = prepare(config(source, cache=False))
    assert first.info["cache"]["hit"] is False and first.info["cache"]["stored"] is True
    assert "cache" not in fresh.info and not any(cache_dir.parent.glob("prepared/*/fresh"))

    def unreadable(*args, **kwargs):
        raise AssertionError("a hit must not read the source")

    monkeypatch.setattr(prepare_module, "load_source", unreadable)
    second = prepare(cfg)
    assert second.info["cache"]["hit"] is True and second.info["cache"]["key"] == first.info["cache"]["key"]
    assert second.info["cache"]["saved_s"] >= 0 and second.info["cache"]["prepare_s"] == first.info["cache"]["prepare_s"]
    assert_same(second, fresh)
    # what the run reads besides the arrays: each split's raw rows (Parquet) and texts, the fitted preprocessing
    for split in ("train", "val", "test"):
        pd.testing.assert_frame_equal(second.frames[split], fresh.frames[split])
        assert second.texts[split] == fresh.texts[split]
    monkeypatch.undo()  # the scikit-learn preprocessing (not cached: only tools ask for it) is fitted again
    rows = reviews(160).drop(columns="target").head(5)
    for name, expected in fresh.preprocessor.fitted.transform(rows).items():
        np.testing.assert_array_equal(second.preprocessor.transform(rows)[name], expected)
    assert second.preprocessor.fitted.feature_names_ == fresh.preprocessor.fitted.feature_names_


CHANGES = {  # one setting the arrays depend on, changed
    "a feature override": {"features": {"stars": {"scale": "minmax"}}},
    "the split seed": {"split": {"seed": 11}},
    "max_rows": {"max_rows": 120},
    "text.max_length": {"text": {"max_length": 12, "min_freq": 1}},
    "train_fraction": {"split": {"train_fraction": 0.5}},
}


def test_a_setting_the_arrays_depend_on_misses_and_model_or_training_hits(cache_dir, source):
    base = prepare(config(source))
    keys = {base.info["cache"]["key"]}
    for what, change in CHANGES.items():
        data = prepare(config(source, **change))
        assert data.info["cache"]["hit"] is False, what
        keys.add(data.info["cache"]["key"])
    assert len(keys) == len(CHANGES) + 1
    other = load_config(tiny_config(data={"source": str(source), "text": {"max_length": 16, "min_freq": 1},
                                          "cache": True, "workers": 2, "balance": {"class_weights": "balanced"}},
                                    model={"name": "mlp", "hidden": [32, 4]}, training={"epochs": 9}, seed=0))
    hit = prepare(other)
    assert hit.info["cache"]["hit"] is True and hit.class_weights is not None  # weights: after the cache
    assert prepare(load_config(tiny_config(**{**tiny_config(), "seed": 5,
                                              "data": {"source": str(source), "text": {"max_length": 16,
                                                                                       "min_freq": 1}}}))
                   ).info["cache"]["hit"] is False  # the top-level seed is the split seed


def test_a_file_changed_in_place_with_its_size_and_times_kept_misses(cache_dir, source):
    first = prepare(config(source))
    stat = source.stat()
    text = source.read_text()
    changed = text.replace("Paris", "Parix", 1)
    assert len(changed) == len(text)
    source.write_text(changed)
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns))  # same size, same mtime
    second = prepare(config(source))
    assert second.info["cache"]["hit"] is False
    assert second.info["fingerprint"]["sha256"] != first.info["fingerprint"]["sha256"]


def test_the_hash_index_skips_unchanged_files_and_sees_a_rewrite(tmp_path, monkeypatch):
    from modelfoundry.data import fingerprint

    monkeypatch.setenv("FOUNDRY_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr(fingerprint, "RACY_NS", 0)  # the file counts as settled at once
    path = tmp_path / "f.csv"
    path.write_text("a,b\n1,2\n")
    first = fingerprint.file_sha256(path)
    index = json.loads((tmp_path / "cache" / "file-hashes.json").read_text())
    assert index[str(path)]["sha256"] == first
    index[str(path)]["sha256"] = "0" * 64  # the index answers for an unchanged file: nothing is read
    (tmp_path / "cache" / "file-hashes.json").write_text(json.dumps(index))
    assert fingerprint.file_sha256(path) == "0" * 64
    mtime = path.stat().st_mtime_ns
    path.write_text("a,b\n1,3\n")  # same size; the mtime put back: the ctime still moves
    os.utime(path, ns=(mtime, mtime))
    assert fingerprint.file_sha256(path) not in (first, "0" * 64)


def entry(cache_dir):
    (folder,) = [p for p in cache_dir.iterdir() if not p.name.startswith(".")]
    return folder


@pytest.mark.parametrize("damage", ["truncated array", "broken meta", "foreign format", "object array",
                                    "missing file"])
def test_a_damaged_entry_is_a_miss_and_is_written_again(cache_dir, source, damage):
    cfg = config(source)
    first = prepare(cfg)
    folder = entry(cache_dir)
    meta = json.loads((folder / "meta.json").read_text())
    target = folder / "train.X.numeric.npy"
    if damage == "truncated array":
        target.write_bytes(target.read_bytes()[:-8])
    elif damage == "broken meta":
        (folder / "meta.json").write_text("{not json")
    elif damage == "foreign format":
        (folder / "meta.json").write_text(json.dumps({**meta, "format": 999}))
    elif damage == "missing file":
        (folder / "val.y.npy").unlink()
    else:  # an object array (it would need pickle to load), its size recorded so only allow_pickle=False stops it
        with open(target, "wb") as handle:
            np.save(handle, np.array([{"x": 1}] * 3, dtype=object), allow_pickle=True)
        meta["files"][target.name] = target.stat().st_size
        (folder / "meta.json").write_text(json.dumps(meta))
    again = prepare(cfg)
    assert again.info["cache"]["hit"] is False and again.info["cache"]["stored"] is True
    assert_same(again, first)
    assert prepare(cfg).info["cache"]["hit"] is True  # rewritten


def test_an_object_array_is_never_stored(cache_dir):
    from modelfoundry.data import prepared_cache

    arrays = {"X": {"train": {"numeric": np.array([object(), object()], dtype=object)}},
              "y": {"train": np.zeros(2)}, "rows": {"train": np.arange(2)}}
    assert prepared_cache.save("k" * 64, arrays, {"task": "x", "prepare_s": 0.0}) is False
    assert not any(cache_dir.glob("k*"))


def test_the_least_recently_used_entries_go_past_the_size_cap(cache_dir, source, monkeypatch):
    import time

    names = []
    for seed in (1, 2, 3):
        data = prepare(config(source, split={"seed": seed}))
        names.append(data.info["cache"]["key"])
        time.sleep(0.02)
    folders = {p.name[:16]: p for p in cache_dir.iterdir()}
    assert set(folders) == set(names)
    size = json.loads((folders[names[0]] / "meta.json").read_text())["bytes"]
    assert prepare(config(source, split={"seed": 1})).info["cache"]["hit"] is True  # seed 1: used last now
    monkeypatch.setenv("FOUNDRY_CACHE_MAX_MB", str(2.5 * size / (1 << 20)))  # room for two entries
    prepare(config(source, split={"seed": 4}))
    left = {p.name[:16] for p in cache_dir.iterdir()}
    assert names[0] in left and names[1] not in left and names[2] not in left and len(left) == 2


def test_data_cache_false_writes_nothing(cache_dir, source):
    data = prepare(config(source, cache=False))
    assert "cache" not in data.info and not cache_dir.exists()


@pytest.mark.slow  # two trainings (streamed and preloaded): ~5 s on 2 busy cores
def test_a_large_entry_is_memory_mapped_and_trains_exactly_as_fresh_arrays(cache_dir, monkeypatch):
    from modelfoundry.data import prepared_cache
    from modelfoundry.experiment import fit_config
    from modelfoundry.models.inference import predict_outputs

    monkeypatch.setattr(prepared_cache, "MMAP_BYTES", 0)
    cfg = load_config(tiny_config(training={"epochs": 2, "batch_size": 16, "num_threads": 1}))
    fresh = prepare(cfg)
    hit = prepare(cfg)
    assert hit.info["cache"]["hit"] is True and isinstance(hit.X["train"]["numeric"], np.memmap)
    outputs = [predict_outputs(fit_config(cfg, data).model, data.X["test"], data.task) for data in (fresh, hit)]
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_cv_folds_hit_the_cache_on_a_second_run(cache_dir, monkeypatch):
    import modelfoundry.data.prepare as prepare_module
    from modelfoundry.cv import cross_validate

    fitted = []
    real = prepare_module.fit_transform
    monkeypatch.setattr(prepare_module, "fit_transform", lambda *a, **k: fitted.append(1) or real(*a, **k))
    cfg = load_config(tiny_config(training={"epochs": 1, "batch_size": 32, "num_threads": 1}))
    first = cross_validate(cfg, folds=2)
    assert len(fitted) == 2
    second = cross_validate(cfg, folds=2)
    assert len(fitted) == 2  # both folds from the cache
    assert second.mean == first.mean


def test_chunked_workers_give_what_one_process_gives(tmp_path):
    from modelfoundry.data.chunked import plan_workers, transform_parts
    from modelfoundry.data.portable import apply_portable

    frame = reviews(300)
    frame.loc[::7, "stars"] = np.nan
    cfg = config(tmp_path / "r.csv", cache=False)
    frame.to_csv(tmp_path / "r.csv", index=False)
    data = prepare(cfg)
    parts = {"train": frame.iloc[:250], "test": frame.iloc[250:]}
    origins = {name: name for name in parts}
    whole = {name: apply_portable(data.preprocessor.desc, part) for name, part in parts.items()}
    for workers in (1, 2):  # 7 + 2 chunks, in this process or on 2 workers
        chunked = transform_parts(data.preprocessor.desc, parts, origins, True, workers, 40)
        for split in parts:
            assert list(chunked[split]) == list(whole[split]) == ["numeric", "tokens", "attention_mask"]
            for name in whole[split]:
                assert chunked[split][name].dtype == whole[split][name].dtype
                np.testing.assert_array_equal(chunked[split][name], whole[split][name])
    assert plan_workers(10_000, 1000, 3) == 3 and plan_workers(10_000, 1000, 1) == 1
    assert plan_workers(500, 1000, "auto") == 1 and plan_workers(10**6, 1000, "auto", text=True) == 1


def test_prepare_data_with_workers_equals_one_process(tmp_path, cache_dir):
    frame = pd.DataFrame({"a": np.random.default_rng(0).normal(size=2500), "b": np.tile(["x", "y", "z", "w", "v"], 500),
                          "target": np.tile([0, 1], 1250)})
    frame.to_csv(tmp_path / "t.csv", index=False)
    made = [prepare(load_config(tiny_config(data={"source": str(tmp_path / "t.csv"), "cache": False,
                                                  "workers": workers, "chunk_rows": 1000}))) for workers in (1, 2)]
    assert_same(made[1], made[0])


def test_the_splits_of_a_finished_run_come_from_the_cache_while_the_source_is_unchanged(cache_dir, source,
                                                                                        monkeypatch):
    import modelfoundry.data.prepare as prepare_module
    from modelfoundry.errors import DataError

    cfg = config(source)
    made = prepare(cfg)
    sha = made.info["fingerprint"]["sha256"]
    real = prepare_module.load_source
    monkeypatch.setattr(prepare_module, "load_source", lambda *a: (_ for _ in ()).throw(AssertionError("read")))
    rebuilt = prepare_module.rebuild_splits(cfg.data, cfg.seed, sha, "RUN")
    for split in ("train", "val", "test"):
        pd.testing.assert_frame_equal(rebuilt[split], made.frames[split])
    monkeypatch.setattr(prepare_module, "load_source", real)
    source.write_text(source.read_text().replace("Rome", "Roma", 1))
    with pytest.raises(DataError, match="changed since RUN was trained"):
        prepare_module.rebuild_splits(cfg.data, cfg.seed, sha, "RUN")


def test_spawned_workers_where_fork_is_missing_give_the_same_arrays(tmp_path, monkeypatch):
    from modelfoundry.data import chunked
    from modelfoundry.data.portable import apply_portable

    frame = reviews(120)
    frame.to_csv(tmp_path / "r.csv", index=False)
    data = prepare(config(tmp_path / "r.csv", cache=False))
    monkeypatch.setattr(chunked.multiprocessing, "get_all_start_methods", lambda: ["spawn"])
    made = chunked.transform_parts(data.preprocessor.desc, {"all": frame}, {"all": "all"}, True, 2, 50)
    for name, expected in apply_portable(data.preprocessor.desc, frame).items():
        np.testing.assert_array_equal(made["all"][name], expected)
