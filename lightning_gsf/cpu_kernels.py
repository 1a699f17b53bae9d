"""GSF's C++ CPU kernels (``csrc/gsf_cpu.cpp``), built on first use.

:func:`cpu_kernels` compiles the source with ``torch.utils.cpp_extension`` (a C++ compiler
and ninja are needed; a few seconds, once: the build is cached under
``$TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``, and rebuilt when the
source or torch changes) and returns the ``torch.ops.lightning_gsf`` namespace. Where the
build fails, it logs why, once, and returns None: GSF then runs on PyTorch operations
(``GSF.forward_torch``), the same numbers, slower. ``LIGHTNING_GSF_CPU_KERNELS=0`` turns the
kernels off.
"""

from __future__ import annotations

import functools
import logging
import os
import re
from pathlib import Path
from types import ModuleType
from typing import Any

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "gsf_cpu.cpp"
CFLAGS = ["-O3", "-fopenmp-simd"]
# Vector instructions by the CPU capability that torch itself dispatches to (x86-64 levels:
# v3 = AVX2/FMA, v4 = AVX-512). The level is part of the build's name, so a build cached in a
# home directory shared by a cluster's nodes only loads on nodes of the same level.
ISA_FLAGS = {"AVX2": ["-march=x86-64-v3"], "AVX512": ["-march=x86-64-v4"]}
# The dtypes the kernels take (they compute in float32).
DTYPES = (torch.float32, torch.bfloat16)
# The dtypes GSF.forward sends to them: float32, and bfloat16 where the build has AVX2 or
# AVX-512 (with the baseline SSE2 only, its conversions run slower than PyTorch's kernels).
BF16_CAPABILITIES = ("AVX2", "AVX512")


def cpu_capability() -> str:
    """torch's CPU capability (``AVX512``, ``AVX2``, ``DEFAULT``, ...) where it has one for
    the C++ build, else ``DEFAULT``."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in ISA_FLAGS else "DEFAULT"


def extension_name() -> str:
    """The build's name, with torch's version and the instruction set in it: a build against
    one torch does not load into another, nor an AVX-512 build run on an AVX2 node, and the
    build cache keys on the name and the source only."""
    return f"lightning_gsf_cpu_{re.sub(r'[^0-9A-Za-z]', '_', torch.__version__)}_{cpu_capability().lower()}"


@functools.cache
def cpu_kernels() -> Any | None:
    """``torch.ops.lightning_gsf``, the kernels of ``csrc/gsf_cpu.cpp``, built on first call;
    None if turned off or the build fails (logged)."""
    if os.environ.get("LIGHTNING_GSF_CPU_KERNELS", "1") == "0":
        log.info("GSF CPU kernels turned off by LIGHTNING_GSF_CPU_KERNELS=0")
        return None
    cpp_extension = _import_cpp_extension()
    try:
        cpp_extension.load(name=extension_name(), sources=[str(SOURCE)],
                           extra_cflags=CFLAGS + ISA_FLAGS.get(cpu_capability(), []), is_python_module=False,
                           verbose=False)
    except (OSError, RuntimeError, ImportError) as error:  # no compiler / ninja, or a failed build
        log.warning("GSF CPU kernels unavailable (%s: %s); GSF runs on PyTorch operations instead",
                    type(error).__name__, error)
        return None
    return torch.ops.lightning_gsf


def _import_cpp_extension() -> ModuleType:
    """``torch.utils.cpp_extension``, imported without its warning that no CUDA runtime was
    found (it looks for one on import; this CPU build does not need it)."""
    torch_log = logging.getLogger("torch.utils.cpp_extension")
    level = torch_log.level
    torch_log.setLevel(logging.ERROR)
    try:
        from torch.utils import cpp_extension
    finally:
        torch_log.setLevel(level)
    return cpp_extension


def takes(x: torch.Tensor) -> bool:
    """Whether the kernels take ``x`` (a float32 or bfloat16 CPU tensor)."""
    return x.device.type == "cpu" and x.dtype in DTYPES


def usable(x: torch.Tensor) -> bool:
    """Whether ``GSF.forward`` should run ``x`` through the kernels: a float32 CPU tensor (or
    bfloat16 on an AVX2 / AVX-512 CPU), and the kernels built (building them on first call)."""
    if x.device.type != "cpu" or x.dtype not in DTYPES:
        return False
    if x.dtype == torch.bfloat16 and cpu_capability() not in BF16_CAPABILITIES:
        return False
    return cpu_kernels() is not None
