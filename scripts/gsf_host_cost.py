"""What one GSF call costs the host (Python, PyTorch's dispatch, kernel launches) on a GPU.

On a tiny feature map the GPU's work is negligible, so ``--calls`` calls issued back to back
(one synchronisation at the end) take as long as the host needs to issue them. Reported in
microseconds per call, for each of GSF's CUDA paths, in inference and as a training step
(forward and backward), next to single launches of one Triton kernel and of small PyTorch
operations; then a ``cProfile`` of the default path's training step, to show which Python
functions the time goes to.

    python scripts/gsf_host_cost.py --calls 200
    python scripts/gsf_host_cost.py --device cpu --stub-kernels --calls 500   # the glue alone, no GPU

``--stub-kernels`` replaces every Triton kernel of GSF by a stand-in that launches nothing,
so the Triton path's rows time its host glue alone (Python, PyTorch's dispatch and small
operations; their numbers are meaningless), on any device.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import time
from collections.abc import Callable

import torch

from lightning_gsf import gsf_kernels
from lightning_gsf.gsf import GSF


def synchronize() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def host_us(call: Callable[[], object], calls: int, warmup: int = 5) -> float:
    for _ in range(warmup):
        call()
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        call()
    synchronize()
    return (time.perf_counter() - start) / calls * 1e6


class _NoLaunch:
    """A Triton kernel's stand-in: ``kernel[grid](...)`` launches nothing."""

    def __getitem__(self, grid: object) -> Callable[..., None]:
        return lambda *args, **kwargs: None


def stub_kernels() -> int:
    """Replace GSF's Triton kernels by :class:`_NoLaunch`; the number replaced."""
    names = [name for name in dir(gsf_kernels) if name.startswith("_") and name.endswith("_kernel")
             and hasattr(getattr(gsf_kernels, name), "__getitem__")]
    for name in names:
        setattr(gsf_kernels, name, _NoLaunch())
    return len(names)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=5, help="calls before the timed ones")
    parser.add_argument("--profile-rows", type=int, default=30)
    parser.add_argument("--device", default="cuda",
                        help="cpu: a dry run under TRITON_INTERPRET=1 (not needed with --stub-kernels)")
    parser.add_argument("--stub-kernels", action="store_true",
                        help="GSF's Triton kernels launch nothing: the Triton path's host glue alone")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.stub_kernels:
        print(f"{stub_kernels()} Triton kernels stubbed out: the Triton rows time the host glue alone")
    torch.manual_seed(0)  # (the same map and weights every run)
    module = GSF(64, num_segments=8, ratio=0.25).to(device)
    x = torch.randn(16, 64, 8, 8, device=device)
    grad = torch.randn_like(x)

    def training_step(forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            inp = x.clone().requires_grad_(True)
            forward(inp).backward(grad)
        return step

    def inference(forward: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[], None]:
        def step() -> None:
            with torch.no_grad():
                forward(x)
        return step

    def time_us(call: Callable[[], object]) -> float:
        return host_us(call, args.calls, args.warmup)

    device_name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(f"host microseconds per call ({args.calls} calls back to back; {device_name}, "
          f"torch {torch.__version__})")
    module.train()
    print(f"{'training step: x.clone() + forward + backward, nothing else':>62}: "
          f"{time_us(training_step(lambda inp: inp * 1.0)):8.1f}")
    for name in ("forward_triton", "forward_torch", "forward_reference"):
        print(f"{'training step, ' + name:>62}: {time_us(training_step(getattr(module, name))):8.1f}")
    module.eval()
    for name in ("forward_triton", "forward_torch", "forward_reference"):
        print(f"{'inference, ' + name:>62}: {time_us(inference(getattr(module, name))):8.1f}")
    v = x[:, :16].contiguous()
    gate = torch.rand(16, 2, 64, device=device)
    weights = torch.rand(16, 2, 8, device=device)
    out = torch.empty_like(v)
    small = torch.randn(16, 3, 16, device=device)
    print(f"{'one Triton launch (gsf_kernels.blend, 20 arguments)':>62}: "
          f"{time_us(lambda: gsf_kernels.blend(v, gate, weights, out, 8)):8.1f}")
    products = torch.empty(1, 16, 2, 27, 64, device=device)
    print(f"{'one Triton launch (gsf_kernels.gate, 6 arguments + allocation)':>62}: "
          f"{time_us(lambda: gsf_kernels.gate(products, module.conv3D.bias, 8, 8, 8)):8.1f}")
    print(f"{'torch.add of two small tensors':>62}: {time_us(lambda: small + small):8.1f}")
    print(f"{'torch.bmm, small':>62}: {time_us(lambda: torch.bmm(small, small.transpose(1, 2))):8.1f}")
    print(f"{'torch.einsum, small':>62}: "
          f"{time_us(lambda: torch.einsum('nij,nkj->nik', small, small)):8.1f}")
    module.train()
    step = training_step(module.forward_triton)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(args.calls):
        step()
    synchronize()
    profiler.disable()
    print(f"\ncProfile of {args.calls} training steps of forward_triton (tottime: the function's own time)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(args.profile_rows)


if __name__ == "__main__":
    main()
