"""`python -m iprm {fit,validate,test,predict} --config …`, and `python -m iprm generate …`.

A user error (`iprm.errors.IPRMError`: bad data, a missing path, an impossible setting) is printed as one
line without a traceback, exit status 2; set `IPRM_TRACEBACK=1` to see the traceback.
"""

import os
import sys

from iprm.errors import IPRMError


def run(argv: list[str]) -> None:
    """`generate` is a command of its own (`iprm.generation.command`); the rest are the LightningCLI's."""
    if argv[:1] == ["generate"]:
        from iprm.generation.command import main as generate

        generate(argv[1:])
    else:
        from iprm.cli import main

        if argv[:1] in (["-h"], ["--help"]):  # the LightningCLI's help lists its own subcommands only
            print("python -m iprm generate --help: sample N responses per problem and grade them\n")
        main()


if __name__ == "__main__":
    try:
        run(sys.argv[1:])
    except IPRMError as error:
        if os.environ.get("IPRM_TRACEBACK") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
