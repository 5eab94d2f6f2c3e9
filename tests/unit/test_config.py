import textwrap

import pytest

from modelfoundry.config import config_hash, dump_config, load_config
from modelfoundry.errors import ConfigError
from tests.conftest import tiny_config


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(textwrap.dedent(text))
    return path


def test_defaults_are_filled_in_and_resolved_config_round_trips(tmp_path):
    cfg = load_config(tiny_config())
    assert cfg.training.optimizer.name == "adamw" and cfg.data.split.val == 0.15
    path = tmp_path / "resolved.yaml"
    path.write_text(dump_config(cfg))
    again = load_config(path)
    assert again == cfg and config_hash(again) == config_hash(cfg)


def test_unknown_key_names_path_line_and_suggestion(tmp_path):
    path = write(tmp_path, """\
        name: x
        data:
          source: sklearn:iris
        model:
          name: mlp
          hiddne: [4]
        """)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    text = str(err.value)
    assert "model.hiddne (line 6)" in text and "Did you mean 'hidden'?" in text


def test_all_problems_are_collected_at_once(tmp_path):
    path = write(tmp_path, """\
        name: x
        data: {source: sklearn:iris, featurs: {}}
        training:
          optimizer: {lr: -1}
          batch_size: 0
        """)
    text = str(pytest.raises(ConfigError, load_config, path).value)
    assert "3 problems" in text
    assert "training.optimizer.lr (line 4)" in text and "greater than 0" in text
    assert "training.batch_size (line 5)" in text and "data.featurs" in text


def test_unknown_model_and_choice_values_suggest_valid_names():
    text = str(pytest.raises(ConfigError, load_config, tiny_config(model={"name": "mpl"})).value)
    assert "model.name" in text and "Did you mean 'mlp'?" in text and "cnn" in text
    bad = tiny_config(training={"optimizer": {"name": "adamm"}})
    assert "Did you mean 'adam'" in str(pytest.raises(ConfigError, load_config, bad).value)


def test_optimizer_rejects_keys_of_another_optimizer():
    bad = tiny_config(training={"optimizer": {"name": "sgd", "betas": [0.9, 0.99]}})
    text = str(pytest.raises(ConfigError, load_config, bad).value)
    assert "betas does not apply to sgd" in text
    bad = tiny_config(training={"optimizer": {"name": "sgd", "nesterov": True}})
    assert "nesterov needs momentum" in str(pytest.raises(ConfigError, load_config, bad).value)


def test_monitor_must_be_known():
    bad = tiny_config(training={"early_stopping": {"monitor": "val_acc"}})
    text = str(pytest.raises(ConfigError, load_config, bad).value)
    assert "val_accuracy" in text


def test_yaml_syntax_error_and_missing_file(tmp_path):
    path = write(tmp_path, "name: x\ndata: [source: a\n")
    text = str(pytest.raises(ConfigError, load_config, path).value)
    assert "not valid YAML" in text and "line" in text
    assert "does not exist" in str(pytest.raises(ConfigError, load_config, tmp_path / "nope.yaml").value)
    assert "mapping" in str(pytest.raises(ConfigError, load_config, write(tmp_path, "- a\n- b\n")).value)


def test_split_fractions_and_metric_names_are_checked():
    bad = tiny_config(data={"source": "sklearn:iris", "split": {"val": 0.5, "test": 0.45}})
    assert "at least 10%" in str(pytest.raises(ConfigError, load_config, bad).value)
    bad = tiny_config(evaluation={"metrics": ["acuracy"]})
    assert "Did you mean 'accuracy'" in str(pytest.raises(ConfigError, load_config, bad).value)


def test_duplicate_keys_are_rejected_with_both_lines(tmp_path):
    path = write(tmp_path, """\
        name: x
        data:
          source: sklearn:iris
          target: target
          source: sklearn:wine
        """)
    with pytest.raises(ConfigError, match=r"'data\.source' is given twice, at lines 3 and 5"):
        load_config(path)
    top = write(tmp_path, "name: a\nseed: 1\nname: b\n")
    with pytest.raises(ConfigError, match=r"'name' is given twice, at lines 1 and 3"):
        load_config(top)
    # the same key in two different sections, and 1 next to '1', are not duplicates
    ok = write(tmp_path, "name: x\ndata:\n  source: sklearn:iris\n  features:\n    '1': {type: numeric}\n"
                         "training:\n  epochs: 2\n")
    assert load_config(ok).training.epochs == 2


def test_unreadable_config_files_are_config_errors(tmp_path):
    latin = tmp_path / "latin.yaml"
    latin.write_bytes(b"name: x\ndata:\n  source: caf\xe9.csv\n")
    with pytest.raises(ConfigError, match=r"not UTF-8 text: byte 0xe9 at line 3"):
        load_config(latin)
    deep = tmp_path / "deep.yaml"
    deep.write_text("name: x\nmodel: " + "[" * 5000 + "]" * 5000 + "\n")
    with pytest.raises(ConfigError, match="nested too deeply"):
        load_config(deep)
    with pytest.raises(ConfigError, match="is a directory, not a YAML file"):
        load_config(tmp_path)
    complex_key = write(tmp_path, "? [1, 2]\n: x\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(complex_key)


def test_values_torch_numpy_and_sklearn_cannot_take_are_config_errors():
    for sections, where in [({"seed": -1}, "seed"), ({"seed": 2 ** 64}, "seed"),
                            ({"data": {"source": "sklearn:iris", "split": {"seed": 2 ** 32}}}, "data.split.seed"),
                            ({"training": {"num_threads": 2 ** 40}}, "training.num_threads")]:
        with pytest.raises(ConfigError, match=where.replace(".", r"\.")):
            load_config(tiny_config(**sections))
    assert load_config(tiny_config(seed=2 ** 32 - 1)).seed == 2 ** 32 - 1
    with pytest.raises(ConfigError, match=r"training\.optimizer\.lr.*finite number; got inf"):
        load_config(tiny_config(training={"optimizer": {"lr": float("inf")}}))
    with pytest.raises(ConfigError, match=r"class weights must be between 0 and 1e6, got 0: -1"):
        load_config(tiny_config(data={"source": "sklearn:iris", "balance": {"class_weights": {0: -1, 1: 2}}}))


def test_aliases_that_expand_to_billions_of_values_are_refused_at_once(tmp_path):
    import time

    lines = ["name: lol", "data: {source: sklearn:iris}", "l0: &l0 [" + ", ".join(["x"] * 10) + "]"]
    lines += [f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 10) + "]" for i in range(1, 10)]  # 10**10 values
    path = write(tmp_path, "\n".join(lines) + "\n")
    started = time.perf_counter()
    with pytest.raises(ConfigError, match="expands to more than 1,000,000 values"):
        load_config(path)
    assert time.perf_counter() - started < 2
    shared = write(tmp_path, "name: x\ndata: {source: sklearn:iris}\ntune:\n  space:\n    model.hidden.0: &b {type: "
                             "int, low: 8, high: 64}\n    model.hidden.1: *b\n")  # a few aliases stay fine
    assert load_config(shared).tune.space["model.hidden.1"].high == 64


def test_monitor_section_errors_name_the_key_and_the_fix(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(textwrap.dedent("""\
        name: x
        data: {source: sklearn:iris, target: target}
        monitor:
          window: {rows: 5}
          shadow: "runs/some dir"
        """))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert "monitor.window.rows (line 4)" in err.value.message
    assert "monitor.shadow (line 5): a registered model reference is needed" in err.value.message
    path.write_text("name: x\ndata: {source: sklearn:iris, target: target}\n"
                    "monitor: {log: {hash_columns: [id], exclude_columns: [id]}}\n")
    with pytest.raises(ConfigError, match="id is both hashed and excluded"):
        load_config(path)
