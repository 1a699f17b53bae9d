"""Registers, spills and shared memory of the Triton kernels, compiled offline (no GPU needed).

Triton compiles each kernel of :mod:`lightning_gsf.gsf_kernels` (GSF) and
:mod:`lightning_gsf.shift_kernels` (TSM) for an NVIDIA compute
capability (``--sm``, default 90: H100 / H200) with the ptxas it bundles, and cuobjdump
(bundled too) reads the resources from the binary. From them, the occupancy a kernel can
reach: an SM holds 65536 registers, so at ``R`` registers per thread and ``W`` warps a
program, at most ``65536 // (R * 32 * W)`` programs (and 64 warps) run on it at once, and a
memory-bound kernel wants many. The kernels are built as for float32 NCHW maps (pixels in
one run, unit pixel stride) with the module's tile sizes.

    python scripts/kernel_resources.py [--sm 90] [--warps 4 8] [--kernels blend gate_backward]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lightning_gsf import gsf_kernels, shift_kernels

REGISTERS_PER_SM, MAX_WARPS_PER_SM = 65536, 64
UNIT_STRIDES = ("s_w", "sv_w", "sg_w", "sx_w", "so_w", "sc_w")  # (specialised to 1, as Triton does for NCHW)


MODULES = (gsf_kernels, shift_kernels)


def kernel_names() -> list[str]:
    return sorted(name[1:-len("_kernel")] for module in MODULES for name in dir(module)
                  if name.startswith("_") and name.endswith("_kernel"))


def constants(name: str) -> dict:
    """The compile-time arguments a launch of kernel ``name`` passes (module defaults)."""
    values = dict(DOT_PRECISION=gsf_kernels.DOT_PRECISION, FLAT=True, SAVE_COPY=True, UPDATE=True, BACKWARDS_FIRST=True,
                  BLOCK_C=gsf_kernels.BLOCK_CHANNELS, BLOCK_P=gsf_kernels.MAX_BLOCK_PIXELS)
    if name == "gate":
        values["BLOCK_P"] = 256
    elif name == "batch_norm_statistics":
        values["BLOCK_R"], values["BLOCK_C"] = gsf_kernels._STATISTICS_TILE
    elif name.startswith("fusion_weights"):
        values["BLOCK_T"], values["BLOCK_C"] = gsf_kernels._fusion_tiles(8, 256)
    return values


def resources(name: str, sm: int, warps: int) -> dict[str, int]:
    """``{"REG": .., "STACK": .., "SHARED": .., ...}`` of kernel ``name`` built for ``sm``."""
    fn = next(getattr(module, f"_{name}_kernel") for module in MODULES if hasattr(module, f"_{name}_kernel"))
    values = constants(name)
    signature, constexprs = {}, {}
    for param in fn.params:
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", values[param.name]
        elif param.name in UNIT_STRIDES:
            signature[param.name], constexprs[param.name] = "constexpr", 1
        else:
            signature[param.name] = "*fp32" if param.name.endswith("_ptr") else "i32"
    compiled = triton.compile(ASTSource(fn, signature, constexprs), target=GPUTarget("cuda", sm, 32),
                              options={"num_warps": warps})
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        dump = subprocess.run([str(cuobjdump), "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                              check=True).stdout
    line = next(line for line in dump.splitlines() if "REG:" in line)
    fields = (field.split(":") for field in line.split("Resource usage:")[-1].split())
    return {key: int(value) for key, value in fields if value.isdigit()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sm", type=int, default=90, help="compute capability, e.g. 80 (A100), 90 (H100 / H200)")
    parser.add_argument("--warps", type=int, nargs="+", default=[gsf_kernels.NUM_WARPS])
    parser.add_argument("--kernels", nargs="+", default=kernel_names(), choices=kernel_names())
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: the kernels were imported for the interpreter, not for compiling")
    print(f"Triton kernels built for sm_{args.sm} (Triton {triton.__version__})")
    print(f"{'kernel':>24} {'warps':>5} {'registers':>9} {'stack B':>7} {'shared B':>8} {'warps / SM':>10}")
    for name in args.kernels:
        for warps in args.warps:
            used = resources(name, args.sm, warps)
            programs = REGISTERS_PER_SM // (max(used["REG"], 1) * 32 * warps)
            occupancy = min(programs * warps, MAX_WARPS_PER_SM - MAX_WARPS_PER_SM % warps)
            print(f"{name:>24} {warps:>5} {used['REG']:>9} {used['STACK']:>7} {used['SHARED']:>8} {occupancy:>10}",
                  flush=True)


if __name__ == "__main__":
    main()
