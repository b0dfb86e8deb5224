"""Where `python -m iprm generate` keeps its work beside an output file, and the manifest it leaves there.

For `--output runs/gen.jsonl`: the manifest `runs/gen.generate.json` (settings, counts, and the exact
prompt and sampled token counts that data FLOPs use), the shards `runs/.gen.parts/` while the run is under
way, and the lock `runs/.gen.generate.lock` that keeps two runs on one output apart.
"""

import json
from pathlib import Path


def manifest_path(output: str | Path) -> Path:
    return Path(output).with_suffix(".generate.json")


def parts_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.stem}.parts")


def lock_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.stem}.generate.lock")


def read_manifest(output: str | Path) -> dict | None:
    """The manifest of `output` when `generate` wrote one, else None."""
    path = manifest_path(output)
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
