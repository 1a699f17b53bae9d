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
# -fopenmp: at::parallel_for (ATen's OpenMP backend, a header template) only splits work across
# threads in code compiled with OpenMP; without it every kernel ran on one thread. The build
# links libgomp.so.1, the runtime torch has already loaded.
CFLAGS = ["-O3", "-fopenmp"]
LDFLAGS = ["-fopenmp"]
# Vector instructions by the CPU capability that torch itself dispatches to (x86-64 levels:
# v3 = AVX2/FMA, v4 = AVX-512). The level is part of the build's name, so a build cached in a
# home directory shared by a cluster's nodes only loads on nodes of the same level.
ISA_FLAGS = {"AVX2": ["-march=x86-64-v3"], "AVX512": ["-march=x86-64-v4"]}
# The dtypes the kernels take (they compute in float32). GSF.forward sends them float32, and
# bfloat16 only to a build with one of the ISA_FLAGS levels: with the baseline SSE2 alone,
# the bf16 conversions run slower than PyTorch's own kernels.
DTYPES = (torch.float32, torch.bfloat16)


def cpu_capability() -> str:
    """torch's CPU capability (``AVX512``, ``AVX2``, ``DEFAULT``, ...) where it has one for
    the C++ build, else ``DEFAULT``."""
    capability = torch.backends.cpu.get_cpu_capability()
    return capability if capability in ISA_FLAGS else "DEFAULT"


def extension_name(capability: str) -> str:
    """The build's name, with torch's version and the instruction set in it: a build against
    one torch never loads into another, nor an AVX-512 build onto an AVX2 node sharing the
    cache directory (and builds for different levels do not keep replacing each other)."""
    return f"lightning_gsf_cpu_{re.sub(r'[^0-9A-Za-z]', '_', torch.__version__)}_{capability.lower()}"


def load_build(name: str, source: Path, capability: str) -> None:
    """Build ``source`` (or load its cached build) as the extension ``name`` with this project's
    compiler and linker flags for ``capability``, registering its ops (also how
    ``scripts/compare_cpu_kernels.py`` builds another revision's kernels)."""
    _import_cpp_extension().load(name=name, sources=[str(source)], extra_cflags=CFLAGS + ISA_FLAGS.get(capability, []),
                                 extra_ldflags=LDFLAGS, is_python_module=False, verbose=False)


@functools.cache
def _build() -> tuple[Any, str] | None:
    """Build (or load the cached build of) the kernels: ``(torch.ops.lightning_gsf, the
    capability built for)``, for torch's CPU capability first and then, if that fails (a
    compiler too old for ``-march=x86-64-v4``, say), for the baseline; None if turned off or
    no build works (logged)."""
    if os.environ.get("LIGHTNING_GSF_CPU_KERNELS", "1") == "0":
        log.info("GSF CPU kernels turned off by LIGHTNING_GSF_CPU_KERNELS=0")
        return None
    for capability in dict.fromkeys((cpu_capability(), "DEFAULT")):
        try:
            load_build(extension_name(capability), SOURCE, capability)
        except (OSError, RuntimeError, ImportError) as error:  # no compiler / ninja, or a failed build
            log.warning("GSF CPU kernels for %s unavailable (%s: %s)", capability, type(error).__name__, error)
            continue
        _register_compiled_ops()
        return torch.ops.lightning_gsf, capability
    log.warning("GSF runs on PyTorch operations instead of its CPU kernels")
    return None


def _register_compiled_ops() -> None:
    """Put the C++ kernels behind the ops that :mod:`lightning_gsf.compiled_ops` defines for
    compiled graphs (GSF's inference, TSM's shift): they run wherever the kernels are built."""
    from lightning_gsf import compiled_ops  # (which imports this module)

    torch.ops.lightning_gsf.register_compiled_ops(compiled_ops.NAMESPACE)


def cpu_kernels() -> Any | None:
    """``torch.ops.lightning_gsf``, the kernels of ``csrc/gsf_cpu.cpp``, built on first call;
    None if turned off or the build fails (logged)."""
    built = _build()
    return None if built is None else built[0]


def built_capability() -> str | None:
    """The instruction-set level the loaded kernels were built for, None without kernels."""
    built = _build()
    return None if built is None else built[1]


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
    """Whether the kernels take ``x``: a plain (not a subclass such as a fake or distributed
    tensor) float32 or bfloat16 CPU tensor."""
    return type(x) is torch.Tensor and x.is_cpu and x.dtype in DTYPES


def usable(x: torch.Tensor) -> bool:
    """Whether ``GSF.forward`` should run ``x`` through the kernels: one they take, in float32
    (or bfloat16 with an AVX2 / AVX-512 build), and the kernels built (building them on
    first call)."""
    capability = built_capability() if takes(x) else None
    return capability is not None and (x.dtype == torch.float32 or capability in ISA_FLAGS)


def addressable(*maps: torch.Tensor) -> bool:
    """Whether the kernels address these ``(N*T, C, H, W)`` maps: one stride over H*W, and
    either every map's pixels contiguous (NCHW) or every map's channels (channels-last);
    channel slices of such maps included."""
    def uniform_pixels(t: torch.Tensor) -> bool:
        return t.shape[2] == 1 or t.stride(2) == t.shape[3] * t.stride(3)

    return all(map(uniform_pixels, maps)) and (all(t.stride(3) == 1 for t in maps)
                                               or all(t.stride(1) == 1 for t in maps))
