"""The sweep file is data, not code (issue 22): point names and grid values are safe directory names, every
run directory lies inside `--output`, values are filled by a template language that can name only the
sweep's own placeholders, a read of another point's output needs a declared dependency, the lock never
follows a symbolic link, and a bad sweep file is one line naming it. In-process and fast: nothing runs."""

import json
from pathlib import Path

import pytest

from iprm import sweep
from iprm.errors import ConfigError, IPRMError
from iprm.sweep.template import fill


def _main(spec: Path, output: Path, *extra: str) -> int:
    return sweep.main([str(spec), "--output", str(output), *extra])


@pytest.mark.parametrize("name", ["../x", "/abs", "a/b", "..", ".", "a,b", "{seed}", "a b", ""])
def test_an_unsafe_point_name_is_refused_before_anything_is_touched(name, tmp_path, caplog):
    victim = tmp_path / "x" / "seed0"
    victim.mkdir(parents=True)
    (victim / "keep").write_text("mine")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(json.dumps({"name": "s", "seeds": [0], "points": {name: {}, "ok": {}}}))
    assert _main(spec, tmp_path / "out") == 2
    assert "is not a safe name" in caplog.text and repr(name) in caplog.text
    assert (victim / "keep").read_text() == "mine" and not (tmp_path / "out").exists()


@pytest.mark.parametrize("value", ["a/b", "..", "{x}", "[1, 2]"])
def test_a_grid_value_that_cannot_be_a_directory_name_is_refused(value, tmp_path):
    with pytest.raises(ConfigError, match="cannot be part of a directory name"):
        sweep.points({"grid": {"data.world.root": [value]}})


def test_a_run_directory_that_resolves_outside_the_output_is_refused(tmp_path, caplog):
    """`<output>/a` is a symbolic link to a folder elsewhere: nothing is deleted or written through it."""
    elsewhere = tmp_path / "elsewhere" / "seed0"
    elsewhere.mkdir(parents=True)
    (elsewhere / "keep").write_text("mine")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a").symlink_to(tmp_path / "elsewhere")
    spec = tmp_path / "sweep.yaml"
    spec.write_text(json.dumps({"name": "s", "seeds": [0], "points": {"a": {}, "b": {}}}))
    assert _main(spec, tmp_path / "out") == 2
    assert "outside --output" in caplog.text
    assert sorted(p.name for p in elsewhere.iterdir()) == ["keep"]
    with pytest.raises(ConfigError, match="outside --output"):
        sweep.inside(tmp_path / "out", tmp_path / "out" / ".." / "x")


def _run(point: str = "autopsv,instruction_fraction=0.5", needs: tuple[str, ...] = ("orm",)) -> sweep.Run:
    return sweep.Run(point, 1, {}, Path("/o/sweep") / point / "seed1", needs)


def test_placeholders_are_only_the_sweep_s_own():
    run = _run()
    assert fill("{sweep}/x{grid}/seed{seed}", run) == "/o/sweep/x,instruction_fraction=0.5/seed1"
    assert fill("{run}/orm", run) == "/o/sweep/autopsv,instruction_fraction=0.5/seed1/orm"
    assert fill("{run:orm}/orm", run) == "/o/sweep/orm,instruction_fraction=0.5/seed1/orm"
    assert fill("{point}", run) == "autopsv,instruction_fraction=0.5"
    # Braces that are no placeholder are left as they are; doubled braces are literal ones.
    assert fill('{"a": 1, "b": [2]}', run) == '{"a": 1, "b": [2]}'
    assert fill("{{seed}} is {seed}", run) == "{seed} is 1"


@pytest.mark.parametrize(
    "value",
    [
        "{run.with_name.__globals__[os].environ[HOME]}",
        "{seed.__class__}",
        "{run[0]}",
        "{seed!r}",
        "{seed:>10}",
        "{home}",
        "{0}",
        "{}",
    ],
)
def test_a_value_reaching_for_anything_else_is_a_one_line_error(value, monkeypatch):
    monkeypatch.setenv("HOME", "/secret-home")
    run = sweep.Run("p", 0, {"model.export_dir": value}, Path("/o/p/seed0"))
    try:
        filled = sweep.cli_args(run, [], [], "fit")[1]
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message and "'p'" in message and value in message, message
        assert "/secret-home" not in message
    else:  # not a placeholder at all: left exactly as written
        assert filled == value and "/secret-home" not in filled


def test_reading_another_point_s_output_needs_a_declared_dependency():
    undeclared = _run(needs=())
    with pytest.raises(ConfigError, match=r"add needs: \[orm\]"):
        fill("{run:orm}/orm", undeclared)
    reads = {"data.step_labels.orm": "{sweep}/orm/seed{seed}/orm"}
    runs = [
        sweep.Run("orm", 0, {}, Path("/o/orm/seed0")),
        sweep.Run("autopsv", 0, reads, Path("/o/autopsv/seed0")),
    ]
    with pytest.raises(ConfigError, match="reads point 'orm'.s output without declaring it"):
        sweep.check_values(runs)


def test_values_inside_lists_and_mappings_are_filled_too():
    run = sweep.Run(
        "p",
        3,
        {"data.step_labels": {"init_args": {"seed": "{seed}", "dirs": ["{run}/x"]}}},
        Path("/o/p/seed3"),
    )
    args = sweep.cli_args(run, [], [], "fit")
    assert json.loads(args[1]) == {"init_args": {"seed": "3", "dirs": ["/o/p/seed3/x"]}}


def test_dependencies_are_checked_when_the_sweep_is_read(tmp_path):
    path = tmp_path / "s.yaml"
    path.write_text(json.dumps({"points": {"a": {"needs": ["nope"]}}}))
    with pytest.raises(ConfigError, match="needs 'nope', which is not a point"):
        sweep.load_sweep(path)
    path.write_text(json.dumps({"points": {"a": {"needs": ["b"]}, "b": {"needs": ["a"]}}}))
    with pytest.raises(ConfigError, match="cycle"):
        sweep.load_sweep(path)


def test_a_lock_that_is_a_symbolic_link_is_never_followed(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("do not truncate me\n")
    output = tmp_path / "out"
    output.mkdir()
    (output / ".lock").symlink_to(target)
    with pytest.raises(IPRMError, match="symbolic link"), sweep.owning(output):
        pass
    assert target.read_text() == "do not truncate me\n"


@pytest.mark.parametrize(
    "text, message",
    [
        (None, "cannot read the sweep file"),
        ("points: [", "not valid YAML"),
        ("", "a sweep file is a mapping"),
        ("seeds: 3", "seeds is a list of whole numbers"),
        ("colour: red", "unknown sweep keys ['colour']"),
        ("points: {a: 1}", "a point is a mapping of overrides"),
    ],
)
def test_a_bad_sweep_file_is_one_line_naming_the_file(text, message, tmp_path, caplog):
    path = tmp_path / "bad.yaml"
    if text is not None:
        path.write_text(text)
    assert sweep.main([str(path), "--output", str(tmp_path / "out")]) == 2
    (line,) = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert str(path) in line and message in line and "\n" not in line
