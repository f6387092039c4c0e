#!/usr/bin/env bash
# Build the release files into DIR (default dist/):
#   teamsbc-VERSION.tar.gz               the sdist: the package, deploy/ (install.sh, units), docs/
#   teamsbc-VERSION-py3-none-any.whl     the wheel (the package only)
# An admin unpacks the tarball and runs its deploy/install.sh (docs/operations.md), which
# installs that tree, or a given wheel with --package FILE; dependencies come from PyPI.
# Needs python3 with setuptools (any venv has it: .venv/bin/python after ./run-tests).
set -euo pipefail
SRC=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
OUT=$(readlink -f "${1:-$SRC/dist}")
PY=${PYTHON:-$SRC/.venv/bin/python}
[[ -x "$PY" ]] || PY=python3
"$PY" -c 'import setuptools' 2>/dev/null || { echo "build-release: $PY has no setuptools (python3 -m venv .venv)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# from a clean copy: no build/ or *.egg-info left in the tree, no stray files in the sdist
tar -C "$SRC" --exclude=__pycache__ --exclude='*.pyc' -cf - pyproject.toml MANIFEST.in README.md run-sbc teamsbc deploy docs |
    tar -C "$work" -xf -
mkdir -p "$OUT"
cd "$work"
sdist=$("$PY" -c '
import contextlib, io, sys
from setuptools import build_meta as b
log = io.StringIO()
try:
    with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
        name = b.build_sdist(sys.argv[1])
except BaseException:
    sys.stderr.write(log.getvalue())
    raise
print(name)' "$OUT")
echo "$OUT/$sdist"
# the wheel is built from the sdist, so the sdist is proven to build
"$PY" -m pip wheel -q --disable-pip-version-check --no-deps -w "$OUT" "$OUT/$sdist"
ls "$OUT"/teamsbc-*.whl
