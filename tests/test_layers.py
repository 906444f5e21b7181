"""The package's imports run one way: a module imports only from its own layer or lower ones.

Every ``import``/``from ... import`` of an ``effnet`` module is read from the source with
``ast`` (function-local imports included: a lazy import is still a dependency), so a cycle hidden
behind a local import is caught too.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import effnet

PACKAGE = Path(effnet.__file__).resolve().parent

#: Lowest first, as docs/architecture.md draws them: the helpers with no effnet imports (files,
#: hostmem, lazy), preprocessing, then layers <- specs <- ... <- the command layer.
#: ``commands`` holds every CLI module; ``cli`` (the entry point's table) sits above it.
LAYERS = (
    "files", "hostmem", "lazy", "preprocessing", "layers", "specs", "scaling", "model", "registry", "profile", "viz",
    "weights", "data", "deploy", "train", "lab", "search", "bench", "commands", "cli",
)
#: The package's front door and entry point sit above everything they re-export.
TOP = {"effnet", "effnet.__main__"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """``effnet.weights.hub`` -> the index of ``weights``."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] not in LAYERS:
        raise AssertionError(f"{module}: not in any layer of {LAYERS}; add it to LAYERS in tests/test_layers.py")
    return LAYERS.index(parts[1])


def from_target(node: ast.ImportFrom, module: str, is_package: bool) -> str:
    """The module a ``from ... import`` in ``module`` reads from, relative imports resolved."""
    if not node.level:
        return node.module or ""
    base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(path: Path, module: str) -> set[str]:
    """The effnet modules ``path`` imports (``from effnet.x import y`` counts ``effnet.x.y``
    when that is a module, else ``effnet.x``)."""
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("effnet"))
        elif isinstance(node, ast.ImportFrom):
            target = from_target(node, module, is_package)
            if not target.startswith("effnet"):
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in ALL_MODULES else target)
    found.discard(module)
    return found


ALL_MODULES = {module_name(p) for p in PACKAGE.rglob("*.py")}
GRAPH = {module_name(p): imports_of(p, module_name(p)) for p in PACKAGE.rglob("*.py")}


def test_every_import_points_down_or_sideways():
    upward = [
        f"{m} ({LAYERS[layer_of(m)]}) imports {t} ({LAYERS[layer_of(t)]})"
        for m, targets in sorted(GRAPH.items()) if m not in TOP
        for t in sorted(targets) if t not in TOP and layer_of(t) > layer_of(m)
    ]
    assert not upward, "upward imports:\n" + "\n".join(upward)
    # Only the command line (the top layer) may read the front door (``effnet.__version__``).
    into_top = [f"{m} imports {t}" for m, ts in GRAPH.items()
                if m not in TOP and LAYERS[layer_of(m)] not in ("commands", "cli") for t in ts if t in TOP]
    assert not into_top, "modules must not import the package front door:\n" + "\n".join(into_top)


def test_no_import_cycles():
    """Depth-first search over the module graph; a back edge is a cycle (package __init__ files
    re-exporting their own submodules are edges like any other)."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []
    cycles: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for t in sorted(GRAPH.get(m, ())):
            if t in TOP:
                continue
            if state.get(t) == 1:
                cycles.append(" -> ".join(stack[stack.index(t):] + [t]))
            elif t not in state:
                visit(t)
        stack.pop()
        state[m] = 2

    for m in sorted(GRAPH):
        if m not in state and m not in TOP:
            visit(m)
    assert not cycles, "import cycles:\n" + "\n".join(cycles)


def test_the_checker_sees_a_planted_upward_import(tmp_path: Path):
    """The walk above must notice a function-local import: plant one in a copy and read it."""
    planted = tmp_path / "rounding.py"
    planted.write_text("def f():\n    from effnet.weights import load_model\n    return load_model\n")
    targets = imports_of(planted, "effnet.scaling.rounding")
    assert targets == {"effnet.weights.load_model"} or targets == {"effnet.weights"}
    assert layer_of("effnet.weights") > layer_of("effnet.scaling.rounding")


@pytest.mark.parametrize("module, forbidden", [
    ("effnet.data.transforms", "effnet.weights"),
    ("effnet.model", "effnet.weights"),
    ("effnet.registry", "effnet.weights"),
    ("effnet.data", "effnet.train"),
])
def test_importing_a_lower_layer_loads_no_upper_one(module: str, forbidden: str):
    """Run in a fresh interpreter: what ``import module`` actually loads, front door included
    (the front door imports nothing eagerly: its names load on first use)."""
    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m.startswith({forbidden!r})))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", f"import {module} loaded {out.strip()}"


def package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else module


def test_no_loop_between_packages():
    """Count each package as one node (``effnet.train.loop`` -> ``effnet.train``): a loop between
    packages is a loop even when every single file-to-file edge points down, and a function-local
    import counts like any other."""
    edges: dict[str, set[str]] = {}
    for m, targets in GRAPH.items():
        if m in TOP:
            continue
        edges.setdefault(package_of(m), set()).update(
            package_of(t) for t in targets if t not in TOP and package_of(t) != package_of(m))
    state: dict[str, int] = {}
    loops: list[str] = []

    def visit(p: str, stack: list[str]) -> None:
        state[p] = 1
        for q in sorted(edges.get(p, ())):
            if state.get(q) == 1:
                loops.append(" -> ".join(stack[stack.index(q):] + [p, q]))
            elif q not in state:
                visit(q, stack + [p])
        state[p] = 2

    for p in sorted(edges):
        if p not in state:
            visit(p, [])
    assert not loops, "loops between packages:\n" + "\n".join(loops)


def test_cli_modules_live_in_the_command_layer():
    """Every argparse user is a command module: the library packages know nothing of argparse."""
    users = sorted(module_name(p) for p in PACKAGE.rglob("*.py") if "argparse" in p.read_text()
                   and not module_name(p).startswith(("effnet.commands", "effnet.cli")))
    assert not users, f"modules outside effnet.commands that use argparse: {users}"


# --- function-local imports -----------------------------------------------------------------------
# An effnet import made inside a function hides a dependency from the module's head; each one
# outside the command layer (whose handlers import lazily so that `--help` stays fast) is listed
# here with the reason it cannot sit at module level.
CLI_LIGHT = "cli-light: the CLI parser or `effnet list` imports this module, which must not load torch"
CONVERTERS = "converters: the key maps load only when a file is converted (or downloaded, then converted)"

LOCAL_IMPORTS: dict[tuple[str, str], str] = {
    ("effnet.profile.counts", "effnet.model"): CLI_LIGHT,
    ("effnet.profile.counts", "effnet.profile.measure"): CLI_LIGHT,
    ("effnet.weights.hub", "effnet.weights.download"): CONVERTERS,
    ("effnet.train.config", "effnet.weights.format"): CLI_LIGHT,
    ("effnet.train.recipes", "effnet.data"): CLI_LIGHT,
    ("effnet.train.recipes", "effnet.weights.format"): CLI_LIGHT,
    # effnet.model, effnet.profile.sweep and effnet.viz load torch on import, and the parser imports
    # every lab and search module (it reads the rewards from effnet.search.run, which imports the lab).
    ("effnet.lab.budget", "effnet.model"): CLI_LIGHT,
    ("effnet.lab.compare", "effnet.viz.plots"): CLI_LIGHT,
    ("effnet.lab.fit", "effnet.model"): CLI_LIGHT,
    ("effnet.lab.grid", "effnet.profile.sweep"): CLI_LIGHT,
    ("effnet.lab.grid", "effnet.viz.plots"): CLI_LIGHT,
    ("effnet.search.run", "effnet.model"): CLI_LIGHT,
    ("effnet.search.run", "effnet.train.score"): CLI_LIGHT,
    ("effnet.search.run", "effnet.viz.plots"): CLI_LIGHT,
}


def local_imports_of(path: Path, module: str) -> set[tuple[str, str]]:
    """(module, imported effnet module) for every effnet import made inside a function of ``path``
    (``from effnet.x import y`` counts as ``effnet.x``)."""
    found: set[tuple[str, str]] = set()
    is_package = path.name == "__init__.py"
    for fn in ast.walk(ast.parse(path.read_text())):
        if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
            continue
        for node in ast.walk(fn):
            if isinstance(node, ast.Import):
                found.update((module, a.name) for a in node.names if a.name.startswith("effnet"))
            elif isinstance(node, ast.ImportFrom):
                target = from_target(node, module, is_package)
                if target.startswith("effnet"):
                    found.add((module, target))
    return found


def test_every_function_local_import_has_a_listed_reason():
    found = {pair for p in PACKAGE.rglob("*.py")
             if not module_name(p).startswith(("effnet.commands", "effnet.cli"))
             for pair in local_imports_of(p, module_name(p))}
    unlisted = sorted(found - LOCAL_IMPORTS.keys())
    assert not unlisted, ("function-local effnet imports without a reason (hoist them to module level, "
                          "or add them to LOCAL_IMPORTS with one):\n" + "\n".join(f"{m} -> {t}" for m, t in unlisted))
    stale = sorted(LOCAL_IMPORTS.keys() - found)
    assert not stale, "LOCAL_IMPORTS lists imports that are gone:\n" + "\n".join(f"{m} -> {t}" for m, t in stale)


def test_the_local_import_walk_sees_a_planted_import(tmp_path: Path):
    planted = tmp_path / "mod.py"
    planted.write_text("import effnet.files\n\ndef f():\n    from effnet.registry import get_spec\n"
                       "    def g():\n        import effnet.model\n    return get_spec\n")
    assert local_imports_of(planted, "effnet.x") == {("effnet.x", "effnet.registry"), ("effnet.x", "effnet.model")}
