"""The package's layering (docs/design.md): every module of sslkit/ sits in one layer, imports only
modules of its own layer or lower, and the imports between sslkit's modules form no cycle.

The imports are read from the source with ``ast`` (nothing is imported), including those inside
functions: ``import sslkit.x``, ``from sslkit import x``, ``from .x import y`` and ``from . import x``,
where ``from . import NAME`` imports module NAME if sslkit/NAME.py exists, else the package's
``__init__`` (``from . import __version__`` reaches into ``__init__``)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "sslkit"

# Lowest first. A module may import modules of its own layer or lower, never higher.
LAYERS = (
    ("L0 blocks", ("files", "data", "augment", "losses", "distributed", "devices", "version")),
    ("L1 models", ("models", "ema")),
    ("L2 methods", ("methods",)),
    ("L3 training", ("train",)),
    ("L4 evaluation", ("protocol", "geometry", "transfer", "finetune")),
    ("L5 weights", ("weights",)),
    ("L6 pipeline", ("pipeline", "search", "replicate")),
    ("L7 front ends", ("cli", "bench", "cache", "notebook", "plots", "results", "__main__", "__init__")),
)


def package_modules(package: Path = PACKAGE) -> set[str]:
    return {path.stem for path in package.glob("*.py")}


def imported_modules(source: str, modules: set[str], filename: str = "<source>") -> set[str]:
    """The sslkit modules that ``source`` (a module of the package) imports, anywhere in it."""
    imported = set()

    def add_from_package(names: list[ast.alias]) -> None:  # from . import NAME / from sslkit import NAME
        for alias in names:
            imported.add(alias.name if alias.name in modules else "__init__")

    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "sslkit":
                    imported.add(parts[1] if len(parts) > 1 else "__init__")
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                raise AssertionError(f"{filename}:{node.lineno} imports from outside the package (level {node.level})")
            if node.level == 1:
                target = node.module
            elif node.module == "sslkit" or (node.module or "").startswith("sslkit."):
                target = node.module.partition(".")[2]
            else:
                continue  # a third-party or standard-library import
            if target:
                imported.add(target.split(".")[0])
            else:
                add_from_package(node.names)
    return imported


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: the sslkit modules it imports}`` for every module of the package."""
    modules = package_modules(package)
    return {
        path.stem: imported_modules(path.read_text(), modules, str(path)) - {path.stem}
        for path in sorted(package.glob("*.py"))
    }


def layer_violations(graph: dict[str, set[str]], layers=LAYERS) -> list[str]:
    """One message per import of a module of a higher layer than the importing one's."""
    level = {module: index for index, (_, modules) in enumerate(layers) for module in modules}
    messages = []
    for importer, targets in sorted(graph.items()):
        for target in sorted(targets):
            if target in level and importer in level and level[target] > level[importer]:
                messages.append(
                    f"{importer} ({layers[level[importer]][0]}) imports {target} ({layers[level[target]][0]}), "
                    "a higher layer"
                )
    return messages


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """A cycle of the import graph as ``[a, b, ..., a]``, or None if it has none."""
    done: set[str] = set()
    path: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in path:
            return path[path.index(module) :] + [module]
        if module in done:
            return None
        path.append(module)
        for target in sorted(graph.get(module, ())):
            cycle = visit(target)
            if cycle:
                return cycle
        path.pop()
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module)
        if cycle:
            return cycle
    return None


# ------------------------------------------------------------------------------ the package itself


def test_every_module_of_the_package_is_placed_in_exactly_one_layer():
    placed = [module for _, modules in LAYERS for module in modules]
    twice = sorted({module for module in placed if placed.count(module) > 1})
    assert not twice, f"modules placed in more than one layer: {twice}"
    unplaced = sorted(package_modules() - set(placed))
    assert not unplaced, f"modules of sslkit/ in no layer (place them in LAYERS of {Path(__file__).name}): {unplaced}"
    gone = sorted(set(placed) - package_modules())
    assert not gone, f"LAYERS names modules that sslkit/ no longer has: {gone}"


def test_no_module_imports_a_module_of_a_higher_layer():
    graph = import_graph()
    assert sum(map(len, graph.values())) > 20  # the imports are seen (the package has dozens)
    violations = layer_violations(graph)
    assert not violations, "layering violated:\n" + "\n".join(violations)


def test_the_imports_between_sslkit_modules_form_no_cycle():
    graph = import_graph()
    mutual = sorted((a, b) for a, targets in graph.items() for b in targets if a < b and a in graph.get(b, ()))
    assert not mutual, f"modules that import each other: {mutual}"
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_lowest_layer_imports_nothing_of_sslkit_but_its_own_blocks():
    graph = import_graph()
    blocks = set(LAYERS[0][1])
    outside = {module: sorted(graph[module] - blocks) for module in blocks if graph[module] - blocks}
    assert not outside, f"L0 modules importing sslkit modules outside L0: {outside}"


# ------------------------------------------------------------------------------ the checker checks


def test_every_form_of_import_is_seen_including_those_inside_functions(tmp_path):
    package = tmp_path / "sslkit"
    package.mkdir()
    for name in ("__init__", "data", "models", "methods", "train", "weights", "pipeline", "plots"):
        (package / f"{name}.py").write_text("")
    (package / "cli.py").write_text(
        "import os\n"
        "import torch.nn\n"
        "from . import train\n"
        "from . import __version__\n"
        "from .data import load_dataset\n"
        "from .weights.inner import thing\n"
        "import sslkit.models\n"
        "from sslkit import methods\n"
        "from sslkit.pipeline import pretrain as p\n"
        "def late():\n"
        "    from .plots import show\n"
        "    return show\n"
    )
    assert import_graph(package)["cli"] == {
        "train",
        "__init__",
        "data",
        "weights",
        "models",
        "methods",
        "pipeline",
        "plots",
    }
    assert import_graph(package)["data"] == set()


def test_the_layer_check_reports_an_import_of_a_higher_layer():
    violations = layer_violations({"models": {"pipeline", "data"}, "pipeline": {"models"}, "data": set()})
    assert violations == ["models (L1 models) imports pipeline (L6 pipeline), a higher layer"]
    assert layer_violations({"cli": {"pipeline", "bench"}, "bench": {"train"}}) == []  # own layer or lower


def test_the_cycle_check_reports_a_cycle_and_accepts_a_layered_graph():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"cli": {"bench"}, "bench": {"cli"}}) == ["bench", "cli", "bench"]
    assert find_cycle({"cli": {"bench", "train"}, "bench": {"train"}, "train": set()}) is None


def test_reaching_into_the_package_init_from_a_lower_layer_is_reported(tmp_path):
    package = tmp_path / "sslkit"
    package.mkdir()
    (package / "__init__.py").write_text("__version__ = '0'\n")
    (package / "pipeline.py").write_text("from . import __version__\n")
    (package / "cli.py").write_text("from sslkit import __version__\n")
    graph = import_graph(package)
    assert graph == {"__init__": set(), "pipeline": {"__init__"}, "cli": {"__init__"}}
    assert layer_violations(graph) == ["pipeline (L6 pipeline) imports __init__ (L7 front ends), a higher layer"]


@pytest.mark.parametrize("source", ["from ... import x\n", "from ..other import x\n"])
def test_an_import_from_outside_the_package_is_an_error_not_ignored(source):
    with pytest.raises(AssertionError, match="outside the package"):
        imported_modules(source, {"x"})
