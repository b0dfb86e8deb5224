"""The reuse check: is what a run directory holds what the sweep would run now?

A run records its `fit` and `test` arguments and the digests of its config files in `run.json` when it
starts. A finished run is reused, and an unfinished one resumed from its `last.ckpt`, only when those are
what the sweep would run now; otherwise the difference is named (`was …, now …`). The run's own directory
is written `<run>` on both sides, so a sweep moved elsewhere still matches.
"""

import difflib
import shlex

from iprm.sweep.commands import cli_args
from iprm.sweep.plan import Run
from iprm.sweep.rundir import config_files, read_record


def _recorded_args(command: str, stage: str) -> list[str]:
    """The arguments after the stage of a recorded command, without the test's `--ckpt_path`."""
    tokens = shlex.split(command)
    args = tokens[tokens.index(stage) + 1 :] if stage in tokens else tokens  # after `… -m iprm <stage>`
    return args[:-2] if args[-2:-1] == ["--ckpt_path"] else args


def _items(args: list[str]) -> list[str]:
    """Arguments with the run's own directory written `<run>` (so a moved sweep still matches), each
    `--flag value` pair as one item (so a difference names its flag)."""
    root = (
        args[args.index("--trainer.default_root_dir") + 1] if "--trainer.default_root_dir" in args else None
    )
    args = [f"<run>{a[len(root) :]}" if root and (a == root or a.startswith(root + "/")) else a for a in args]
    items, i = [], 0
    while i < len(args):
        paired = args[i].startswith("--") and i + 1 < len(args) and not args[i + 1].startswith("--")
        items.append(shlex.join(args[i : i + 2]) if paired else args[i])
        i += 2 if paired else 1
    return items


def _difference(recorded: list[str], now: list[str]) -> str:
    parts = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=recorded, b=now, autojunk=False).get_opcodes():
        if tag != "equal":
            parts.append(f"was `{' '.join(recorded[i1:i2]) or '-'}`, now `{' '.join(now[j1:j2]) or '-'}`")
    return "; ".join(parts)


def changed_since(run: Run, base: list[str], extra: list[str]) -> str | None:
    """Why the run in `run.directory` is not what the sweep would run now (None when it is): its recorded
    `fit` and `test` arguments differ, or a config file's content does (where `run.json` recorded them)."""
    record = read_record(run)
    if record is None or not isinstance(record.get("commands"), dict):
        return "run.json does not record its commands"
    for stage in ("fit", "test"):
        recorded = _items(_recorded_args(record["commands"].get(stage, ""), stage))
        now = _items(cli_args(run, base, extra, stage))
        if recorded != now:
            return f"{stage} arguments differ: {_difference(recorded, now)}"
    recorded_files = record.get("config_files") or {}  # older runs did not record them
    for path, digest in config_files(run, base).items():
        if path in recorded_files and recorded_files[path] != digest:
            return f"{path} has changed since the run"
    return None
