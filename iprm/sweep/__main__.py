"""`python -m iprm.sweep …`: see `iprm.sweep.cli`."""

import logging
import sys

from iprm.sweep.cli import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    sys.exit(main())
