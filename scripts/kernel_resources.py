"""Registers, spills and shared memory of the Triton kernels, compiled offline (no GPU needed).

Triton compiles each kernel of :mod:`lightning_gsf.gsf_kernels` (GSF) and
:mod:`lightning_gsf.shift_kernels` (TSM) for an NVIDIA compute
capability (``--sm``, default 90: H100 / H200) with the ptxas it bundles, and cuobjdump
(bundled too) reads the resources from the binary. From them, the occupancy a kernel can
reach: an SM holds 65536 registers, so at ``R`` registers per thread and ``W`` warps a
program, at most ``65536 // (R * 32 * W)`` programs (and 64 warps) run on it at once, and a
memory-bound kernel wants many. The kernels are built as a launch at ResNet-50's first GSF
site would build them (float32 NCHW 56 x 56 maps, 64 frames: :data:`STAGE_1`), with the
module's tile sizes; the last column counts the global loads in the PTX, and in brackets
those that load 2 or 4 values at once (vector loads, which need runs the compiler can prove
aligned and uniformly masked).

    python scripts/kernel_resources.py [--sm 90] [--warps 4 8] [--kernels blend gate_backward]
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import tempfile
from pathlib import Path

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from lightning_gsf import gsf_kernels, shift_kernels

REGISTERS_PER_SM, MAX_WARPS_PER_SM = 65536, 64


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


# The integer arguments of a launch at ResNet-50's first GSF site (8 clips x 8 frames, 256
# channels at 56 x 56, NCHW; 64 processed), which decide Triton's specialisation of each
# (1: a constant; a multiple of 16: known divisible, so that loads of 16-aligned runs become
# vector loads).
STAGE_1 = dict(num_segments=8, channels=64, half=32, fold=32, height=56, width=56, pixels=3136, frames=64,
               rows=320, split_pixels=768, split_channels=32, num_pixel_blocks=25, splits=1,
               split_stride=64 * 2 * 27 * 3136, s_n=256 * 3136, s_c=3136, s_h=56, s_w=1)


TSM_STAGE_1 = dict(channels=256, fold=32)  # (TSM's shift at a 256-channel block input there)


def _launch_value(kernel: str, name: str) -> int | float:
    if name in ("eps", "momentum", "variance_momentum"):
        return 0.1
    if kernel in ("shift", "unshift") and name in TSM_STAGE_1:
        return TSM_STAGE_1[name]
    if len(name) == 4 and name[0] == "s" and name[2] == "_":  # sv_n, sx_c, ...: another map's strides
        return STAGE_1["s" + name[2:]]
    return STAGE_1[name]


def resources(name: str, sm: int, warps: int) -> dict[str, int]:
    """``{"REG": .., "STACK": .., "SHARED": .., "LOADS": .., "VECTOR_LOADS": ..}`` of kernel
    ``name`` built for ``sm``, specialised as a launch at :data:`STAGE_1` would be (the
    loads: global loads in its PTX and asynchronous copies into shared memory, and how many
    of them move 2 or 4 values at once)."""
    fn = next(getattr(module, f"_{name}_kernel") for module in MODULES if hasattr(module, f"_{name}_kernel"))
    values = constants(name)
    signature, constexprs, attributes = {}, {}, {}
    for index, param in enumerate(fn.params):
        if param.is_constexpr:
            signature[param.name], constexprs[param.name] = "constexpr", values[param.name]
            continue
        value = 0 if param.name.endswith("_ptr") else _launch_value(name, param.name)
        if param.name.endswith("_ptr"):
            signature[param.name] = "*fp32"
        elif isinstance(value, float):
            signature[param.name] = "fp32"
        elif value == 1:
            signature[param.name], constexprs[param.name] = "constexpr", 1
            continue
        else:
            signature[param.name] = "i32"
        if param.name.endswith("_ptr") or (isinstance(value, int) and value % 16 == 0):
            attributes[(index,)] = [["tt.divisibility", 16]]
    compiled = triton.compile(ASTSource(fn, signature, constexprs, attributes), target=GPUTarget("cuda", sm, 32),
                              options={"num_warps": warps})
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        dump = subprocess.run([_cuobjdump(), "--dump-resource-usage", cubin.name], capture_output=True, text=True,
                              check=True).stdout
    line = next(line for line in dump.splitlines() if "REG:" in line)
    fields = (field.split(":") for field in line.split("Resource usage:")[-1].split())
    used = {key: int(value) for key, value in fields if value.isdigit()}
    used["SHARED"] = compiled.metadata.shared  # (Triton's dynamic shared memory; cuobjdump sees the static part)
    ptx = compiled.asm["ptx"]
    loads = re.findall(r"ld\.global(?:\.\w+)*", ptx)
    copies = re.findall(r"cp\.async\.\w+\.shared\.global \[[^]]*\], \[[^]]*\], (\w+)", ptx)  # (size in bytes)
    used["LOADS"] = len(loads) + len(copies)
    used["VECTOR_LOADS"] = (sum(1 for load in loads if ".v2" in load or ".v4" in load)
                            + sum(1 for size in copies if int(size, 0) > 4))
    return used


def _cuobjdump() -> str:
    """Triton's cuobjdump (``TRITON_CUOBJDUMP_PATH`` or the one its wheel bundles)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None and hasattr(knobs, "nvidia"):
        return knobs.nvidia.cuobjdump.path
    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sm", type=int, default=90, help="compute capability, e.g. 80 (A100), 90 (H100 / H200)")
    parser.add_argument("--warps", type=int, nargs="+", default=[gsf_kernels.NUM_WARPS])
    parser.add_argument("--kernels", nargs="+", default=kernel_names(), choices=kernel_names())
    args = parser.parse_args(argv)
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        parser.error("TRITON_INTERPRET is set: the kernels were imported for the interpreter, not for compiling")
    print(f"Triton kernels built for sm_{args.sm} (Triton {triton.__version__})")
    print(f"{'kernel':>24} {'warps':>5} {'registers':>9} {'stack B':>7} {'shared B':>8} {'warps / SM':>10} "
          f"{'loads (vector)':>14}")
    for name in args.kernels:
        for warps in args.warps:
            used = resources(name, args.sm, warps)
            programs = REGISTERS_PER_SM // (max(used["REG"], 1) * 32 * warps)
            occupancy = min(programs * warps, MAX_WARPS_PER_SM - MAX_WARPS_PER_SM % warps)
            loads = f"{used['LOADS']} ({used['VECTOR_LOADS']})"
            print(f"{name:>24} {warps:>5} {used['REG']:>9} {used['STACK']:>7} {used['SHARED']:>8} {occupancy:>10} "
                  f"{loads:>14}", flush=True)


if __name__ == "__main__":
    main()
