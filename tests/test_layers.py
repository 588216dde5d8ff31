"""The package's layers (DESIGN.md): a module imports only modules of its own layer or
below, no stage imports another stage, nothing in the library imports the test
equipment, and no module grows past what one can read whole."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "distill"

# Highest layer first. The api and training packages are one stage each (their modules
# import each other).
LAYERS = {
    "face": {"cli", "pipeline", "study"},
    "stages": {"sampling", "training", "evaluation", "model_card", "plots", "compare", "api",
               "provenance", "drift", "collapse"},
    "shared": {"generation", "samples", "models", "data", "losses", "token_bytes", "measure",
               "precision", "chunked_head", "pruning", "validation", "alignment",
               "cross_tokenizer", "watermark",
               "speech",  # Whisper, audio, labelling shards: what the speech notebooks share
               "coding"},  # code tasks, the sandbox that runs their answers, pass@k
    "base": {"params", "params_fields", "params_speech", "params_checks", "runs"},
}
TEST_EQUIPMENT = "testing"
# Imports against the layer order, each for a reason. All are lookups of a registry
# while validating params, imported inside the function that checks.
ALLOWED_UPWARDS = {
    ("params", "losses"): "kd_loss is checked against the objective registry",
    ("params", "alignment"): "kd_loss is checked against the cross-tokenizer objectives",
    ("params_checks", "models"): "the embedded models' vocabulary, depth and tokenizer "
                                 "bound some keys",
}
MAX_LINES = 350


def _unit(module: str) -> str:
    """'api.client' -> 'api' (the package is one unit); 'losses' -> 'losses'."""
    return module.split(".")[0]


def _layer(unit: str) -> int:
    for rank, members in enumerate(LAYERS.values()):
        if unit in members:
            return rank
    raise AssertionError(f"distill.{unit} belongs to no layer in tests/test_layers.py")


def _modules() -> dict[str, Path]:
    return {".".join(p.relative_to(PACKAGE).with_suffix("").parts): p
            for p in PACKAGE.rglob("*.py")
            if p.name != "__init__.py" and "assets" not in p.relative_to(PACKAGE).parts}


def _imports(module: str, path: Path) -> set[str]:
    """distill modules that `module` imports anywhere in its file (lazy imports too)."""
    package = module.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level:  # relative: from .x import y / from . import y / from ..x import y
                base = package[:len(package) - node.level + 1]
                target = [*base, *(node.module.split(".") if node.module else [])]
            elif node.module and node.module.startswith("distill"):
                target = node.module.split(".")[1:]
            else:
                continue
            if node.module:
                found.add(".".join(target))
            else:  # from . import x: x is a module of the package, or a name in it
                for alias in node.names:
                    is_module = PACKAGE.joinpath(*target, f"{alias.name}.py").exists()
                    found.add(".".join([*target, alias.name] if is_module else target))
        elif isinstance(node, ast.Import):
            found.update(".".join(a.name.split(".")[1:]) for a in node.names
                         if a.name.startswith("distill."))
    return {name for name in found if name}


EDGES = sorted((module, target) for module, path in _modules().items()
               for target in _imports(module, path))


def test_the_import_graph_is_read():
    assert ("training.loop", "samples") in EDGES and ("api.teacher", "api.client") in EDGES
    assert ("training.loop", "training.batch_loss") in EDGES
    assert ("api.server", "api.worker") in EDGES and ("api.client", "api") in EDGES


def test_every_module_has_a_layer():
    for module in _modules():
        if _unit(module) != TEST_EQUIPMENT:
            _layer(_unit(module))


@pytest.mark.parametrize("module,target", EDGES)
def test_imports_go_down_the_layers(module, target):
    source, destination = _unit(module), _unit(target)
    assert destination != TEST_EQUIPMENT, f"{module} imports the test equipment"
    if source == TEST_EQUIPMENT or source == destination:
        return
    if source in LAYERS["stages"]:
        assert destination not in LAYERS["stages"], \
            f"stage {module} imports stage {target}: stages talk through files only"
    assert _layer(destination) >= _layer(source) or (source, destination) in ALLOWED_UPWARDS, \
        f"{module} ({_layer(source)}) imports {target} from a higher layer"


@pytest.mark.parametrize("module", sorted(_modules()))
def test_modules_stay_short(module):
    lines = len(_modules()[module].read_text().splitlines())
    limit = MAX_LINES + 100 if module == "params" else MAX_LINES  # a list of keys with help
    assert lines <= limit, f"distill/{module}: {lines} lines; does it do two jobs?"
