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
from typing import Any

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).parent / "csrc" / "gsf_cpu.cpp"
# Portable flags: -O3 vectorises the loops with the baseline ISA, so a build cached in a home
# directory shared by a cluster's nodes runs on each of them (no -march=native).
CFLAGS = ["-O3", "-fopenmp-simd"]
# The dtypes the kernels take (they compute in float32).
DTYPES = (torch.float32, torch.bfloat16)
# The dtypes GSF.forward sends to them: in bfloat16 this portable (SSE2) build converts more
# slowly than PyTorch's own vectorised kernels, so bf16 stays on the PyTorch operations.
DEFAULT_DTYPES = (torch.float32,)


def extension_name() -> str:
    """The build's name, with torch's version in it: a build against one torch does not load
    into another, and the build cache keys on the name and the source, not on torch."""
    return "lightning_gsf_cpu_" + re.sub(r"\W", "_", torch.__version__)


@functools.cache
def cpu_kernels() -> Any | None:
    """``torch.ops.lightning_gsf``, the kernels of ``csrc/gsf_cpu.cpp``, built on first call;
    None if turned off or the build fails (logged)."""
    if os.environ.get("LIGHTNING_GSF_CPU_KERNELS", "1") == "0":
        log.info("GSF CPU kernels turned off by LIGHTNING_GSF_CPU_KERNELS=0")
        return None
    from torch.utils import cpp_extension

    try:
        cpp_extension.load(name=extension_name(), sources=[str(SOURCE)], extra_cflags=CFLAGS,
                           is_python_module=False, verbose=False)
    except (OSError, RuntimeError, ImportError) as error:  # no compiler / ninja, or a failed build
        log.warning("GSF CPU kernels unavailable (%s: %s); GSF runs on PyTorch operations instead",
                    type(error).__name__, error)
        return None
    return torch.ops.lightning_gsf


def takes(x: torch.Tensor) -> bool:
    """Whether the kernels take ``x`` (a float32 or bfloat16 CPU tensor)."""
    return x.device.type == "cpu" and x.dtype in DTYPES


def usable(x: torch.Tensor) -> bool:
    """Whether ``GSF.forward`` should run ``x`` through the kernels: a float32 CPU tensor,
    and the kernels built (building them on first call)."""
    return x.device.type == "cpu" and x.dtype in DEFAULT_DTYPES and cpu_kernels() is not None
