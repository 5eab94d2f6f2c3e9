"""The architecture of DESIGN.md, checked on the source so that it can fail.

1. Dependency direction: a stage (a top-level module or package of modelfoundry) imports only the stages
   before it. Every way of importing counts: absolute and relative imports (`from ..train import loop`,
   `from . import x`), `importlib.import_module(...)` and `__import__(...)` with a literal, relative or
   f-string target, and, where the target is computed (a lazy-export table), every module path written in
   the file.
2. Heavy libraries (torch, pandas, sklearn, ...) are never imported at module top in a module that
   `foundry --help` loads: they are imported inside the functions that use them.

The checkers take a package root, so the tests at the bottom show them failing on a synthetic package.
"""

import ast
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import modelfoundry

PACKAGE = Path(modelfoundry.__file__).parent
# what each part may import from the package, besides itself; config, errors and storage are open to all
ALLOWED = {
    "data": set(),
    "models": set(),
    "train": {"data", "models"},  # data/augment.py: the training batches' random changes
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
    "merged_export": {"data", "models", "rundir", "export"},  # foundry export --merge: beside the ONNX export
    "tracking": set(),
    "registry": {"tracking"},
    "archive": {"registry", "tracking", "rundir"},  # an imported archive must load as a run directory does
    "serve": {"data", "export", "rundir", "models", "registry", "tracking", "ensemble"},  # serve/group.py
    # ensembles combine trained runs (evaluated, exported as one graph, registered); api composes them
    "ensemble": {"data", "models", "train", "evaluate", "rundir", "export", "registry", "tracking"},
    # monitor plugs into serve as an extension (drift, OOD, request log, feedback, shadow)
    "monitor": {"data", "models", "evaluate", "rundir", "export", "registry", "tracking", "serve"},
    "api": {"monitor", "data", "models", "train", "evaluate", "experiment", "cv", "tune", "compress", "rundir", "manifest", "registry",
            "tracking", "export", "merged_export", "serve", "ensemble"},
    "cli": {"monitor", "api", "data", "rundir", "registry", "tracking", "archive", "serve", "compress", "legacy"},
}
BASE = {"config", "errors", "storage", "redact", "reporting", "artifacts"}  # artifacts: run-directory paths and records
# `from modelfoundry import run` goes through the package's lazy public API, which composes api/
ROOT_NAMES_PART = "api"
HEAVY = {"torch", "pandas", "sklearn", "scipy", "mlflow", "optuna", "onnx", "onnxruntime", "fastapi", "uvicorn",
         "transformers", "matplotlib"}
IMPORT_CALLS = {"import_module", "__import__"}


def module_name(path: Path, root: Path, package: str) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join((package, *(parts[:-1] if parts[-1] == "__init__" else parts)))


def _resolve(relative: str, level: int, current: list[str]) -> str:
    """`from ...x import` seen from package `current` (a list of its dotted parts) as an absolute name."""
    base = current[:len(current) - (level - 1)] if level > 1 else current
    return ".".join(base + ([relative] if relative else []))


def _call_target(node: ast.Call, current: list[str]) -> str | None:
    """The module an import_module/__import__ call names, '' when it is computed, None when not such a call."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else None
    if name not in IMPORT_CALLS or not node.args:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.JoinedStr):  # f"modelfoundry.api.{name}": the constant head names the package
        head = arg.values[0] if arg.values else None
        arg = ast.Constant(head.value.rstrip(".")) if isinstance(head, ast.Constant) and head.value.strip(".") else arg
    if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
        return ""
    text = arg.value
    if text.startswith("."):  # import_module(".x", package=...): relative to the package given, else this one
        anchor = next((k.value for k in node.keywords if k.arg == "package"), None)
        base = anchor.value.split(".") if isinstance(anchor, ast.Constant) else current
        level = len(text) - len(text.lstrip("."))
        return _resolve(text.lstrip("."), level, base)
    return text


def import_targets(path: Path, root: Path, package: str) -> set[str]:
    """Absolute names of every module of `package` that the file at `path` imports, however it does so."""
    current = module_name(path, root, package).split(".")
    if path.name != "__init__.py":
        current = current[:-1]  # the package the module lives in
    tree = ast.parse(path.read_text())
    found, computed = set(), False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(node.module or "", node.level, current) if node.level else node.module
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names if a.name != "*")
        elif isinstance(node, ast.Call):
            target = _call_target(node, current)
            if target == "":
                computed = True
            elif target:
                found.add(target)
    if computed:  # a lazy-export table: every module path written in the file is a possible target
        found.update(n.value for n in ast.walk(tree) if isinstance(n, ast.Constant) and isinstance(n.value, str)
                     and n.value.startswith(f"{package}.") and n.value.replace(".", "").replace("_", "").isalnum())
    return {name for name in found if name == package or name.startswith(f"{package}.")}


def part_of(name: str, root: Path) -> str | None:
    """The stage a module name belongs to; None for the package itself."""
    parts = name.split(".")
    if len(parts) < 2:
        return None
    if (root / parts[1]).is_dir() or (root / f"{parts[1]}.py").is_file():
        return parts[1]
    return ROOT_NAMES_PART  # a name the package's lazy public API exports


def violations(root: Path, package: str, allowed: dict[str, set[str]], base: set[str]) -> list[str]:
    """'file imports [stages]' for every file that imports a stage it may not; a stage not in `allowed` is one
    too (its place in the direction has to be decided)."""
    problems = []
    for path in sorted(root.rglob("*.py")):
        part = path.relative_to(root).parts[0].removesuffix(".py")
        if part in base or part == "__init__":  # the package's own __init__ is the lazy public API
            continue
        if part not in allowed:
            problems.append(f"new top-level module {part}: add it to ALLOWED with its place in the direction")
            continue
        parts = {part_of(name, root) for name in import_targets(path, root, package)} - {None}
        bad = parts - allowed[part] - base - {part}
        if bad:
            problems.append(f"{path.relative_to(root)} imports {sorted(bad)}")
    return problems


def heavy_imports_at_top(path: Path, heavy: set[str]) -> list[str]:
    """Heavy libraries a module imports when it is imported: at module level or in a class body, outside
    `if TYPE_CHECKING:` and outside functions (an import_module call with a literal name counts too)."""
    found = []

    def visit(statements: list[ast.stmt]) -> None:
        for node in statements:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
                visit(node.orelse)
                continue
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
                names = [node.module]
            elif not hasattr(node, "body"):  # a simple statement: an import_module call runs now, unless in a lambda
                lazy = {id(c) for n in ast.walk(node) if isinstance(n, ast.Lambda) for c in ast.walk(n)}
                names = [_call_target(c, []) for c in ast.walk(node) if isinstance(c, ast.Call) and id(c) not in lazy
                         and _call_target(c, []) not in (None, "")]
            found.extend(f"{path.name}:{node.lineno} imports {n}" for n in names if n.split(".")[0] in heavy)
            for child in ("body", "orelse", "finalbody", "handlers"):
                block = getattr(node, child, None)
                if isinstance(block, list) and block and isinstance(block[0], (ast.stmt, ast.ExceptHandler)):
                    visit([s for item in block for s in (item.body if isinstance(item, ast.ExceptHandler) else [item])])

    visit(ast.parse(path.read_text()).body)
    return found


HELP_MODULES = """
import sys
from modelfoundry.cli import app  # main() is app() plus a fast exit, which would end this script early
sys.argv = ["foundry", "--help"]
try:
    app()
except SystemExit:
    pass
print("MODULES", *sorted(m for m in sys.modules if m == "modelfoundry" or m.startswith("modelfoundry.")))
print("HEAVY", *sorted(m for m in sys.modules if m.split(".")[0] in HEAVY))
"""


def help_modules() -> tuple[list[str], list[str]]:
    """(modelfoundry modules, heavy modules) loaded by `foundry --help` in a fresh interpreter."""
    code = f"HEAVY = {sorted(HEAVY)!r}\n" + HELP_MODULES
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "COLUMNS": "100"}, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = {line.split(" ")[0]: line.split()[1:] for line in done.stdout.splitlines()
             if line.startswith(("MODULES", "HEAVY"))}
    return lines["MODULES"], lines["HEAVY"]


def path_of(name: str, root: Path = PACKAGE) -> Path:
    rel = Path(*name.split(".")[1:])
    return root / rel / "__init__.py" if (root / rel).is_dir() else root / f"{rel}.py"


# ------------------------------------------------------------------------------------------ on modelfoundry


def test_stages_import_only_earlier_stages():
    problems = violations(PACKAGE, "modelfoundry", ALLOWED, BASE)
    assert not problems, problems


def test_nothing_imports_the_cli():
    users = [p for p in PACKAGE.rglob("*.py") if p.relative_to(PACKAGE).parts[0] != "cli"
             and "cli" in {part_of(n, PACKAGE) for n in import_targets(p, PACKAGE, "modelfoundry")}]
    assert not users


def test_the_lazy_export_tables_are_seen():
    """The computed importlib targets of the lazy APIs are found (else the direction check is blind to them)."""
    assert "modelfoundry.api" in import_targets(PACKAGE / "__init__.py", PACKAGE, "modelfoundry")
    assert "modelfoundry.api" in import_targets(PACKAGE / "api" / "__init__.py", PACKAGE, "modelfoundry")


def test_help_loads_no_heavy_library_and_its_modules_import_none_at_top():
    modules, heavy = help_modules()
    assert "modelfoundry.cli" in modules and len(modules) > 3, modules
    problems = [p for name in modules for p in heavy_imports_at_top(path_of(name), HEAVY)]
    assert not problems, problems
    assert not heavy, f"foundry --help loaded {heavy}"


# ------------------------------------------------------------------------------- the checkers can fail


def write_package(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return root / "fakepkg"


def test_a_stage_importing_a_later_stage_is_caught_relatively_and_through_importlib(tmp_path):
    pkg = write_package(tmp_path, {
        "fakepkg/__init__.py": "",
        "fakepkg/errors.py": "",
        "fakepkg/data/__init__.py": "from . import clean\nfrom ..errors import *\n",
        "fakepkg/data/clean.py": "import numpy\n",
        "fakepkg/data/relative.py": "from ..train import loop\n",
        "fakepkg/data/relative_package.py": "from .. import train\n",
        "fakepkg/data/literal.py": "import importlib\nloop = importlib.import_module('fakepkg.train.loop')\n",
        "fakepkg/data/dunder.py": "def f():\n    return __import__('fakepkg.train')\n",
        "fakepkg/data/anchored.py": "from importlib import import_module\n"
                                    "m = import_module('.loop', package='fakepkg.train')\n",
        "fakepkg/data/fstring.py": "import importlib\ndef f(n):\n    return importlib.import_module(f'fakepkg.train.{n}')\n",
        "fakepkg/data/table.py": "import importlib\nTABLE = {'fit': 'fakepkg.train.loop'}\n"
                                 "def f(n):\n    return importlib.import_module(TABLE[n])\n",
        "fakepkg/train/__init__.py": "",
        "fakepkg/train/loop.py": "from ..data import clean\nfrom fakepkg.data import relative\n",
        "fakepkg/tool.py": "from .data import clean\n",
    })
    problems = violations(pkg, "fakepkg", {"data": set(), "train": {"data"}, "tool": {"data"}}, {"errors"})
    flagged = sorted(p.split(" ")[0] for p in problems)
    assert flagged == sorted(f"data/{n}.py" for n in ("relative", "relative_package", "literal", "dunder",
                                                       "anchored", "fstring", "table")), problems
    assert all(p.endswith("imports ['train']") for p in problems), problems
    # a module-level stage (tool.py) is checked like a package; a stage missing from the table is refused
    assert violations(pkg, "fakepkg", {"data": set(), "train": {"data"}}, {"errors"})[-1].startswith(
        "new top-level module tool")
    assert violations(pkg, "fakepkg", {"data": {"train"}, "train": {"data"}, "tool": set()}, {"errors"}) == [
        "tool.py imports ['data']"]


def test_a_heavy_import_at_module_top_is_caught(tmp_path):
    path = tmp_path / "commands.py"
    path.write_text(textwrap.dedent("""
        from __future__ import annotations
        import importlib
        from typing import TYPE_CHECKING
        import torch.nn
        if TYPE_CHECKING:
            import pandas
        try:
            from sklearn.base import clone
        except ImportError:
            import mlflow
        class Box:
            import optuna
        def later():
            import fastapi
            return importlib.import_module("onnxruntime")
        plots = importlib.import_module("matplotlib")
        fast = lambda: importlib.import_module("transformers")
    """))
    found = [p.split(" imports ")[1] for p in heavy_imports_at_top(path, HEAVY)]
    assert found == ["torch.nn", "sklearn.base", "mlflow", "optuna", "matplotlib"], found
