"""The one `iprm` command: its verb table covers every `python -m iprm.<module>` entry point, `--help`
lists every verb, and a verb reaches its module's `main(argv)` with the right arguments; all in-process."""

import importlib
import importlib.util
import re
import sys
from pathlib import Path

import pytest

import iprm.__main__ as command

ROOT = Path(__file__).resolve().parents[1]
# Modules with a `__main__` guard that are not commands: processes other commands start.
NOT_VERBS = {
    "iprm": "the command itself",
    "iprm.generation.workers": "the worker processes `iprm generate --devices K` starts (branch gen)",
    "iprm.tasks.grading": "the grading worker process of GradingPool (branch gen)",
}


def _entry_points() -> set[str]:
    """Every module under iprm/ runnable as `python -m iprm.<module>` (it has a `__main__` guard)."""
    found = set()
    for path in (ROOT / "iprm").rglob("*.py"):
        if re.search(r'^if __name__ == "__main__":', path.read_text(encoding="utf-8"), re.MULTILINE):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found.add(".".join(parts[:-1] if parts[-1] == "__main__" else parts))
    return found


def test_every_entry_point_is_a_verb():
    missing = _entry_points() - {verb.module for verb in command.VERBS.values()} - set(NOT_VERBS)
    assert not missing, f"python -m entry points without an `iprm` verb: {sorted(missing)}"


@pytest.mark.parametrize("name", list(command.VERBS))
def test_every_verb_names_a_module_with_main(name):
    module = command.VERBS[name].module
    assert importlib.util.find_spec(module) is not None, f"{name}: no module {module}"
    assert callable(importlib.import_module(module).main), f"{name}: {module} has no main(argv)"


def test_help_lists_every_verb(capsys):
    assert command.run(["--help"]) == 0
    out = capsys.readouterr().out
    for name in ("fit", "validate", "test", "predict", "generate", "sweep", "claims", "compare", "figures"):
        assert re.search(rf"^  {re.escape(name)} ", out, re.MULTILINE), name
    for name in command.VERBS:
        assert f"  {name} " in out, name


def test_help_imports_no_verb_module(capsys):
    """`iprm --help` is instant: no verb's module (nor torch) is imported to print it."""
    before = set(sys.modules)
    command.run(["--help"])
    assert not {m for m in set(sys.modules) - before if m.startswith(("iprm.", "torch"))}


def test_unknown_verb_is_one_line_and_status_2(capsys):
    assert command.run(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert "unknown verb 'frobnicate'" in err and "fit" in err and len(err.strip().splitlines()) == 1


def test_no_verb_prints_the_usage_and_fails(capsys):
    assert command.run([]) == 2
    assert "verbs:" in capsys.readouterr().out


def test_lightning_verbs_keep_their_subcommand_and_others_drop_the_verb(monkeypatch):
    calls = []

    class Fake:
        @staticmethod
        def main(argv):
            calls.append(argv)
            return 0

    monkeypatch.setattr(importlib, "import_module", lambda name: Fake)
    command.run(["fit", "--config", "x.yaml"])
    command.run(["claims", "runs/a"])
    assert calls == [["fit", "--config", "x.yaml"], ["runs/a"]]


def test_a_user_error_is_one_line_with_status_2(monkeypatch, capsys):
    from iprm.errors import ConfigError

    def refuse(argv):
        raise ConfigError("x.yaml:3: not valid YAML")

    monkeypatch.setattr(command, "run", refuse)
    with pytest.raises(SystemExit) as exit:
        command.entry(["fit"])
    assert exit.value.code == 2
    assert capsys.readouterr().err == "error: x.yaml:3: not valid YAML\n"


def test_a_nonzero_status_from_main_is_the_exit_status(monkeypatch):
    monkeypatch.setattr(command, "run", lambda argv: 3)
    with pytest.raises(SystemExit) as exit:
        command.entry(["sweep"])
    assert exit.value.code == 3


def test_console_script_is_declared():
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert 'iprm = "iprm.__main__:entry"' in text
