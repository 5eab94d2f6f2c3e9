"""Command groups on the registry: `foundry registry` (versions, aliases) and `foundry models` (archives)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from modelfoundry.cli.console import friendly_errors, open_console
from modelfoundry.cli.options import ReasonOption, UriOption
from modelfoundry.cli.render import say_tracking


registry_app = typer.Typer(help="Registered models: versions, aliases, lineage, rollback.", no_args_is_help=True,
                           rich_markup_mode=None)


@registry_app.command("list")
@friendly_errors
def registry_list(uri: UriOption = None) -> None:
    """List registered models with their latest version and aliases."""
    from rich.table import Table

    from modelfoundry.registry import list_models

    table = Table("model", "versions", "latest", "aliases", "updated", title_justify="left")
    for m in list_models(uri):
        aliases = ", ".join(f"{a}->v{v}" for a, v in sorted(m["aliases"].items())) or "-"
        table.add_row(m["name"], str(m["versions"]), str(m["latest"]), aliases, m["updated"] or "-")
    open_console().print(table)


@registry_app.command("show")
@friendly_errors
def registry_show(ref: Annotated[str, typer.Argument(help="NAME, NAME/VERSION or NAME@ALIAS.")],
                  uri: UriOption = None) -> None:
    """Show a model's versions, or one version's lineage and test metrics."""
    from modelfoundry.registry import show

    info = show(ref, uri)
    console = open_console()
    for version in info.get("versions", [info]):
        console.print(f"[bold]{info['name']} v{version['version']}[/]  created {version['created']}")
        for key, value in sorted(version["tags"].items()):
            console.print(f"  {key.removeprefix('foundry.')}: {value}", markup=False)
        for key, value in sorted(version["metrics"].items()):
            if not key.startswith("baseline_"):  # baselines stay in the run's report and `registry diff`
                console.print(f"  test {key}: {value:.4f}", markup=False)
    console.print(f"aliases: {info['aliases'] or 'none'}")


@registry_app.command("promote")
@friendly_errors
def registry_promote(name: str, version: str,
                     alias: Annotated[str, typer.Option("--alias", help="Alias to move.")] = "production",
                     reason: ReasonOption = "", uri: UriOption = None) -> None:
    """Point an alias (default: production) at a version."""
    from modelfoundry.registry import promote

    say_tracking(uri)
    entry = promote(name, version, alias, reason, uri)
    open_console().print(f"{name}@{alias}: v{entry['from'] or '-'} -> v{entry['to']}")


@registry_app.command("rollback")
@friendly_errors
def registry_rollback(name: str, alias: Annotated[str, typer.Option("--alias", help="Alias to move back.")] = "production",
                      reason: ReasonOption = "", uri: UriOption = None) -> None:
    """Move an alias back to the version that held it before."""
    from modelfoundry.registry import rollback

    say_tracking(uri)
    entry = rollback(name, alias, reason, uri)
    open_console().print(f"{name}@{alias}: v{entry['from']} -> v{entry['to']} (rolled back)")


@registry_app.command("history")
@friendly_errors
def registry_history(name: str, uri: UriOption = None) -> None:
    """Every alias move of a model, and every challenger a retrain gate refused: time, user, alias, from, to,
    action, reason."""
    from rich.table import Table

    from modelfoundry.registry import history

    table = Table("time (UTC)", "user", "alias", "from", "to", "action", "reason", title_justify="left")
    for e in history(name, uri):
        refused = e["action"] == "refuse"  # the alias stayed at `from`; `to` is the version refused
        table.add_row(e["time"][:19], e["user"], e["alias"], str(e["from"] or "-"),
                      f"{e['to']} (refused)" if refused else e["to"], e["action"], e["reason"] or "-")
    open_console().print(table)


@registry_app.command("diff")
@friendly_errors
def registry_diff(name: str, v1: str, v2: str, uri: UriOption = None) -> None:
    """Config keys and test metrics of two versions side by side."""
    from rich.table import Table

    from modelfoundry.registry import diff

    result = diff(name, v1, v2, uri)
    table = Table("key", f"v{v1}", f"v{v2}", title=f"{name}: v{v1} vs v{v2}", title_justify="left")
    for key, (a, b) in result["config"].items():
        table.add_row(key, str(a), str(b))
    for key, (a, b) in result["metrics"].items():
        table.add_row(f"test {key}", "-" if a is None else f"{a:.4f}", "-" if b is None else f"{b:.4f}")
    open_console().print(table)


models_app = typer.Typer(help="Move registered model versions between registries as .tar.gz archives.",
                         no_args_is_help=True, rich_markup_mode=None)


@models_app.command("export")
@friendly_errors
def models_export(ref: Annotated[str, typer.Argument(help="NAME/VERSION or NAME@ALIAS.")],
                  output: Annotated[Path, typer.Option("-o", "--output", help="Archive to write (.tar.gz).")],
                  uri: UriOption = None) -> None:
    """Write one registered version, its artifacts and metadata to a .tar.gz archive."""
    from modelfoundry.archive import export_archive

    meta = export_archive(ref, output, uri)
    open_console().print(f"Wrote {meta['name']} v{meta['version']} to [bold]{output}[/].")


@models_app.command("import")
@friendly_errors
def models_import(archive: Annotated[Path, typer.Argument(help="A .tar.gz made by `foundry models export`.")],
                  name: Annotated[Optional[str], typer.Option("--name", help="Register under this name "
                                                              "(default: the archived model's).")] = None,
                  uri: UriOption = None) -> None:
    """Register an archived version in this registry as a new version (lineage kept; aliases not copied)."""
    from modelfoundry.archive import import_archive

    say_tracking(uri)
    info = import_archive(archive, name, uri)
    open_console().print(f"Registered {info['name']} v{info['version']} (from {info['imported_from']}).")
