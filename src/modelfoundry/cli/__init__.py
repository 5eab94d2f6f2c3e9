"""The `foundry` command: parses arguments, calls api/, shows the results (render.py). No decisions here.

One module per command group; this one assembles them in the order `foundry --help` lists them. Heavy
libraries are imported inside the commands, so `foundry --help` stays instant.
"""

from __future__ import annotations

import os
import sys

import typer

from modelfoundry.cli import (data, deployment, ensemble, estimate, generation, monitoring, registry, retraining, runs,
                              sampling, search, text)

app = typer.Typer(name="foundry", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # plain help: rendering it with rich costs ~0.1 s per call
                  help="modelfoundry: dataset -> trained, evaluated, reproducible model, from one YAML config.")

for command in (runs.validate, runs.run, runs.train, estimate.estimate, runs.evaluate, runs.cv, runs.predict,
                search.tune, search.compress, ensemble.ensemble, retraining.retrain):
    app.command()(command)
app.command("export")(deployment.export_model)
for command in (deployment.serve, generation.generate, text.zeroshot, runs.migrate, runs.datasets):
    app.command()(command)
app.command("sample")(sampling.sample)  # a GAN's rows or images
app.add_typer(data.data_app, name="data")
app.add_typer(deployment.keys_app, name="keys")
app.add_typer(registry.registry_app, name="registry")
app.add_typer(registry.models_app, name="models")
app.command("monitor")(monitoring.monitor)  # MODEL --data FILE, or report MODEL


def main() -> None:
    """The `foundry` console script. Once a command has finished, the process ends without the interpreter's
    teardown (freeing every module torch, MLflow and pandas loaded costs ~1.5 s per command): threads that
    are not daemons are joined, atexit handlers run and the standard streams are flushed first, and every file
    modelfoundry writes is closed by its owner before the command returns."""
    try:
        app()
        code = 0
    except SystemExit as exc:  # typer always ends this way
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    _exit_now(code)


def _exit_now(code: int) -> None:
    import atexit
    import threading

    # what the interpreter does at exit before tearing down: stop executors' workers and join the threads
    # that are not daemons (threading._shutdown), then the atexit handlers
    shutdown = getattr(threading, "_shutdown", None)
    if shutdown is not None:
        shutdown()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (`foundry ... | head`) or a closed stream
            pass
    os._exit(code)
