"""The `foundry` command: parses arguments, calls api/, shows the results (render.py). No decisions here.

One module per command group; this one assembles them in the order `foundry --help` lists them. Heavy
libraries are imported inside the commands, so `foundry --help` stays instant.
"""

from __future__ import annotations

import typer

from modelfoundry.cli import deployment, registry, runs, search

app = typer.Typer(name="foundry", no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None,  # plain help: rendering it with rich costs ~0.1 s per call
                  help="modelfoundry: dataset -> trained, evaluated, reproducible model, from one YAML config.")

for command in (runs.validate, runs.run, runs.train, runs.evaluate, runs.cv, runs.predict, search.tune,
                search.compress):
    app.command()(command)
app.command("export")(deployment.export_model)
for command in (deployment.serve, runs.migrate, runs.datasets):
    app.command()(command)
app.add_typer(deployment.keys_app, name="keys")
app.add_typer(registry.registry_app, name="registry")
app.add_typer(registry.models_app, name="models")


def main() -> None:
    app()
