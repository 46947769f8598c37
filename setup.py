"""Build and install neox_acodm.

Extension (``neox_acodm._C``, sources in csrc/):
* built as a C++ (OpenMP) extension by default;
* CUDA kernels are added when torch has CUDA and nvcc is found, or NEOX_ACODM_FORCE_CUDA=1;
* NEOX_ACODM_SKIP_EXT=1 installs pure Python (the torch backend is then used).

Install with ``pip install --no-build-isolation -e .`` so the build uses the torch already
installed (build isolation would download a CUDA torch).
"""

import os
import re
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
SKIP_EXT = os.environ.get("NEOX_ACODM_SKIP_EXT") == "1"
FORCE_CUDA = os.environ.get("NEOX_ACODM_FORCE_CUDA") == "1"


def _extensions():
    if SKIP_EXT or not (ROOT / "csrc" / "bindings.cpp").exists():
        return [], {}
    try:
        from torch.utils import cpp_extension
    except ImportError:
        sys.exit(
            "neox_acodm: building the extension needs torch installed first "
            "(pip install torch==2.13.0), then pip install --no-build-isolation -e .; "
            "or set NEOX_ACODM_SKIP_EXT=1"
        )
    import torch

    # no -std flag: torch's BuildExtension adds the standard torch itself was built with (C++20
    # for torch >= 2.10); forcing C++17 against C++20 headers broke exceptions (segfault on H100)
    cxx = ["-O3", "-fopenmp"]
    if os.environ.get("NEOX_ACODM_NATIVE", "0") == "1":
        cxx.append("-march=native")
    else:
        cxx += ["-mavx2", "-mfma", "-mf16c"] if _x86_has_avx2() else []
    sources = ["csrc/bindings.cpp", "csrc/domain_ops_cpu.cpp"]
    want_cuda = FORCE_CUDA or (torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None)
    if want_cuda:
        if cpp_extension.CUDA_HOME is None:
            sys.exit(
                "neox_acodm: NEOX_ACODM_FORCE_CUDA=1 but torch found no CUDA toolkit "
                "(CUDA_HOME unset and this torch is a CPU build?); install a CUDA torch "
                "matching your nvcc or unset NEOX_ACODM_FORCE_CUDA"
            )
        sources.append("csrc/domain_ops_cuda.cu")
        ext = cpp_extension.CUDAExtension(
            "neox_acodm._C",
            sources,
            define_macros=[("NEOX_ACODM_WITH_CUDA", "1")],
            extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math"]},
            extra_link_args=["-fopenmp"],
        )
    else:
        ext = cpp_extension.CppExtension("neox_acodm._C", sources, extra_compile_args=cxx, extra_link_args=["-fopenmp"])
    print(f"neox_acodm: building extension ({'CUDA + CPU' if want_cuda else 'CPU'})")
    return [ext], {"build_ext": cpp_extension.BuildExtension.with_options(use_ninja=True)}


def _x86_has_avx2() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
        return all(f in flags for f in ("avx2", "fma", "f16c"))
    except OSError:
        return False


def _version() -> str:
    """The one version: ``neox_acodm.__version__``."""
    text = (ROOT / "neox_acodm" / "__init__.py").read_text()
    return re.search(r'^__version__ = "([^"]+)"', text, re.M).group(1)


ext_modules, cmdclass = _extensions()

setup(
    name="neox_acodm",
    version=_version(),
    license="Apache-2.0",
    description="Actor-Critic Online Data Mixing (AC-ODM) for GPT-NeoX and Megatron",
    long_description=(ROOT / "README.md").read_text() if (ROOT / "README.md").exists() else "",
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # the top-level patches/ folder is installed as neox_acodm.patches
    packages=find_packages(include=["neox_acodm", "neox_acodm.*"]) + ["neox_acodm.patches"],
    package_dir={"neox_acodm.patches": "patches"},
    package_data={"neox_acodm.tools.benchmix": ["scenarios/*.yml"], "neox_acodm": ["domain_lists/*.yml"]},
    install_requires=["torch>=2.1", "numpy", "pyyaml"],
    extras_require={
        "dev": ["pytest", "ruff"],
        # the embedded demo / bench-mix: HF GPT-NeoX (Pythia) model, a local SentencePiece
        # tokenizer, megatron-core indexed datasets, plots, a progress bar
        "demo": ["transformers>=4.38", "sentencepiece", "megatron-core>=0.16", "matplotlib", "tqdm"],
        # GPT-NeoX path and its CPU tests (install with DS_BUILD_OPS=0 on machines without CUDA)
        "neox": ["deepspeed>=0.14"],
        # neox-acodm report: TensorBoard's event reader and the plots
        "report": ["tensorboard", "matplotlib", "google-crc32c"],
    },
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    entry_points={"console_scripts": ["neox-acodm=neox_acodm.tools.cli:main"]},
)
