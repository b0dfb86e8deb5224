"""Test-only stand-ins for `python -m iprm <stage>` and for SLURM's commands, shared by the sweep tests.

`FAKE_STAGE` writes what a real stage writes (its metrics file; for fit a `last.ckpt`) in a fraction of a
second and appends what it was asked to do to `$FAKE_EVENTS` (one JSON line per stage). Environment knobs:
FAKE_SLEEP (a pid file: record the pid and sleep), FAKE_SECONDS (sleep that long first), FAKE_FAIL (a
substring of the run directory whose fit fails), FAKE_DIE_ONCE (a marker file: the first fit writes its
`last.ckpt` then dies as if killed, once), FAKE_PAUSE_ONCE (a marker file: the first fit writes its
`last.ckpt` and its pid there, then sleeps until stopped), FAKE_NO_FLOPS (fit's metrics without its FLOPs).
"""

import json
import sys
import textwrap
from pathlib import Path

FAKE_STAGE = textwrap.dedent("""
    import json, os, sys, time
    from pathlib import Path
    stage, args = sys.argv[1], sys.argv[2:]
    flag = lambda name: args[args.index(name) + 1] if name in args else None
    if os.environ.get("FAKE_SLEEP"):
        Path(os.environ["FAKE_SLEEP"]).write_text(str(os.getpid()))
        time.sleep(120)
    run = flag("--trainer.default_root_dir")
    started = time.time()
    time.sleep(float(os.environ.get("FAKE_SECONDS", "0")))
    event = {"stage": stage, "run": run, "ckpt_path": flag("--ckpt_path"), "start": started,
             "end": time.time(), "threads": os.environ.get("OMP_NUM_THREADS"),
             "devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
             "slurm_ntasks": os.environ.get("SLURM_NTASKS")}
    if os.environ.get("FAKE_EVENTS"):
        with open(os.environ["FAKE_EVENTS"], "a") as file:
            file.write(json.dumps(event) + "\\n")
    logs = Path(flag("--trainer.logger.init_args.save_dir")) / "fake" / f"version_{time.time_ns()}"
    logs.mkdir(parents=True)
    if stage == "fit":
        (logs / "checkpoints").mkdir()
        (logs / "checkpoints" / "last.ckpt").write_text("")
        pause = os.environ.get("FAKE_PAUSE_ONCE")
        if pause and not Path(pause).exists():
            Path(pause).write_text(str(os.getpid()))
            time.sleep(120)
        once = os.environ.get("FAKE_DIE_ONCE")
        if once and not Path(once).exists():
            Path(once).write_text("died")
            sys.exit(137)
        if os.environ.get("FAKE_FAIL") and os.environ["FAKE_FAIL"] in run:
            sys.exit(1)
    metrics = {"flops/train": 1.0, "flops/data": 1.0, "flops/total": 2.0, "test/weak/pass@1": 0.5,
               "test/weak/bon@8/orm_last": 0.25}
    if os.environ.get("FAKE_NO_FLOPS") and stage == "fit":  # stopped after its last checkpoint
        metrics = {k: v for k, v in metrics.items() if not k.startswith("flops/")}
    (logs / f"{stage}-metrics.json").write_text(json.dumps({**metrics, "config_digest": "d", "commit": "c"}))
""")

# A scheduler that records instead of scheduling: `sbatch FILE` copies the script into $FAKE_SLURM and
# answers with the next job id; the others record their arguments and answer as an empty queue.
FAKE_SBATCH = textwrap.dedent("""
    #!{python}
    import os, shutil, sys
    from pathlib import Path
    record = Path(os.environ["FAKE_SLURM"])
    record.mkdir(exist_ok=True)
    count = len(list(record.glob("*.sh")))
    job = 1000 + count
    shutil.copy(sys.argv[-1], record / f"{{job}}.sh")
    (record / f"{{job}}.args").write_text(" ".join(sys.argv[1:]))
    print(f"Submitted batch job {{job}}")
""")
FAKE_OTHER = textwrap.dedent("""
    #!{python}
    import os, sys
    from pathlib import Path
    with open(Path(os.environ["FAKE_SLURM"]) / "calls.log", "a") as log:
        log.write(" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) + "\\n")
    if Path(sys.argv[0]).name == "sacct":
        print("JobID|State|NodeList")
""")


def fake_scheduler(directory: Path) -> Path:
    """A `bin` folder of fake `sbatch`, `squeue`, `sacct`, `scancel`, `scontrol`, `srun`; put it on PATH."""
    bin_dir = directory / "bin"
    bin_dir.mkdir()
    for name in ("sbatch", "squeue", "sacct", "scancel", "scontrol", "srun"):
        text = (FAKE_SBATCH if name == "sbatch" else FAKE_OTHER).format(python=sys.executable).lstrip()
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    return bin_dir


def events(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def sbatch_scripts(sweep_file: str, *flags: str) -> list[str]:
    """The sbatch scripts the slurm launcher writes for `sweep_file` (with `flags`), as submitted to the fake
    scheduler, in submission order; this machine's paths written `<repo>` and `python`. Submits nothing."""
    import os
    import tempfile

    from iprm import sweep

    root = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        records = tmp / "records"
        saved = dict(os.environ)
        os.environ["PATH"] = f"{fake_scheduler(tmp)}{os.pathsep}{os.environ['PATH']}"
        os.environ["FAKE_SLURM"] = str(records)
        try:
            output = tmp / "out"
            code = sweep.main([sweep_file, "--output", str(output), "--launcher", "slurm", *flags])
            assert code == 0, code
            return [
                path.read_text().replace(str(output), "<repo>/runs/sweeps/baselines")
                .replace(str(root), "<repo>").replace(sys.executable, "python")
                for path in sorted(records.glob("*.sh"))
            ]  # fmt: skip
        finally:
            os.environ.clear()
            os.environ.update(saved)


if __name__ == "__main__":  # python tests/sweep_fake.py configs/sweeps/baselines.yaml --launcher.gpus 1 …
    for script in sbatch_scripts(*sys.argv[1:]):
        print(script, "\n# ----")
