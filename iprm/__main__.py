"""One command, `iprm <verb> …` (also `python -m iprm <verb> …`): every entry point of the project.

`fit`, `validate`, `test` and `predict` are the LightningCLI's (`iprm.cli`); every other verb is a module
with a `main(argv)` of its own, imported only when its verb is called, so `iprm --help` and a fit never pay
for matplotlib or the world builder. The modules stay runnable as `python -m iprm.<module>` too.

A user error (`iprm.errors.IPRMError`: bad data, a missing path, an impossible setting) is printed as one
line without a traceback, exit status 2; set `IPRM_TRACEBACK=1` to see the traceback.
"""

import importlib
import os
import sys
from dataclasses import dataclass

from iprm.errors import IPRMError


@dataclass(frozen=True)
class Verb:
    """A verb of the `iprm` command: the module whose `main(argv)` runs it, and one line of help."""

    module: str
    help: str


LIGHTNING = ("fit", "validate", "test", "predict")  # the LightningCLI's subcommands; argv keeps the verb

VERBS: dict[str, Verb] = {
    "fit": Verb("iprm.cli", "train a reward model (LightningCLI: --config …, dotted overrides)"),
    "validate": Verb("iprm.cli", "evaluate a checkpoint on the dev best-of-N sets"),
    "test": Verb("iprm.cli", "evaluate a checkpoint on the test sets: tables, <stage>-metrics.json"),
    "predict": Verb("iprm.cli", "write step scores for every record of a file"),
    "generate": Verb("iprm.generation.command", "sample N responses per problem of a task and grade them"),
    "sweep": Verb("iprm.sweep", "one fit + test per point × seed, resumable, collected into results.csv"),
    "claims": Verb("iprm.analysis.claims", "the README's claims over worlds × seeds"),
    "compare": Verb("iprm.analysis.compare", "reward models side by side across sweeps (Table 1, cost)"),
    "figures": Verb("iprm.analysis.figures", "figures of a sweep's results.csv (accuracy vs compute, N)"),
    "tune": Verb("iprm.analysis.tune", "choose each method's lr and epoch on the dev sets"),
    "frontier": Verb("iprm.analysis.frontier", "accuracy against FLOPs per method: the cost frontier"),
    "overoptimisation": Verb("iprm.analysis.overoptimisation", "which wrong candidates win as N grows"),
    "regimes": Verb("iprm.analysis.regimes", "best-of-N as errors move from misconceptions to noise"),
    "worlds-table": Verb("iprm.analysis.worlds", "a method's metrics over worlds: mean ± std of seed means"),
    "label-probe": Verb("iprm.analysis.labels", "AutoPSV's, Math-Shepherd's step labels against the truth"),
    "as-policy": Verb("iprm.analysis.as_policy", "each trained implicit PRM used as a policy (Table 3)"),
    "world": Verb("iprm.tasks.world", "build (or unpack) a controlled arithmetic world"),
    "shipped": Verb("iprm.tasks.shipped", "pack a built world, or check every shipped world's checksum"),
    "calibrate": Verb("iprm.tasks.calibrate", "train candidate generators and measure their pass@1"),
    "toy-model": Verb("iprm.tasks.toy_model", "build the toy instruct model for the real-data path"),
}


def usage() -> str:
    """The `iprm --help` text: every verb with its line of help."""
    width = max(map(len, VERBS))
    lines = [f"  {name:<{width}}  {verb.help}" for name, verb in VERBS.items()]
    return "\n".join(
        [
            "usage: iprm <verb> [--help] [arguments …]   (or: python -m iprm <verb> …)",
            "",
            "iprm: implicit process reward models, trained on outcome labels, scoring every step.",
            "",
            "verbs:",
            *lines,
            "",
            "`iprm <verb> --help` documents a verb's arguments.",
        ]
    )


def run(argv: list[str]) -> object:
    """Run the verb `argv[0]` with the rest of `argv`; returns what its `main` returns."""
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    verb = VERBS.get(name)
    if verb is None:
        print(f"iprm: unknown verb {name!r}; one of: {', '.join(VERBS)}", file=sys.stderr)
        return 2
    main = importlib.import_module(verb.module).main
    if name in LIGHTNING:
        # LightningCLI reads sys.argv itself, and warns when given arguments that also sit in sys.argv
        return main(None if argv == sys.argv[1:] else argv)
    return main(rest)


def entry(argv: list[str] | None = None) -> None:
    """The console script `iprm` (and `python -m iprm`): run a verb; a user error is one line, status 2."""
    try:
        status = run(sys.argv[1:] if argv is None else argv)
    except IPRMError as error:
        if os.environ.get("IPRM_TRACEBACK") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if isinstance(status, int) and not isinstance(status, bool) and status:
        sys.exit(status)


if __name__ == "__main__":
    entry()
