#!/usr/bin/env bash
# The GPU check of batched client compute (issue 17), in one command on a machine with a CUDA GPU
# and a Python that has torch:
#
#   bash benchmarks/gpu-check.sh [RESULTS_DIR] [benchmarks/gpu.py arguments ...]
#
# 1. installs what rayfl lacks there, never torch: Ray from .whl/ when the repo holds one
#    (../shared/tools/gpu-wheels.sh packs Ray's wheel for a machine without network), else from
#    PyPI, then rayfl itself (pip install -e . --no-deps; PYTHONPATH if that cannot build);
# 2. checks CUDA against CPU: batched vs one-job updates, the worker's choice, the out-of-memory
#    message (benchmarks/gpu_correctness.py, through gpu.py --check);
# 3. measures client updates/s of the paper CNN end to end (rayfl.run on the virtual clock):
#    B = 4 and 16, K = 10 and 100, 1/2/4/8 workers per GPU, one-job vs batched (gpu.py; about
#    15-20 minutes on one GPU);
# 4. times the server's rule chain (WKAFL + SGD, K = 100) on numpy (CPU) and on torch (CUDA),
#    at the MLP's and the paper CNN's P (benchmarks/chain.py; aggregation.backend).
#
# Results go to RESULTS_DIR (default runs/gpu-check-<time>): environment.txt, check.json,
# check.log, grid.json, grid.log, chain-<backend>-<P>.json. Without CUDA it runs the CPU-sized grid (gpu.py --quick).
# PYTHON picks the interpreter (default python3). Exit status 1 if the correctness check fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
PY=${PYTHON:-python3}
RESULTS=runs/gpu-check-$(date +%Y%m%d-%H%M%S)
if [ $# -gt 0 ] && [[ $1 != -* ]]; then
  RESULTS=$1
  shift
fi
mkdir -p "$RESULTS"
export PYTHONUNBUFFERED=1

say() { printf '\n=== %s\n' "$*"; }

missing() {  # the pip names of rayfl's dependencies (pyproject.toml) that do not import, torch aside
  "$PY" - <<'EOF'
import importlib.util as u

wanted = {"ray": "ray[default]>=2.40,<3", "numpy": "numpy>=1.24,<3", "pyarrow": "pyarrow>=14",
          "yaml": "pyyaml>=6", "tqdm": "tqdm>=4.60", "matplotlib": "matplotlib>=3.7",
          "psutil": "psutil>=5.9", "pandas": "pandas"}
for module, pip in wanted.items():
    if u.find_spec(module) is None:
        print(pip)
EOF
}

say "torch and CUDA"
"$PY" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())'
CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))')

say "installing what is missing (torch is left as it is)"
OFFLINE=0
if [ -d .whl ] && ls .whl/ray-*.whl >/dev/null 2>&1 && ! "$PY" -c 'import ray' 2>/dev/null; then
  OFFLINE=1
  SITE=${RAYFL_SITE:-/tmp/rayfl-site}
  "$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  echo "Ray from .whl/ into $SITE"
fi
mapfile -t NEED < <(missing)
if [ ${#NEED[@]} -gt 0 ]; then
  echo "from PyPI: ${NEED[*]}"
  "$PY" -m pip install -q "${NEED[@]}" || {
    echo "pip could not install ${NEED[*]}: inside a virtual environment that sees torch, run" >&2
    echo "  python3 -m venv --system-site-packages .venv && . .venv/bin/activate" >&2
    exit 2
  }
fi
if ! "$PY" -c 'import rayfl, os, sys; sys.exit(os.path.dirname(rayfl.__file__) != os.path.abspath("rayfl"))' 2>/dev/null; then
  FLAGS=(--no-deps -e .)
  [ "$OFFLINE" = 1 ] && FLAGS=(--no-deps --no-build-isolation --no-index -e .)
  "$PY" -m pip install -q "${FLAGS[@]}" || {
    echo "pip install -e . failed: using rayfl from PYTHONPATH=$PWD"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
  }
fi
"$PY" -c 'import ray, rayfl; print("ray", ray.__version__, "rayfl", rayfl.__file__)'

{
  date -u
  nvidia-smi 2>/dev/null || echo "no nvidia-smi"
  "$PY" -m pip list 2>/dev/null | grep -i -E '^(torch|ray|numpy|pyarrow|pandas) ' || true
} >"$RESULTS/environment.txt"

say "correctness: CUDA vs CPU, batched vs one job"
CHECK=0
"$PY" benchmarks/gpu.py --check --json "$RESULTS/check.json" 2>&1 | tee "$RESULTS/check.log" || CHECK=$?

say "throughput: client updates/s (paper CNN, end to end)"
GRID=()
[ "$CUDA" = 1 ] || { echo "no CUDA: the CPU-sized grid"; GRID=(--quick); }
"$PY" benchmarks/gpu.py ${GRID[@]+"${GRID[@]}"} --json "$RESULTS/grid.json" "$@" 2>&1 | tee "$RESULTS/grid.log"

say "server chain: ms per iteration, numpy on the CPU vs torch on the GPU (K = 100)"
BACKENDS=(numpy)
[ "$CUDA" = 1 ] && BACKENDS+=(torch)
for P in 25450 582026; do
  for B in "${BACKENDS[@]}"; do
    "$PY" benchmarks/chain.py --backend "$B" --device cuda --params "$P" --iterations 50 \
      --repeats 3 --json "$RESULTS/chain-$B-$P.json" | grep -E '"(backend|params|ms_per_iteration)"'
  done
done

say "results in $RESULTS"
if [ "$CHECK" != 0 ]; then
  echo "the correctness check FAILED (see $RESULTS/check.log)" >&2
  exit 1
fi
echo "correctness check passed"
