"""Runs never mix: a sweep reuses a finished run only when it would run it the same way now, one sweep owns
a directory at a time, and a sweep that is killed ends its child. The `iprm` stages are replaced by a fake
that writes what a real run writes (metrics files, a checkpoint) in a fraction of a second."""

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from iprm import sweep
from iprm.errors import ConfigError, IPRMError
from iprm.sweep import commands
from iprm.sweep.template import fill

ROOT = Path(__file__).resolve().parents[1]

# A stand-in for `python -m iprm <stage> …`: writes the stage's metrics file (and, for fit, a checkpoint)
# where a real run would; with FAKE_SLEEP set, it first records its pid and sleeps.
FAKE = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    stage, args = sys.argv[1], sys.argv[2:]
    flag = lambda name: args[args.index(name) + 1]
    if os.environ.get("FAKE_SLEEP"):
        Path(os.environ["FAKE_SLEEP"]).write_text(str(os.getpid()))
        time.sleep(120)
    logs = Path(flag("--trainer.logger.init_args.save_dir")) / "fake" / "version_0"
    logs.mkdir(parents=True)
    metrics = {"flops/train": 1.0, "flops/data": 1.0, "flops/total": 2.0, "test/weak/pass@1": 0.5}
    (logs / f"{stage}-metrics.json").write_text(json.dumps({**metrics, "config_digest": "d", "commit": "c"}))
    if stage == "fit":
        (logs / "checkpoints").mkdir()
        (logs / "checkpoints" / "last.ckpt").write_text("")
""")


@pytest.fixture()
def fake(tmp_path, monkeypatch) -> Path:
    """A sweep file with two runs, run through the fake stages; returns the sweep file."""
    script = tmp_path / "fake_iprm.py"
    script.write_text(FAKE)
    monkeypatch.setattr(commands, "PROGRAM", (sys.executable, str(script)))
    (tmp_path / "base.yaml").write_text("model: {lr: 1.0e-3}\n")
    spec = {"name": "fake", "base": [str(tmp_path / "base.yaml")], "seeds": [0], "points": {"a": {}, "b": {}}}
    path = tmp_path / "sweep.yaml"
    path.write_text(json.dumps(spec))
    return path


def _main(spec: Path, output: Path, *extra: str) -> int:
    return sweep.main([str(spec), "--output", str(output), *extra])


def test_a_rerun_reuses_only_runs_it_would_run_the_same_way(fake, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="iprm.sweep")
    output = tmp_path / "out"
    assert _main(fake, output) == 0
    meta = json.loads((output / "a" / "seed0" / "run.json").read_text())
    assert set(meta["config_files"]) == {str(tmp_path / "base.yaml")} and meta["config_digest"] == "d"
    caplog.clear()
    assert _main(fake, output) == 0
    assert caplog.text.count("done, skipped") == 2

    caplog.clear()  # other flags: refused, naming the run and the difference, nothing touched
    before = (output / "a" / "seed0" / "metrics.json").stat().st_mtime_ns
    assert _main(fake, output, "--model.lr", "1e-4") == 2
    assert "a seed 0" in caplog.text and "was `-`, now `--model.lr 1e-4`" in caplog.text
    assert "--retrain-changed" in caplog.text
    assert (output / "a" / "seed0" / "metrics.json").stat().st_mtime_ns == before

    assert _main(fake, output, "--model.lr", "1e-4", "--retrain-changed") == 0
    meta = json.loads((output / "a" / "seed0" / "run.json").read_text())
    assert "--model.lr 1e-4" in meta["commands"]["fit"]
    assert _main(fake, output, "--model.lr", "1e-4") == 0  # now they match


def test_an_edited_config_file_is_a_change_but_a_comment_is_not(fake, tmp_path, caplog):
    output = tmp_path / "out"
    assert _main(fake, output) == 0
    (tmp_path / "base.yaml").write_text("# a comment\nmodel: {lr: 1.0e-3}\n")
    assert _main(fake, output) == 0
    (tmp_path / "base.yaml").write_text("model: {lr: 2.0e-3}\n")
    assert _main(fake, output) == 2
    assert "base.yaml has changed since the run" in caplog.text


def test_runs_recorded_by_the_earlier_sweep_format_still_count_as_done(fake, tmp_path, caplog):
    """run.json as the sweep wrote it before it recorded config files: another interpreter's path, the
    test's --ckpt_path at the end; a run directory named relative to another working directory."""
    caplog.set_level(logging.INFO, logger="iprm.sweep")
    output = tmp_path / "out"
    assert _main(fake, output) == 0
    for point in ("a", "b"):
        run = sweep.Run(point, 0, {}, output / point / "seed0")
        base = [str(tmp_path / "base.yaml")]
        moved = str(Path("runs/elsewhere") / point / "seed0")
        commands = {
            stage: " ".join(
                ["/other/venv/bin/python", "-m", "iprm", stage]
                + [a.replace(str(run.directory), moved) for a in sweep.cli_args(run, base, [], stage)]
                + (["--ckpt_path", f"{moved}/fit/x/checkpoints/last.ckpt"] if stage == "test" else [])
            )
            for stage in ("fit", "test")
        }
        old = {"point": point, "seed": 0, "commit": "abc1234", "commands": commands, "seconds": 1.0}
        (run.directory / "run.json").write_text(json.dumps(old))
    caplog.clear()
    assert _main(fake, output) == 0
    assert caplog.text.count("done, skipped") == 2


def test_a_second_sweep_on_the_same_directory_is_refused(fake, tmp_path, caplog):
    output = tmp_path / "out"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from pathlib import Path; from iprm import sweep\n"
         "with sweep.owning(Path(sys.argv[1])):\n    print('held', flush=True); time.sleep(60)", str(output)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert _main(fake, output) == 2
        assert f"is in use by another sweep (pid {holder.pid})" in caplog.text
        assert not (output / "a").exists()
    finally:
        holder.kill()
        holder.wait()
    assert _main(fake, output) == 0  # the lock went with its process


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL], ids=["TERM", "INT", "KILL"])
def test_killing_a_sweep_ends_its_child(sig, fake, tmp_path):
    child_pid = tmp_path / "child.pid"
    script = tmp_path / "fake_iprm.py"
    runner = (
        "import sys; from iprm import sweep\n"
        f"from iprm.sweep import commands; commands.PROGRAM = (sys.executable, {str(script)!r})\n"
        f"sys.exit(sweep.main([{str(fake)!r}, '--output', {str(tmp_path / 'out')!r}]))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "FAKE_SLEEP": str(child_pid)}
    process = subprocess.Popen([sys.executable, "-c", runner], cwd=ROOT, env=env)
    try:
        for _ in range(600):
            if child_pid.exists() and child_pid.read_text():
                break
            time.sleep(0.1)
        child = int(child_pid.read_text())
        os.kill(process.pid, sig)
        process.wait(timeout=60)
        for _ in range(100):  # SIGKILL: the kernel tells the child its parent died
            try:
                os.kill(child, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            os.kill(child, signal.SIGKILL)
            pytest.fail("the sweep's child outlived it")
    finally:
        process.kill()


# --- the sweep file is data, not code (names, paths, placeholders, locks) ---------------------------------


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


def test_a_run_directory_that_resolves_outside_the_output_is_refused(fake, tmp_path, caplog):
    """`<output>/a` is a symbolic link to a folder elsewhere: nothing is deleted or written through it."""
    elsewhere = tmp_path / "elsewhere" / "seed0"
    elsewhere.mkdir(parents=True)
    (elsewhere / "keep").write_text("mine")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "a").symlink_to(tmp_path / "elsewhere")
    assert _main(fake, tmp_path / "out") == 2
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
