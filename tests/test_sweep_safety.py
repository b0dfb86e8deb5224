"""Runs never mix: a sweep reuses a finished run only when it would run it the same way now, one sweep owns
a directory at a time, and a sweep that is killed ends its child. The `iprm` stages are replaced by a fake
that writes what a real run writes (metrics files, a checkpoint) in a fraction of a second."""

import functools
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
from iprm.sweep import commands

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

pytestmark = pytest.mark.slow  # the fast tier (-m "not slow") leaves this file out

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
    # A shell's background job (`pytest … &`) starts with SIGINT ignored, and Python then keeps ignoring it:
    # the sweep under test gets the default disposition back, as from a terminal.
    default_int = functools.partial(signal.signal, signal.SIGINT, signal.SIG_DFL)
    process = subprocess.Popen([sys.executable, "-c", runner], cwd=ROOT, env=env, preexec_fn=default_int)
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
