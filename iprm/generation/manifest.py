"""Where `python -m iprm generate` keeps its work beside an output file, and the manifest it leaves there.

For `--output runs/gen.jsonl`: the manifest `runs/gen.generate.json` (`iprm.data.provenance`: settings, the
separator and chat-template flag training must agree with, counts, exact token counts, the output's checksum),
the shards `runs/.gen.parts/` while the run is under way, and the lock `runs/.gen.generate.lock` that keeps
two runs on one output apart.
"""

from pathlib import Path

from iprm.data.provenance import manifest_path, read_manifest

__all__ = ["lock_path", "manifest_path", "parts_path", "read_manifest"]


def parts_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.stem}.parts")


def lock_path(output: str | Path) -> Path:
    output = Path(output)
    return output.with_name(f".{output.stem}.generate.lock")
