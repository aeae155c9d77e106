"""``python -m lrjax.train``: the command line lives in :mod:`lrjax.cli.train`."""

from lrjax.cli.train import main

if __name__ == "__main__":
    raise SystemExit(main())
