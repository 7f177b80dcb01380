# Sourced by .ci/test and .ci/demo: a virtual environment with the CPU build of torch and the project's
# dependencies in .venv (made once, reused), and the extension built in place against that torch.
# Needs python3 (3.10+) and a C++ compiler; no network beyond the package index.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel 2>&1 | grep -v "^WARNING: Location" || true
# torch first and pinned: the extension must be built against the torch it runs with, and pip's build
# isolation is off below so that a build never pulls a different (multi-GB) torch.
python -m pip install -q "torch==2.13.0" 2>&1 | grep -v "^WARNING: Location" || true
python -m pip install -q numpy scipy scikit-image scikit-learn tifffile tqdm pytest hypothesis \
  pytest-benchmark ninja matplotlib 2>&1 | grep -v "^WARNING: Location" || true
FORCE_CUDA="${FORCE_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-2}" python -m pip install -q --no-build-isolation -e . \
  2>&1 | grep -v "^WARNING: Location" || true
python -c "import cellulus_fast" || { echo "cellulus_fast failed to build/import" >&2; exit 1; }
