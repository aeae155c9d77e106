#!/usr/bin/env bash
# Sets up lrjax on a fresh machine: the Debian Fashion-MNIST package (where apt-get
# is available and we are root), a virtual environment in .venv, and the package.
#   bash scripts/setup.sh          # runtime only
#   bash scripts/setup.sh --test   # plus pytest, ruff and tensorflow-datasets
# $PYTHON picks the interpreter (default python3), $VENV the environment's directory
# (default .venv), e.g. PYTHON=python3.12 VENV=.venv312 bash scripts/setup.sh --test
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "setup: installing dataset-fashion-mnist with apt-get" >&2
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
      apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
      || echo "setup: apt-get failed; lrjax will look in the cache or download" >&2
  else
    echo "setup: no apt-get as root; lrjax will look in the cache or download" >&2
  fi
fi

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
[ -x "$VENV/bin/python" ] || "$PY" -m venv "$VENV"
extra=""
[ "${1:-}" = "--test" ] && extra="[test]"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -e ".${extra}"
