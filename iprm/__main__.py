"""`python -m iprm {fit,validate,test,predict} --config …`.

A user error (`iprm.errors.IPRMError`: bad data, a missing path, an impossible setting) is printed as one
line without a traceback, exit status 2; set `IPRM_TRACEBACK=1` to see the traceback.
"""

import os
import sys

from iprm.cli import main
from iprm.errors import IPRMError

if __name__ == "__main__":
    try:
        main()
    except IPRMError as error:
        if os.environ.get("IPRM_TRACEBACK") == "1":
            raise
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
