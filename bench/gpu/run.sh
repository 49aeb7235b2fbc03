#!/usr/bin/env bash
# The GPU check, from the repository root of the GPU machine:
#
#   bash bench/gpu/run.sh [--dry-run] [--out DIR] [--only check1,check2] [--budget-s S] [--seed N]
#
# Installs the wheels that bench/gpu/prepare.sh put in .whl/ and the project, all with --no-deps,
# into a scratch target on PYTHONPATH (no network needed), then runs bench/gpu/driver.py, which
# writes DIR/gpu_check.json (default runs/gpu-check/); everything printed also goes to
# DIR/gpu_check.log. Exit status 1 if a check failed.
#
# --dry-run: the same checks on the CPU at tiny sizes, Triton kernels interpreted; it uses the
# current environment (make test runs it so the check cannot rot). PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")/../.."

PYTHON=${PYTHON:-python3}
OUT=runs/gpu-check
DRY=0
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[i]}" in
    --dry-run) DRY=1 ;;
    --out) OUT="${args[i + 1]:?--out needs a folder}" ;;
    --out=*) OUT="${args[i]#--out=}" ;;
  esac
done
# Scratch: compiled kernels and the CUDA extension stay there for a rerun on the GPU machine; a
# dry run (several may run at once on a CPU machine) gets its own, removed at the end.
if [ -n "${FEDBRB_GPU_CHECK_SCRATCH:-}" ]; then
  SCRATCH=$FEDBRB_GPU_CHECK_SCRATCH
elif [ "$DRY" = 1 ]; then
  SCRATCH=$(mktemp -d)
  trap 'rm -rf "$SCRATCH"' EXIT
else
  SCRATCH=/tmp/fedbrb-gpu-check
fi
mkdir -p "$OUT" "$SCRATCH"

install_into_scratch() {
  local site="$SCRATCH/site"
  rm -rf "$site"
  mkdir -p "$site"
  echo "installing $(ls .whl/*.whl | wc -l) wheels from .whl/ and the project (--no-deps) into $site"
  "$PYTHON" -m pip install --quiet --no-index --no-deps --target "$site" .whl/*.whl
  # The project's build backend (setuptools, wheel) comes from .whl/ too.
  "$PYTHON" -m pip install --quiet --no-index --find-links .whl --no-deps --target "$site" .
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
  export PATH="$site/bin:$PATH"  # ninja, for torch's extension builds
}

main() {
  if [ "$DRY" = 1 ]; then
    export TRITON_INTERPRET=1
    echo "dry run: the current environment ($PYTHON), no install"
  else
    unset TRITON_INTERPRET  # Triton must compile its kernels for the GPU
    if ls .whl/*.whl >/dev/null 2>&1; then
      install_into_scratch
    else
      echo "no wheels in .whl/ (bench/gpu/prepare.sh makes them): using the current environment"
    fi
  fi
  export FEDBRB_GPU_CHECK_WORK="$SCRATCH/work"
  export TRITON_CACHE_DIR="$SCRATCH/triton-cache"  # shared by the checks, kept for a rerun
  export TORCH_EXTENSIONS_DIR="$SCRATCH/torch-extensions"
  "$PYTHON" -u bench/gpu/driver.py "$@"
}

main "$@" 2>&1 | tee "$OUT/gpu_check.log"
exit "${PIPESTATUS[0]}"
