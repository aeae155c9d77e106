"""``python -m lrjax.find``: the command line lives in :mod:`lrjax.cli.find`."""

from lrjax.cli.find import main

if __name__ == "__main__":
    raise SystemExit(main())
