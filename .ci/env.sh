# Sourced by .ci/test, .ci/demo, .ci/benchmarks and .ci/quality: a virtual environment with the CPU build of
# torch and the project's dependencies in .venv (made once, reused), and the extension built in place against that torch.
# Needs python3 (3.10+) and a C++ compiler; no network beyond the package index.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
# shellcheck disable=SC1091
source .venv/bin/activate
# pip quietly; its full output only if it fails (this machine's pip config warns about missing mirrors).
pip_install() {
  local log
  log="$(mktemp)"
  if ! python -m pip install -q "$@" > "$log" 2>&1; then cat "$log" >&2; rm -f "$log"; return 1; fi
  rm -f "$log"
}
# torch first and pinned: the extension must be built against the torch it runs with, and pip's build
# isolation is off below so that a build never pulls a different (multi-GB) torch.
pip_install "torch==2.13.0"
pip_install numpy scipy scikit-image scikit-learn tifffile tqdm matplotlib pytest hypothesis pytest-benchmark \
  ninja setuptools wheel
# The editable install rebuilds the extension from scratch (minutes): only when its sources (names and
# contents), the build files, the toolchain or the build settings changed since the last successful build in
# this .venv, or when the built extension does not import.
stamp=.venv/.cellulus-fast-build
want="$( (cat setup.py pyproject.toml; find csrc -type f -print0 | sort -z | xargs -0 sha256sum; \
  "${CXX:-c++}" --version | head -1; python -c 'import sys, torch; print(sys.version, torch.__version__)'; \
  echo "FORCE_CUDA=${FORCE_CUDA:-0} CFLAGS=${CFLAGS:-} CXXFLAGS=${CXXFLAGS:-} ARCH=${TORCH_CUDA_ARCH_LIST:-}") \
  | sha256sum)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! (cd /tmp && python -c "import cellulus_fast._C") 2>/dev/null; then
  rm -f "$stamp"
  FORCE_CUDA="${FORCE_CUDA:-0}" MAX_JOBS="${MAX_JOBS:-2}" pip_install --no-build-isolation -e .
  echo "$want" > "$stamp"
fi
python -c "import cellulus_fast"
