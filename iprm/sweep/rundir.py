"""The run directory's contents, and where to find each thing in it.

<output>/<point>/seed<k>/
  run.json        written when the run starts (commands, config file digests, status "running"),
                  again when it ends ("done" or "failed": the stage that failed, with commit and seconds)
  fit.log test.log   each stage's output, appended to across resumes
  fit/ test/      the stages' log directories (each `<stage>-metrics.json`; the fit's also holds
                  `checkpoints/last.ckpt` and the exported `policy/`); a resumed fit adds a version
  metrics.json    last: the flat test metrics and the FLOPs of training and data collection; a run
                  with a `metrics.json` is finished
"""

import hashlib
import json
from pathlib import Path

import yaml

from iprm.io import atomic_write
from iprm.sweep.plan import Run


def find(directory: Path, pattern: str) -> Path:
    """The file a run wrote that matches `pattern`: `last.ckpt` first, then the newest."""
    found = sorted(directory.glob(pattern), key=lambda p: (p.name == "last.ckpt", p.stat().st_mtime))
    if not found:
        raise FileNotFoundError(f"{directory} holds no {pattern}")
    return found[-1]


def last_checkpoint(run: Run) -> Path | None:
    """The newest `last.ckpt` of an unfinished fit (None when it wrote none)."""
    try:
        return find(run.directory / "fit", "**/checkpoints/last.ckpt")
    except FileNotFoundError:
        return None


def fit_finished(run: Run) -> bool:
    return any((run.directory / "fit").glob("**/fit-metrics.json"))


def write_json(path: Path, value: dict) -> None:
    with atomic_write(path) as file:  # metrics.json marks a run done: it must never exist half-written
        file.write(json.dumps(value, indent=2) + "\n")


def read_record(run: Run) -> dict | None:
    """The run's `run.json` (None when absent or unreadable)."""
    try:
        record = json.loads((run.directory / "run.json").read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None


def status(run: Run) -> str:
    """ "done", "failed", "running" (started, not ended: killed, pre-empted or still going) or "new"."""
    if run.done:
        return "done"
    record = read_record(run)
    return record.get("status", "running") if record else "new"


def config_files(run: Run, base: list[str]) -> dict[str, str | None]:
    """Each config file of a run → sha256 of its parsed content (comments and layout do not count; None
    when it cannot be read)."""
    digests = {}
    for path in [*base, *run.overrides.get("config", [])]:
        try:
            content = json.dumps(yaml.safe_load(Path(path).read_text()), sort_keys=True, default=str)
            digests[str(path)] = hashlib.sha256(content.encode()).hexdigest()
        except (OSError, yaml.YAMLError):
            digests[str(path)] = None
    return digests


def _metrics_file(path: Path) -> dict:
    """A `<stage>-metrics.json` (as `iprm.results.read_metrics` reads it, without importing Lightning and
    torch: a sweep's driver and its SLURM tasks stay light)."""
    return json.loads(path.read_text())


def read_metrics(directory: Path) -> tuple[dict[str, float], str]:
    """A finished run's flat metrics and the short commit that tested it, from its stages' metrics files:
    the test metrics without their `test/` prefix (per best-of-N set `<set>/bon@16/<scorer>`,
    `<set>/maj@16`, `<set>/process/<scorer>/f1`, …) and the fit's `flops/{train,data,total}`."""
    test = _metrics_file(find(directory, "test/**/test-metrics.json"))
    fit = _metrics_file(find(directory, "fit/**/fit-metrics.json"))
    metrics = {key.removeprefix("test/"): value for key, value in test.items() if key.startswith("test/")}
    metrics |= {key: float(fit[key]) for key in ("flops/train", "flops/data", "flops/total")}
    return metrics, (test["commit"] or "unknown")[:7]


def config_digest(directory: Path) -> str | None:
    return _metrics_file(find(directory, "fit/**/fit-metrics.json")).get("config_digest")
