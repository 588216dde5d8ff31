"""The package's layers, as docs/architecture.md states them: a module imports only its
own folder and the layers below, never a folder beside it in its layer, never the test
equipment; no import cycle among modules or folders; `__init__.py` files count like any
module; no module grows past what one can read whole."""

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "distill"
ARCHITECTURE = ROOT / "docs" / "architecture.md"
TEST_EQUIPMENT = "testing"
# the imports within a layer: the CLI drives runs and experiments; an experiment drives runs
FACE_INTERNAL = {("cli", "pipeline"), ("cli", "experiments"), ("experiments", "pipeline")}
MAX_LINES = 350


def _layers() -> dict[str, set[str]]:
    """layer -> folders (or top-level modules), highest first, from the table of
    docs/architecture.md: rows `| layer | `a`, `b` | job |`."""
    table = ARCHITECTURE.read_text().split("| layer | folders | job |", 1)[1]
    layers = {}
    for line in table.splitlines()[2:]:
        if not line.startswith("|"):
            break
        name, folders = (cell.strip() for cell in line.strip("|").split("|")[:2])
        layers[name] = set(re.findall(r"`([\w.]+)`", folders))
    return layers


LAYERS = _layers()
RANKS = [name for name in LAYERS if name != "test equipment"]


def _unit(module: str) -> str:
    """'teachers.local' -> 'teachers' (a folder is one unit); 'cli' -> 'cli'; the package's
    own __init__ is '__init__'."""
    return module.split(".")[0] if module else "__init__"


def _layer(unit: str) -> int:
    for rank, name in enumerate(RANKS):
        if unit in LAYERS[name]:
            return rank
    raise AssertionError(f"distill.{unit} belongs to no layer in docs/architecture.md")


def _modules() -> dict[str, Path]:
    """dotted name within distill -> file; a package's __init__ is the package's name
    ('' for distill itself)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if "assets" in parts:
            continue
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """distill modules that `module` imports anywhere in its file (lazy imports too)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    package = [p for p in package if p]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from . import y / from ..x import y
                base = package[:len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.split(".")[0] == "distill":
                target = node.module.split(".")[1:]
            else:
                continue
            for alias in node.names:  # from pkg import module, or a name in pkg
                submodule = ".".join([*target, alias.name])
                found.add(submodule if submodule in MODULES else ".".join(target))
        elif isinstance(node, ast.Import):
            found.update(".".join(a.name.split(".")[1:]) for a in node.names
                         if a.name.startswith("distill."))
    return found - {module}


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}
EDGES = sorted((module, target) for module, targets in GRAPH.items() for target in targets)


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph`, or None (depth-first search, colouring nodes)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_the_layers_table_is_read():
    assert RANKS[0] == "face" and RANKS[-1] == "base"
    assert {"teachers", "training", "evaluation", "serve"} <= LAYERS["stages"]
    assert LAYERS["test equipment"] == {TEST_EQUIPMENT}


def test_the_import_graph_is_read():
    assert ("training.loop", "lm.samples") in EDGES
    assert ("training.loop", "training.batch_loss") in EDGES
    assert ("teachers.openai_api", "teachers.api_client") in EDGES
    assert ("serve.server", "serve.worker") in EDGES
    assert ("", "speech.params") in EDGES  # the package's __init__ counts: it registers
    assert ("coding", "coding.judge") in EDGES  # and so do the folders' __init__ files


def test_every_module_has_a_layer():
    for module in MODULES:
        if _unit(module) != TEST_EQUIPMENT:
            _layer(_unit(module))


@pytest.mark.parametrize("module,target", EDGES)
def test_imports_go_down_the_layers(module, target):
    source, destination = _unit(module), _unit(target)
    assert destination != TEST_EQUIPMENT, f"{module} imports the test equipment"
    if source == TEST_EQUIPMENT or source == destination:
        return
    if (source, destination) in FACE_INTERNAL:
        return
    assert _layer(destination) > _layer(source), (
        f"distill.{module} ({RANKS[_layer(source)]}) imports distill.{target} "
        f"({RANKS[_layer(destination)]}): imports go down the layers only, and a folder "
        "talks to one beside it through files; a registry is filled by registration")


def test_no_import_cycle_among_modules():
    cycle = _cycle(GRAPH)
    assert cycle is None, "import cycle: " + " -> ".join(f"distill.{m}" for m in cycle)


def test_no_import_cycle_among_folders():
    folders = {}
    for module, target in EDGES:
        if _unit(module) != _unit(target):
            folders.setdefault(_unit(module), set()).add(_unit(target))
    cycle = _cycle(folders)
    assert cycle is None, "import cycle between folders: " + " -> ".join(cycle)


@pytest.mark.parametrize("module", sorted(MODULES))
def test_modules_stay_short(module):
    lines = len(MODULES[module].read_text().splitlines())
    limit = MAX_LINES + 100 if module == "core.params" else MAX_LINES  # keys with help
    assert lines <= limit, f"distill/{module}: {lines} lines; does it do two jobs?"
