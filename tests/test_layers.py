"""The house's layers, read from the source (in-process, no imports run): no import runs back up.

From the bottom: `errors`, `io`, `compat`, `objectives`, `rewards`, `distributed`; `data` (records, prompts,
collation, knobs, loading, sampling cost); `tasks` (a task's problems, prompts, separator and grading, and
the controlled world); `generation` (samples a task's problems and grades them with the task, so it may
import `tasks`, never the reverse); `flops`, `refcache`, `scorers` (reward models; they may import `data`
and `flops`, never `tasks`: a task reaches a reward model through its data); `eval`, `predict`, `results`;
and at the top the commands: `cli`, `__main__`, `analysis`, `sweep`, which nothing below imports.
(`tasks.WorldDataModule` derives step labels with a `scorers` labeller: tasks → scorers is allowed.)

An import anywhere in a module counts, at its top or inside a function: a lazy import is a dependency too.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ("iprm.cli", "iprm.__main__", "iprm.analysis", "iprm.sweep")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in (ROOT / "iprm").rglob("*.py")}


def _imports(modules: dict[str, Path]) -> set[tuple[str, str, int]]:
    """(importer, imported, line) for every import of an iprm module; `from iprm import x` names iprm.x."""
    edges = set()
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                edges |= {(name, a.name, node.lineno) for a in node.names if a.name.startswith("iprm")}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("iprm"):
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    edges.add((name, target if target in modules else node.module, node.lineno))
    return edges


MODULES = _modules()
EDGES = _imports(MODULES)


def _within(module: str, room: str) -> bool:
    return module == room or module.startswith(room + ".")


def _violations(importer_room: str, imported_room: str) -> list[str]:
    return sorted(
        f"{MODULES[a].relative_to(ROOT)}:{line} imports {b}"
        for a, b, line in EDGES
        if _within(a, importer_room) and _within(b, imported_room)
    )


# (importer, imported, why): each a room that must not import the other.
RULES = [
    ("iprm.tasks", "iprm.generation", "generation samples tasks; a task never samples through generation"),
    ("iprm.data", "iprm.generation", "the data module reads what generate wrote, not its code"),
    ("iprm.data", "iprm.tasks", "a task supplies its data by subclassing the data module"),
    ("iprm.data", "iprm.scorers", "data feeds reward models, never the reverse"),
    ("iprm.scorers", "iprm.tasks", "a reward model sees a task only through its data"),
    ("iprm.flops", "iprm.data", "a run's cost is counted from what passes, not re-derived from data knobs"),
    ("iprm.flops", "iprm.scorers", "a reward model states its cost (training_forwards) to the counter"),
    ("iprm.eval", "iprm.scorers", "in-training evaluation reads the RewardModel interface it is handed"),
]


@pytest.mark.parametrize(
    "importer,imported,why",
    RULES,
    ids=[f"{a.removeprefix('iprm.')}-not-{b.removeprefix('iprm.')}" for a, b, _ in RULES],
)
def test_no_import_runs_back_up_the_layers(importer, imported, why):
    found = _violations(importer, imported)
    assert not found, f"{importer} must not import {imported} ({why}): {found}"


@pytest.mark.parametrize("command", COMMANDS)
def test_no_lower_layer_imports_a_command(command):
    found = sorted(
        f"{MODULES[a].relative_to(ROOT)}:{line} imports {b}"
        for a, b, line in EDGES
        if _within(b, command) and not any(_within(a, top) for top in COMMANDS)
    )
    assert not found, f"only commands may import {command}: {found}"


def test_the_import_graph_is_read():
    """The rules above are only as good as the graph: it must see the imports we know exist."""
    pairs = {(a, b) for a, b, _ in EDGES}
    assert ("iprm.cli", "iprm.compat") in pairs
    assert ("iprm.scorers.implicit", "iprm.flops") in pairs
    assert ("iprm.data.datamodule", "iprm.data.cost") in pairs
    assert ("iprm.scorers.base", "iprm.compat") in pairs  # `from iprm import compat` names the module


def test_no_file_in_iprm_is_over_400_lines():
    long = {
        str(path.relative_to(ROOT)): n
        for path in MODULES.values()
        if (n := len(path.read_text(encoding="utf-8").splitlines())) > 400
    }
    assert not long, f"files over 400 lines: {long}"
