"""The dependency direction of DESIGN.md, checked on the source: a stage imports only earlier stages."""

import ast
from pathlib import Path

import modelfoundry

PACKAGE = Path(modelfoundry.__file__).parent
# what each part may import from the package, besides itself; config, errors and storage are open to all
ALLOWED = {
    "data": set(),
    "models": set(),
    "train": {"models"},
    "evaluate": {"data", "models"},
    "experiment": {"data", "models", "train", "evaluate"},
    "cv": {"data", "models", "train", "evaluate", "experiment"},
    "tune": {"data", "models", "train", "evaluate", "experiment"},
    # compress works on the exported ONNX graph, so it comes after export (DESIGN lists it before)
    "compress": {"data", "models", "train", "evaluate", "experiment", "export", "rundir"},
    "rundir": {"data", "models", "train"},
    "legacy": {"data", "rundir"},
    "manifest": set(),
    "export": {"data", "models", "rundir"},
    "tracking": set(),
    "registry": {"tracking"},
    "archive": {"registry", "tracking", "rundir"},  # an imported archive must load as a run directory does
    "serve": {"data", "export", "rundir", "models", "registry", "tracking"},
    "api": {"data", "models", "train", "evaluate", "experiment", "cv", "tune", "compress", "rundir", "manifest", "registry",
            "tracking", "export", "serve"},
    "cli": {"api", "data", "rundir", "registry", "tracking", "archive", "serve", "compress", "legacy"},
}
BASE = {"config", "errors", "storage", "redact", "reporting"}


def imports_of(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("modelfoundry."):
            names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("modelfoundry."))
    return names


def test_stages_import_only_earlier_stages():
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if part in BASE or part == "__init__":
            continue
        assert part in ALLOWED, f"new top-level module {part}: add it to ALLOWED with its place in the direction"
        bad = imports_of(path) - ALLOWED[part] - BASE - {part}
        if bad:
            problems.append(f"{path.relative_to(PACKAGE)} imports {sorted(bad)}")
    assert not problems, problems


def test_nothing_imports_the_cli():
    users = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "cli" and "cli" in imports_of(p)]
    assert not users
