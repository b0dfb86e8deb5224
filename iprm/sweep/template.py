"""The sweep file's template language: the only way a value can refer to the run it is used in.

A placeholder is `{name}` or `{name:point}`, and only these exist:

    {seed}        the run's seed                {point}   the run's point name
    {run}         the run's directory           {sweep}   the sweep's output directory
    {grid}        ",<grid cell>" of the run's point name, or "" without a grid cell
    {run:NAME}    the directory of point NAME's run at the same grid cell and seed; NAME must be in the
                  point's `needs:`

Braces that do not form a placeholder (`{"a": 1}`, `{ x }`) are left as they are; `{{` and `}}` write a
literal `{` and `}` (so `{{seed}}` is the text `{seed}`). A placeholder with another name, or `{run:X}` for
an X the point does not need, is a one-line error naming the point and the value. There is no attribute,
index or format-spec access: nothing but these strings is ever read. Values inside lists and mappings are
filled too. A value that writes `{sweep}/<point>` for a point it does not need is refused, since that
reads another run's output without waiting for it.
"""

import re
from typing import Any

from iprm.errors import ConfigError
from iprm.sweep.plan import Run, flag_value

TOKEN = re.compile(r"\{\{|\}\}|\{([A-Za-z_][A-Za-z0-9_]*)(?::([A-Za-z0-9_.+@-]+))?\}")
NAMES = ("seed", "point", "run", "sweep", "grid")


def _fields(run: Run) -> dict[str, str]:
    return {
        "seed": str(run.seed),
        "point": run.point,
        "run": str(run.directory),
        "sweep": str(run.sweep_dir),
        "grid": f",{run.cell}" if run.cell else "",
    }


def fill(value: str, run: Run, key: str = "value") -> str:
    """`value` with its placeholders filled for `run` (see the module docstring)."""
    fields = _fields(run)

    def one(match: re.Match) -> str:
        token, name, argument = match.group(0), match.group(1), match.group(2)
        if token in ("{{", "}}"):
            return token[0]
        if name == "run" and argument is not None:
            if argument not in run.needs:
                raise ConfigError(
                    f"sweep point {run.point!r}, {key}: {token} in {value!r} names a point it does not "
                    f"declare; add needs: [{argument}] to the point"
                )
            return str(run.sweep_dir / run.dependency(argument) / f"seed{run.seed}")
        if name not in fields or argument is not None:
            raise ConfigError(
                f"sweep point {run.point!r}, {key}: unknown placeholder {token} in {value!r}; known: "
                + ", ".join("{" + n + "}" for n in NAMES)
                + ", {run:NAME}; write {{ and }} for literal braces"
            )
        return fields[name]

    return TOKEN.sub(one, value)


def check_references(value: str, run: Run, key: str, points: set[str]) -> None:
    """Refuse `{sweep}/<point>` for a point `run` does not need: it would read an output not waited for."""
    for match in re.finditer(r"\{sweep\}/([A-Za-z0-9_][A-Za-z0-9_.+@-]*)", value):
        name = match.group(1)
        if name in points and name not in run.needs and run.dependency(name) != run.point:
            raise ConfigError(
                f"sweep point {run.point!r}, {key}: {value!r} reads point {name!r}'s output without "
                f"declaring it; add needs: [{name}] and write {{run:{name}}}"
            )


def expand(value: Any, run: Run, key: str = "value", points: set[str] = frozenset()) -> str:
    """A CLI value for `run`: strings filled, lists and mappings filled inside then written as JSON."""
    return flag_value(_fill_deep(value, run, key, points))


def _fill_deep(value: Any, run: Run, key: str, points: set[str]) -> Any:
    if isinstance(value, str):
        check_references(value, run, key, points)
        return fill(value, run, key)
    if isinstance(value, list):
        return [_fill_deep(item, run, key, points) for item in value]
    if isinstance(value, dict):
        return {k: _fill_deep(item, run, key, points) for k, item in value.items()}
    return value
