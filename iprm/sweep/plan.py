"""Planning: a sweep file → its points (validated names, declared dependencies) → its runs, in waves.

A sweep file is data, never code. Its points are explicit ones (`config:` overlays, dotted overrides and
`needs:`), a grid of dotted overrides (their cartesian product), or both (crossed). A point's name becomes a
directory, so it must be a safe name: explicit names match `NAME` below, grid cells are `key=value` with
the same characters, and a name is never `.`/`..`, absolute, or holding a path separator.

A point that reads another point's output says so with `needs: [orm]`: its run at grid cell c and seed s
then waits for `orm`'s run at c and s (the same wave order locally, `afterok` on SLURM), and a failed
dependency skips it. The values of a point are filled by `iprm.sweep.template`; `{run:orm}` names the
needed run's directory and is allowed only for a declared dependency.
"""

import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from iprm.errors import ConfigError, MissingPathError

DEFAULT_SEEDS = [0, 1, 2]
KEYS = {"name", "base", "seeds", "points", "grid", "n", "launcher"}
# Safe in a file name on every file system we know, and never a path separator, a brace or a comma (the
# comma joins an explicit point to its grid cell).
NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+@-]{0,99}")
CELL_VALUE = re.compile(r"[A-Za-z0-9_.+@-]{1,100}")


@dataclass(frozen=True)
class Run:
    """One point of a sweep at one seed; `needs` are the point names (same cell, same seed) it waits for."""

    point: str
    seed: int
    overrides: dict[str, Any]  # "config" → overlay paths; every other key a dotted CLI key
    directory: Path
    needs: tuple[str, ...] = ()

    @property
    def done(self) -> bool:
        return (self.directory / "metrics.json").exists()

    @property
    def cell(self) -> str:
        """The grid cell of the point's name ("" without a grid)."""
        return self.point.partition(",")[2]

    @property
    def sweep_dir(self) -> Path:
        return self.directory.parent.parent

    def dependency(self, name: str) -> str:
        """The full point name of needed point `name` at this run's grid cell."""
        return f"{name},{self.cell}" if self.cell else name

    def __hash__(self) -> int:  # overrides hold lists and dicts: a run is known by its point and seed
        return hash((self.point, self.seed, self.directory))

    def __str__(self) -> str:
        return f"{self.point} seed {self.seed}"


def load_sweep(path: str | Path) -> dict:
    """The sweep file, checked: known keys, safe point names, dependencies on points that exist."""
    try:
        sweep = yaml.safe_load(Path(path).read_text())
    except OSError as error:
        raise MissingPathError(f"{path}: cannot read the sweep file ({error.strerror})") from None
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(error).split())})") from None
    if not isinstance(sweep, dict):
        raise ConfigError(f"{path}: a sweep file is a mapping (name, base, seeds, points, grid, …)")
    unknown = set(sweep) - KEYS
    if unknown:
        raise ConfigError(f"{path}: unknown sweep keys {sorted(unknown)}; known: {sorted(KEYS)}")
    sweep.setdefault("name", Path(path).stem)
    _check_name(sweep["name"], f"{path}: name")
    sweep["base"] = _as_list(sweep.get("base", []))
    sweep.setdefault("seeds", DEFAULT_SEEDS)
    sweep.setdefault("n", 16)
    sweep.setdefault("launcher", {})
    seeds = sweep["seeds"]
    if not isinstance(seeds, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise ConfigError(f"{path}: seeds is a list of whole numbers, not {seeds!r}")
    if not isinstance(sweep["n"], int) or not isinstance(sweep["launcher"], dict):
        raise ConfigError(f"{path}: n is a whole number and launcher a mapping")
    points(sweep, where=str(path))  # every name and dependency checked now, before anything runs
    return sweep


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, list | tuple) else [value]


def _check_name(name: Any, where: str) -> str:
    if not isinstance(name, str) or not NAME.fullmatch(name) or name in {".", ".."}:
        raise ConfigError(
            f"{where}: {name!r} is not a safe name (letters, digits and _ . + @ -, starting with a letter, "
            "digit or _; no path separators, braces or commas)"
        )
    return name


def flag_value(value: Any) -> str:
    """A value as the CLI parses it: strings as they are; true/false/null, numbers, lists, dicts as JSON."""
    return value if isinstance(value, str) else json.dumps(value)


def _normalise(overrides: dict | None, where: str) -> dict[str, Any]:
    """`--config`/`config` → a list of overlays; `--a.b` → `a.b`; `needs` kept as a list of names."""
    if overrides is not None and not isinstance(overrides, dict):
        raise ConfigError(f"{where}: a point is a mapping of overrides, not {overrides!r}")
    out = {key.lstrip("-"): value for key, value in (overrides or {}).items()}
    if "config" in out:
        out["config"] = _as_list(out["config"])
    if "needs" in out:
        out["needs"] = [_check_name(name, f"{where}: needs") for name in _as_list(out["needs"])]
    return out


def _grid_points(grid: dict[str, list], where: str) -> dict[str, dict]:
    """Each combination of grid values, named by the last key parts: `deduplicate=true,balance=dataset`."""
    if not isinstance(grid, dict):
        raise ConfigError(f"{where}: grid is a mapping of dotted keys to lists of values")
    keys, out = list(grid), {}
    for values in itertools.product(*(_as_list(grid[key]) for key in keys)):
        cell = dict(zip(keys, values, strict=True))
        parts = []
        for key, value in cell.items():
            text = flag_value(value)
            if not CELL_VALUE.fullmatch(text) or text in {".", ".."}:
                raise ConfigError(
                    f"{where}: grid value {text!r} of {key} cannot be part of a directory name; use "
                    "explicit points with safe names for such values"
                )
            parts.append(f"{key.split('.')[-1]}={text}")
        out[",".join(parts)] = cell
    return out


def _explicit(sweep: dict, where: str) -> dict[str, dict[str, Any]]:
    raw = sweep.get("points") or {"": {}}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: points is a mapping of point names to overrides")
    explicit = {}
    for name, overrides in raw.items():
        if name != "" or len(raw) > 1:
            _check_name(name, f"{where}: point")
        explicit[name] = _normalise(overrides, f"{where}: point {name!r}")
    for name, overrides in explicit.items():
        for needed in overrides.get("needs", []):
            if needed not in explicit:
                raise ConfigError(f"{where}: point {name!r} needs {needed!r}, which is not a point")
    _waves_of(explicit, where)  # a cycle is refused here
    return explicit


def _waves_of(explicit: dict[str, dict], where: str) -> dict[str, int]:
    """Explicit point → its wave: 0 without needs, else one more than the latest wave it needs."""
    wave: dict[str, int] = {}
    while len(wave) < len(explicit):
        ready = [
            name
            for name, o in explicit.items()
            if name not in wave and all(n in wave for n in o.get("needs", []))
        ]
        if not ready:
            cycle = sorted(set(explicit) - set(wave))
            raise ConfigError(f"{where}: points {cycle} need each other in a cycle")
        for name in ready:
            wave[name] = 1 + max((wave[n] for n in explicit[name].get("needs", [])), default=-1)
    return wave


def points(sweep: dict, where: str = "sweep") -> dict[str, dict[str, Any]]:
    """Point name → its overrides (without `needs`): the explicit points crossed with the grid."""
    return {name: overrides for name, (overrides, _, _) in _crossed(sweep, where).items()}


def _crossed(sweep: dict, where: str) -> dict[str, tuple[dict, tuple[str, ...], int]]:
    """Point name → (overrides, the explicit points it needs, its wave)."""
    explicit = _explicit(sweep, where)
    waves = _waves_of(explicit, where)
    grid = _grid_points(sweep["grid"], f"{where}: grid") if sweep.get("grid") else {"": {}}
    crossed = {}
    for (name, overrides), (cell, values) in itertools.product(explicit.items(), grid.items()):
        own = {key: value for key, value in overrides.items() if key != "needs"}
        full = ",".join(part for part in (name, cell) if part) or "base"
        crossed[full] = ({**own, **values}, tuple(overrides.get("needs", [])), waves[name])
    return crossed


def selected(sweep: dict, names: list[str]) -> set[str]:
    """The full point names (every grid cell) of explicit points `names` and of every point they need."""
    explicit = _explicit(sweep, "sweep")
    unknown = [name for name in names if name not in explicit]
    if unknown:
        known = [name for name in explicit if name] or "none: it has a grid only"
        raise ConfigError(
            f"--points: {unknown} are not points of sweep {sweep['name']!r} (its points: {known})"
        )
    chosen, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name not in chosen:
            chosen.add(name)
            todo.extend(explicit[name].get("needs", []))
    grid = _grid_points(sweep["grid"], "sweep: grid") if sweep.get("grid") else {"": {}}
    return {",".join(part for part in (name, cell) if part) or "base" for name in chosen for cell in grid}


def plan(sweep: dict, output: Path, seeds: list[int], by_seed: bool = False) -> list[Run]:
    """The runs in the order they run: wave by wave (a run after every run it needs); within a wave point
    by point (each at every seed), or seed by seed."""
    crossed = _crossed(sweep, "sweep")
    runs = [
        (wave, Run(name, seed, overrides, output / name / f"seed{seed}", needs))
        for name, (overrides, needs, wave) in crossed.items()
        for seed in seeds
    ]
    key = (lambda item: (item[0], seeds.index(item[1].seed))) if by_seed else (lambda item: item[0])
    return [run for _, run in sorted(runs, key=key)]  # sorted() is stable: the file's order otherwise


def waves(runs: list[Run]) -> list[list[Run]]:
    """The runs split into waves: each run after every run it needs (planned order kept within a wave)."""
    by_key = {(run.point, run.seed): run for run in runs}
    level: dict[tuple[str, int], int] = {}
    for run in runs:  # planned order is already topological
        needed = [(run.dependency(n), run.seed) for n in run.needs]
        level[(run.point, run.seed)] = 1 + max((level[k] for k in needed if k in by_key), default=-1)
    out: list[list[Run]] = [[] for _ in range(1 + max(level.values(), default=-1))]
    for run in runs:
        out[level[(run.point, run.seed)]].append(run)
    return out


def dependencies(run: Run, runs: list[Run]) -> list[Run]:
    """The planned runs that `run` needs."""
    wanted = {(run.dependency(name), run.seed) for name in run.needs}
    return [other for other in runs if (other.point, other.seed) in wanted]
