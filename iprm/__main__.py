"""`python -m iprm {fit,validate,test,predict} --config …`."""

from iprm.cli import main

if __name__ == "__main__":
    main()
