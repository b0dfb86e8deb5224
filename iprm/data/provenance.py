"""What a generated file says about itself: the manifest `python -m iprm generate` writes beside its output.

For `--output runs/gen.jsonl` the manifest is `runs/gen.generate.json`: the settings of the run (among them
the task's step `separator` and `chat_template`, which training must use as generation did), counts, the
exact prompt and sampled token counts that data FLOPs use, and the output's size and SHA-256. It lives here,
below `iprm.generation`, because the data modules read it: generation writes it, training checks against it.
"""

import json
from pathlib import Path

from iprm.errors import ConfigError, RecordError

# Settings generation and training must agree on: manifest key → the data module's setting.
AGREED = {"separator": "data.step_separator", "chat_template": "data.chat_template"}


def manifest_path(output: str | Path) -> Path:
    return Path(output).with_suffix(".generate.json")


def read_manifest(output: str | Path) -> dict | None:
    """The manifest of `output` when `generate` wrote one, else None."""
    path = manifest_path(output)
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as error:
        raise RecordError(
            f"{path}: not a generate manifest ({error}); remove it, or rerun generate"
        ) from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("settings"), dict):
        raise RecordError(f"{path}: not a generate manifest (no 'settings'); remove it, or rerun generate")
    return manifest


def check_agreement(path: str | Path, values: dict[str, object]) -> None:
    """Refuse training settings that differ from those `path` was generated with (when a manifest says).

    Args:
        path: A data file, perhaps written by `generate`.
        values: Manifest key (a key of `AGREED`) → the value training uses.
    """
    manifest = read_manifest(path)
    settings = manifest["settings"] if manifest is not None else {}
    problems = [
        f"{AGREED[key]} is {value!r} but generate used {settings[key]!r}"
        for key, value in values.items()
        if key in settings and settings[key] != value
    ]
    if problems:
        raise ConfigError(
            f"{path}: {'; '.join(problems)} ({manifest_path(path).name}); set the same value, or regenerate"
        )
