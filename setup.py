"""Build of the cellulus_fast package and its compiled extension ``cellulus_fast._C``.

Install with ``pip install --no-build-isolation .`` into an environment that already has the torch the
extension will run with (build isolation would compile against a fresh, possibly multi-GB torch).

Environment:
  FORCE_CUDA=1   build the CUDA kernels (fails if nvcc / a CUDA torch is missing)
  FORCE_CUDA=0   CPU-only build even where CUDA is available
  (unset)        CUDA kernels iff the installed torch has CUDA and a CUDA toolkit is found
  TORCH_CUDA_ARCH_LIST, MAX_JOBS as for any torch extension.
"""
import glob
import os
import site
import sys

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils import cpp_extension
except ImportError:  # pragma: no cover - reported to the user by pip
    sys.exit("cellulus-fast needs torch installed first, then `pip install --no-build-isolation .`")

ROOT = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    force = os.environ.get("FORCE_CUDA")
    if force is not None and force.strip() not in ("", "auto"):
        return force.strip() not in ("0", "false", "no")
    return torch.version.cuda is not None and cpp_extension.CUDA_HOME is not None


def cuda_math_includes() -> list:
    """torch's CUDA wheels ship cuBLAS/cuSPARSE headers (pulled in by ATen/cuda) in site-packages/nvidia."""
    roots = site.getsitepackages() + [os.path.dirname(os.path.dirname(torch.__file__))]
    found = []
    for root in roots:
        found += glob.glob(os.path.join(root, "nvidia", "cu*", "include"))
        found += glob.glob(os.path.join(root, "nvidia", "*", "include"))
    return sorted(set(found))


def extension():
    cuda = want_cuda()
    sources = sorted(glob.glob("csrc/*.cpp") + glob.glob("csrc/*/*_cpu.cpp"))
    # The C++ standard is the one torch asks for (C++20 from torch 2.14). No FP-exception flags or errno are
    # read, so (like PyTorch's own build) let the compiler vectorise and inline math without preserving them.
    cxx = ["-O3", "-fno-math-errno", "-fno-trapping-math"]
    if "OpenMP" in torch.__config__.parallel_info():
        # at::parallel_for is header-inlined with `#pragma omp parallel`; the symbols come from torch's libgomp.
        cxx += ["-fopenmp", "-DAT_PARALLEL_OPENMP=1"]
    args = dict(
        name="cellulus_fast._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
    )
    if not cuda:
        return cpp_extension.CppExtension(**args)
    if cpp_extension.CUDA_HOME is None:
        sys.exit("FORCE_CUDA=1 but no CUDA toolkit found: set CUDA_HOME")
    args["sources"] += sorted(glob.glob("csrc/*/*_cuda.cu"))
    args["include_dirs"] += cuda_math_includes()
    args["extra_compile_args"]["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
    return cpp_extension.CUDAExtension(**args)


setup(
    name="cellulus-fast",
    version="0.1.0",
    description="Fast, exact CELLULUS: self-supervised cell instance segmentation with object-centric embeddings",
    packages=find_packages(include=["cellulus_fast", "cellulus_fast.*"]),
    python_requires=">=3.10",
    install_requires=["torch>=2.4", "numpy", "scipy", "scikit-image", "scikit-learn", "tifffile", "tqdm", "matplotlib"],
    extras_require={"test": ["pytest", "hypothesis", "pytest-benchmark"]},
    ext_modules=[extension()],
    cmdclass={"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)},
    entry_points={"console_scripts": ["cellulus-fast = cellulus_fast.cli:main"]},
    zip_safe=False,
)
