"""Credentials in URIs never reach a person or a store: the redaction helper and every place it is applied
without a tracking store (CLI errors, tracebacks, tune's storage)."""

from __future__ import annotations

import traceback
from types import SimpleNamespace

import pytest
import typer
from typer.testing import CliRunner

from modelfoundry.cli.console import friendly_errors
from modelfoundry.cli.render import print_tune_summary as _print_tune_summary
from modelfoundry.errors import ConfigError, RegistryError
from modelfoundry.redact import has_secret, redact, redact_exception

SECRET = "hunter2"


@pytest.mark.parametrize("text, expected", [
    (f"http://user:{SECRET}@host:5000/api", "http://user:***@host:5000/api"),
    (f"postgresql://u:{SECRET}@db/mlflow", "postgresql://u:***@db/mlflow"),
    (f"mysql+pymysql://u:p@ss{SECRET}@db/x", "mysql+pymysql://u:***@db/x"),  # a password holding '@'
    (f"Cannot open 'postgresql://u:{SECRET}@h/db': refused", "Cannot open 'postgresql://u:***@h/db': refused"),
    (f"https://h/data.csv?password={SECRET}&x=1&token={SECRET}#top", "https://h/data.csv?password=***&x=1&token=***#top"),
    (f"s3://b/k?X-Amz-Signature={SECRET}&api_key={SECRET}", "s3://b/k?X-Amz-Signature=***&api_key=***"),
    ("sqlite:////abs/path/foundry.db", "sqlite:////abs/path/foundry.db"),
    ("http://host:8080/a@b", "http://host:8080/a@b"),  # a port, not a password
    ("postgresql://user@host/db", "postgresql://user@host/db"),  # a user without a password
])
def test_redact(text, expected):
    assert redact(text) == expected
    assert redact(redact(text)) == expected  # idempotent
    assert has_secret(text) == (text != expected)


def test_redact_exception_cleans_the_whole_chain():
    try:
        try:
            raise ValueError(f"connect to postgresql://u:{SECRET}@db failed")
        except ValueError as inner:
            raise RuntimeError(f"tracking at http://a:{SECRET}@h is down") from inner
    except RuntimeError as exc:
        redact_exception(exc)
        shown = "".join(traceback.format_exception(exc))
    assert SECRET not in shown and "postgresql://u:***@db" in shown and "http://a:***@h" in shown


def command_raising(exc: BaseException):
    app = typer.Typer()

    @app.command()
    @friendly_errors
    def fail() -> None:
        raise exc

    return app


def test_cli_errors_are_redacted_and_literal():
    error = RegistryError(f"The store http://ops:{SECRET}@mlflow.internal said no [bold]x[/bold].",
                          f"pip install 'psycopg[binary]' or use postgresql://u:{SECRET}@h/db")
    result = CliRunner().invoke(command_raising(error), [])
    assert result.exit_code == 6 and SECRET not in result.output
    assert "http://ops:***@mlflow.internal said no [bold]x[/bold]." in result.output  # markup shown, not applied
    assert "pip install 'psycopg[binary]' or use postgresql://u:***@h/db" in result.output
    result = CliRunner().invoke(command_raising(OSError(13, "Permission denied", f"http://u:{SECRET}@h/x")), [])
    assert result.exit_code == 1 and SECRET not in result.output and "http://u:***@h/x" in result.output


def test_a_traceback_of_an_unexpected_error_shows_no_credential():
    result = CliRunner().invoke(command_raising(KeyError(f"sqlite driver for mysql://u:{SECRET}@h")), [])
    assert isinstance(result.exception, KeyError)
    assert SECRET not in "".join(traceback.format_exception(result.exception))


def test_tune_storage_errors_and_summary_are_redacted(tmp_path, capsys):
    from modelfoundry.tune.study import open_storage

    with pytest.raises(ConfigError) as info:
        open_storage(f"postgresql://ops:{SECRET}@127.0.0.1:1/optuna")
    assert SECRET not in str(info.value) and "postgresql://ops:***@127.0.0.1:1/optuna" in info.value.message
    states = {"COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
    result = SimpleNamespace(summary={"states": states, "trials": 0, "base_config_value": None, "best": None,
                                      "plots": {}}, metric="accuracy", direction="maximize", study_name="s",
                             out_dir=tmp_path, storage=f"postgresql://ops:{SECRET}@db/optuna", wall_s=1.0, rows=[],
                             recovered=[], interrupted=False, extras={})
    _print_tune_summary(result)
    shown = capsys.readouterr().out
    assert SECRET not in shown and "postgresql://ops:***@db/optuna" in "".join(shown.split())


def test_describe_uri_redacts_and_makes_sqlite_paths_absolute(tmp_path, monkeypatch):
    from modelfoundry.tracking import describe_uri

    monkeypatch.chdir(tmp_path)
    assert describe_uri(f"http://u:{SECRET}@h:5000") == "http://u:***@h:5000"
    assert describe_uri("sqlite:///rel/foundry.db") == f"sqlite:///{tmp_path / 'rel' / 'foundry.db'}"
