"""What a temporal module costs: GSF and TSM next to TSN on the same backbone and input.

``python -m lightning_gsf.benchmark`` (or ``gsf benchmark``) builds one ``VideoClassifier``
per (backbone, temporal module) and reports, per variant,

- parameters and GFLOPs per clip (``torch.utils.flop_counter.FlopCounterMode``, which counts
  a multiply-add as 2 FLOPs; papers' "FLOPs" are usually multiply-adds, i.e. half of it),
- activation memory of a training step: the bytes of the tensors autograd saves for
  backward, counted once per storage (``saved_tensors_hooks``), parameters excluded; on CUDA
  also the peak allocated memory of the step,
- training-step (forward, loss, backward, SGD step) and inference clips per second,

and each as a ratio to TSN (``temporal_module="none"``, always measured) with the same
backbone. Timings are taken round-robin over the variants, ``--repeats`` rounds, and
summarised by medians (time ratios: the median of the per-round ratios), so that a busy,
shared machine slows all variants alike instead of whichever ran last. Beside each time ratio,
``*_time_iqr`` is the interquartile range of the per-round ratios (0 for TSN itself): how far
apart the middle half of the rounds lie, to read a single run's ratio against.

The variant ``gsf_reference`` is GSF with its literal, spec-order implementation
(``GSF.forward_reference``), to show what the fast path saves; ``gsf_compilable`` runs the
formulation that GSF uses under ``torch.compile`` where the C++ custom ops do not apply
(``GSF.forward_compilable``, e.g. on CUDA) in eager mode;
``gsf_torch``, ``gsf_cpu`` and ``gsf_triton`` pick the PyTorch-ops, the C++ and the Triton
fast path, whatever the device (``gsf`` itself takes Triton on CUDA and the C++ kernels on the
CPU, where they build).

The variant ``none_control`` is TSN again, built and timed like the others (list it last). Its
time ratio to TSN is what the run reads for two identical models: on a shared CPU it is not
1.000, and a ratio closer to the target than that is not resolved by the run.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import logging
import platform
import statistics
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from lightning_gsf import host_memory
from lightning_gsf.gsf import GSF
from lightning_gsf.model import VideoClassifier

logger = logging.getLogger(__name__)

BASELINE = "none"
REFERENCE_GSF = "gsf_reference"
COMPILABLE_GSF = "gsf_compilable"
# GSF variants that run one of GSF's formulations rather than the device's default (``gsf``):
# variant -> GSF method
GSF_FORMULATIONS = {
    REFERENCE_GSF: "forward_reference",
    COMPILABLE_GSF: "forward_compilable",
    "gsf_torch": "forward_torch",
    "gsf_cpu": "forward_cpu",
    "gsf_triton": "forward_triton",
}
# A second TSN, built and timed like the others: its ratio to TSN is what the run reads for two
# identical models, the floor under every other ratio of that run.
CONTROL = "none_control"
VARIANTS = ("none", "tsm", "gsf", *GSF_FORMULATIONS, CONTROL)
NUM_CLASSES = 174  # Something-Something v1, the paper's main benchmark
# "process" (CPU time of this process) is steadier than wall time on a shared CPU machine
# when the benchmark runs single-threaded: time spent waiting for a core is not counted.
TIMERS: dict[str, Callable[[], float]] = {"wall": time.perf_counter, "process": time.process_time}
# torch.compile's modes: "reduce-overhead" and "max-autotune" replay the compiled graphs as CUDA
# graphs (on a GPU: no host work per kernel; uses_cuda_graphs), the max-autotune ones tune
# inductor's kernels first.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# CUDA graphs are recorded in a compiled function's second call and replayed from the third.
CUDA_GRAPH_WARMUP = 2


def uses_cuda_graphs(compile_mode: str) -> bool:
    """Whether torch.compile's ``compile_mode`` replays CUDA graphs (inductor's own settings)."""
    return bool(torch._inductor.list_mode_options(compile_mode).get("triton.cudagraphs", False))


COLUMNS = (
    "backbone", "temporal_module", "num_segments", "input_size", "batch_size", "dtype",
    "channels_last", "compile", "compile_mode", "device", "device_name", "threads", "timer", "malloc", "gsf_ratio",
    "repeats", "warmup", "seed",
    "params_m", "gflops_per_clip", "activation_mib",
    "cuda_peak_mib", "train_clips_s", "infer_clips_s", "params_vs_tsn", "gflops_vs_tsn",
    "activation_vs_tsn", "cuda_peak_vs_tsn", "train_time_vs_tsn", "train_time_iqr", "infer_time_vs_tsn",
    "infer_time_iqr",
)


@dataclass(frozen=True)
class BenchmarkConfig:
    backbones: tuple[str, ...] = ("resnet50",)
    temporal_modules: tuple[str, ...] = ("none", "tsm", "gsf")
    num_segments: int = 8
    input_size: int = 160
    batch_size: int = 2
    dtype: str = "float32"
    channels_last: bool = False
    compile: bool = False
    compile_mode: str = "default"  # torch.compile's mode (COMPILE_MODES)
    device: str = "cpu"
    repeats: int = 5
    warmup: int = 1
    gsf_ratio: float | None = None
    threads: int | None = None
    timer: str = "wall"
    seed: int = 0
    malloc: str = "retain"  # see lightning_gsf.host_memory

    def __post_init__(self) -> None:
        try:
            device = torch.device(self.device)
        except (RuntimeError, ValueError) as error:  # (torch's message names what it expected)
            raise ValueError(f"device {self.device!r} is no device: {error}") from None
        unknown = set(self.temporal_modules) - set(VARIANTS)
        if unknown:
            raise ValueError(f"unknown temporal modules {sorted(unknown)}; expected some of {VARIANTS}")
        repeated = sorted({m for m in self.temporal_modules if self.temporal_modules.count(m) > 1})
        if repeated:  # (rows are keyed by name: one model would be measured and shown twice)
            raise ValueError(f"temporal modules {repeated} listed twice; for a second TSN, use none_control")
        if self.dtype not in ("float32", "bf16"):
            raise ValueError(f"dtype must be float32 or bf16, got {self.dtype!r}")
        if self.timer not in TIMERS:
            raise ValueError(f"timer must be one of {tuple(TIMERS)}, got {self.timer!r}")
        if self.threads is not None and self.threads < 1:  # (else torch.set_num_threads' traceback, in the run)
            raise ValueError(f"threads must be >= 1, got {self.threads}")
        if self.timer == "process" and torch.device(self.device).type != "cpu":
            raise ValueError("the process (CPU time) timer only measures CPU devices; use --timer wall")
        if self.timer == "process" and (self.threads or torch.get_num_threads()) > 1:
            raise ValueError("the process timer adds up the CPU time of every thread, which is not time per clip "
                             "with several threads: use it with --threads 1, or --timer wall")
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {COMPILE_MODES}, got {self.compile_mode!r}")
        if self.compile_mode != "default" and not self.compile:
            raise ValueError(f"compile_mode {self.compile_mode!r} needs compile=True (--compile)")
        if uses_cuda_graphs(self.compile_mode):
            if torch.device(self.device).type != "cuda":  # (inductor would skip the graphs and say so in a log)
                raise ValueError(f"compile_mode {self.compile_mode!r} replays CUDA graphs: it needs --device cuda")
            if self.warmup < CUDA_GRAPH_WARMUP:
                raise ValueError(f"compile_mode {self.compile_mode!r} needs warmup >= {CUDA_GRAPH_WARMUP}: CUDA graphs "
                                 "are recorded in the second call, which would otherwise be timed")
        if self.malloc not in host_memory.MODES:
            raise ValueError(f"malloc must be one of {host_memory.MODES}, got {self.malloc!r}")
        if min(self.num_segments, self.input_size, self.batch_size, self.repeats) < 1:
            raise ValueError("num_segments, input_size, batch_size and repeats must be >= 1")
        if device.type == "cuda" and not torch.cuda.is_available():  # (else a traceback from the first copy)
            raise ValueError(f"device {self.device!r}: no CUDA device is available here")

    @property
    def cuda_graphs(self) -> bool:
        """Whether the compiled networks are replayed as CUDA graphs."""
        return self.compile and uses_cuda_graphs(self.compile_mode)

    @property
    def variants(self) -> tuple[str, ...]:
        """The requested temporal modules, TSN first (it is every ratio's denominator)."""
        return (BASELINE, *(m for m in self.temporal_modules if m != BASELINE))


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``), else what :mod:`platform` knows: runs
    on different machines give different ratios, so every row names its machine."""
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []  # (no /proc: not Linux)
    for line in lines:
        key, _, value = line.partition(":")
        if key.strip() == "model name" and value.strip():
            return value.strip()
    return platform.processor() or platform.machine() or "unknown CPU"


def device_name(device: str) -> str:
    """The CUDA card's name, or the CPU's model name."""
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_model()


def build_model(backbone: str, variant: str, config: BenchmarkConfig) -> nn.Module:
    """A randomly initialised ``VideoClassifier`` for one variant, on the benchmark's device."""
    if variant in GSF_FORMULATIONS:
        temporal_module = "gsf"
    elif variant == CONTROL:
        temporal_module = BASELINE
    else:
        temporal_module = variant
    model = VideoClassifier(
        backbone=backbone,
        temporal_module=temporal_module,
        num_segments=config.num_segments,
        num_classes={"class": NUM_CLASSES},
        gsf_ratio=config.gsf_ratio,
        pretrained=None,
    )
    if variant in GSF_FORMULATIONS:
        for module in model.modules():
            if isinstance(module, GSF):  # instance override: this model only
                module.forward = getattr(module, GSF_FORMULATIONS[variant])
    model = model.to(config.device)
    if config.channels_last:
        to_channels_last(model)
    return model


def to_channels_last(model: nn.Module) -> None:
    """Channels-last 2D conv weights (``Module.to(memory_format=...)`` refuses GSF's 5D
    ``conv3D`` weight); convolutions then produce channels-last feature maps."""
    with torch.no_grad():
        for param in model.parameters():
            if param.dim() == 4:
                param.data = param.data.contiguous(memory_format=torch.channels_last)


def make_batch(config: BenchmarkConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """A float (already normalised) clip batch and labels, seeded."""
    generator = torch.Generator().manual_seed(config.seed)
    shape = (config.batch_size, config.num_segments, 3, config.input_size, config.input_size)
    clips = torch.randn(shape, generator=generator)
    labels = torch.randint(0, NUM_CLASSES, (config.batch_size,), generator=generator)
    return clips.to(config.device), labels.to(config.device)


def autocast_context(config: BenchmarkConfig) -> contextlib.AbstractContextManager:
    if config.dtype == "bf16":
        return torch.autocast(torch.device(config.device).type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_flops(model: nn.Module, clips: torch.Tensor, config: BenchmarkConfig) -> int:
    """FLOPs of one inference forward over ``clips`` (a multiply-add counts 2)."""
    model.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), autocast_context(config), gsf_as_reference(model), counter:
        model(clips)
    return counter.get_total_flops()


def gflops_per_clip(model: nn.Module, clips: torch.Tensor, config: BenchmarkConfig) -> float:
    """GFLOPs of one clip's inference forward (all its frames), from a batch of ``clips``."""
    return count_flops(model, clips, config) / 1e9 / clips.shape[0]


@contextlib.contextmanager
def gsf_as_reference(model: nn.Module) -> Iterator[None]:
    """Run every GSF of ``model`` as :meth:`GSF.forward_reference`, the spec's computation,
    whatever path it takes (the same numbers): ``FlopCounterMode`` counts ATen convolutions and
    matmuls, and cannot see Triton kernels or custom C++ ops; and GSF's PyTorch-ops paths
    compute the same arithmetic with other operations (the pooled means as a matmul, which
    the reference takes as a mean, uncounted like TSN's own pooling). So every GSF variant
    counts the gate and fusion convolutions, once."""
    overridden = {}
    for module in model.modules():
        if isinstance(module, GSF):
            overridden[module] = module.__dict__.get("forward")
            module.forward = module.forward_reference
    try:
        yield
    finally:
        for module, forward in overridden.items():
            if forward is None:
                del module.forward
            else:
                module.forward = forward


def loss_of(model: nn.Module, clips: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model(clips)["class"].float(), labels)


def saved_activation_bytes(model: nn.Module, clips: torch.Tensor, labels: torch.Tensor,
                           config: BenchmarkConfig) -> int:
    """Bytes of the tensors autograd keeps for backward in one training step, each storage
    counted once (views and tensors saved by several ops share it); parameters and buffers
    (which exist with or without training) are left out, and so are autocast's copies of the
    weights in bf16 (one per weight, whatever the temporal module: counted, they would add
    the same constant to every variant and pull the ratios towards 1)."""
    model.train()
    state_storages = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
    parameters = {id(p) for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in state_storages and not _is_cast_of_a_parameter(tensor, parameters):
            saved[storage.data_ptr()] = storage.nbytes()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor), autocast_context(config):
        loss = loss_of(model, clips, labels)
    loss.backward()
    model.zero_grad(set_to_none=True)
    return sum(saved.values())


def _is_cast_of_a_parameter(tensor: torch.Tensor, parameters: set[int]) -> bool:
    """Whether ``tensor`` is a dtype copy of one of ``parameters`` (autocast casts a weight with
    a differentiable ``to``, whose backward leads straight to the parameter)."""
    grad_fn = tensor.grad_fn
    if grad_fn is None or type(grad_fn).__name__ != "ToCopyBackward0":
        return False
    source = grad_fn.next_functions[0][0] if grad_fn.next_functions else None
    return id(getattr(source, "variable", None)) in parameters


def cuda_peak_bytes(step: Callable[[], None], device: str) -> int | None:
    """Peak CUDA memory allocated during ``step`` beyond what was allocated before it."""
    if torch.device(device).type != "cuda":
        return None
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


@dataclass
class Steps:
    """The two timed closures of one variant."""

    train: Callable[[], None]
    infer: Callable[[], None]


def make_steps(model: nn.Module, clips: torch.Tensor, labels: torch.Tensor, config: BenchmarkConfig) -> Steps:
    # fullgraph: a graph break fails the run instead of silently timing a split graph
    runner = torch.compile(model, fullgraph=True, mode=config.compile_mode) if config.compile else model
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    # (CUDA graphs reuse their outputs' memory: each step tells them that the previous step's
    # outputs are no longer read)
    cuda_graphs = config.cuda_graphs

    def train() -> None:
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        model.train()
        optimizer.zero_grad(set_to_none=True)
        with autocast_context(config):
            loss = loss_of(runner, clips, labels)
        loss.backward()
        optimizer.step()

    def infer() -> None:
        if cuda_graphs:
            torch.compiler.cudagraph_mark_step_begin()
        model.eval()
        with torch.inference_mode(), autocast_context(config):
            runner(clips)

    return Steps(train, infer)


def _synchronize(device: str) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def time_round_robin(steps: dict[str, Callable[[], None]], repeats: int, warmup: int,
                     device: str, timer: Callable[[], float] = time.perf_counter) -> dict[str, list[float]]:
    """Seconds per call of each step, ``repeats`` rounds of one call per step in turn."""
    for _ in range(warmup):
        for step in steps.values():
            step()
    times: dict[str, list[float]] = {key: [] for key in steps}
    for _ in range(repeats):
        for key, step in steps.items():
            _synchronize(device)
            start = timer()
            step()
            _synchronize(device)
            times[key].append(timer() - start)
    return times


def _median_ratio(times: list[float], baseline: list[float]) -> float:
    return statistics.median(t / b for t, b in zip(times, baseline))


def _ratio_iqr(times: list[float], baseline: list[float]) -> float | None:
    """Interquartile range of the per-round ratios; None with fewer than two rounds."""
    if len(times) < 2:
        return None
    # (inclusive: the quartiles interpolate between the rounds, as NumPy's; the "exclusive"
    # default extrapolates past them with few rounds: 1.5x the full range with two)
    first, _, third = statistics.quantiles([t / b for t, b in zip(times, baseline)], n=4, method="inclusive")
    return third - first


def _ratio(value: float | None, baseline: float | None) -> float | None:
    return None if value is None or not baseline else value / baseline


def benchmark_backbone(backbone: str, config: BenchmarkConfig, malloc: str) -> list[dict[str, object]]:
    """All variants of one backbone: one row each; ``malloc``: the allocator mode in effect."""
    clips, labels = make_batch(config)
    rows: dict[str, dict[str, object]] = {}
    steps: dict[str, Steps] = {}
    machine = device_name(config.device)
    for variant in config.variants:
        torch.manual_seed(config.seed)  # same initial weights for the layers variants share
        model = build_model(backbone, variant, config)
        logger.info("measuring %s + %s", backbone, variant)
        peak = None
        steps[variant] = make_steps(model, clips, labels, config)
        # (not with CUDA graphs: these two calls would be the graphs' warm-up and recording)
        if torch.device(config.device).type == "cuda" and not config.cuda_graphs:
            steps[variant].train()  # allocate gradients and optimiser state first
            peak = cuda_peak_bytes(steps[variant].train, config.device)
        rows[variant] = {
            "backbone": backbone, "temporal_module": variant,
            "num_segments": config.num_segments, "input_size": config.input_size,
            "batch_size": config.batch_size, "dtype": config.dtype,
            "channels_last": config.channels_last, "compile": config.compile,
            "compile_mode": config.compile_mode if config.compile else None, "device": config.device,
            "device_name": machine,
            "threads": torch.get_num_threads(), "timer": config.timer, "malloc": malloc,
            "gsf_ratio": config.gsf_ratio, "repeats": config.repeats, "warmup": config.warmup, "seed": config.seed,
            "params_m": count_parameters(model) / 1e6,
            "gflops_per_clip": gflops_per_clip(model, clips, config),
            # (of the eager model: under the compiler the saved tensors are its choice, unseen here)
            "activation_mib": None if config.compile else saved_activation_bytes(model, clips, labels, config) / 2**20,
            "cuda_peak_mib": None if peak is None else peak / 2**20,
        }
    timer = TIMERS[config.timer]
    train_times = time_round_robin({v: s.train for v, s in steps.items()}, config.repeats,
                                   config.warmup, config.device, timer)
    infer_times = time_round_robin({v: s.infer for v, s in steps.items()}, config.repeats,
                                   config.warmup, config.device, timer)
    base = rows[BASELINE]
    for variant, row in rows.items():
        row["train_clips_s"] = config.batch_size / statistics.median(train_times[variant])
        row["infer_clips_s"] = config.batch_size / statistics.median(infer_times[variant])
        for column in ("params", "gflops", "activation", "cuda_peak"):
            unit = {"params": "params_m", "gflops": "gflops_per_clip"}.get(column, f"{column}_mib")
            row[f"{column}_vs_tsn"] = _ratio(row[unit], base[unit])  # type: ignore[arg-type]
        row["train_time_vs_tsn"] = _median_ratio(train_times[variant], train_times[BASELINE])
        row["infer_time_vs_tsn"] = _median_ratio(infer_times[variant], infer_times[BASELINE])
        row["train_time_iqr"] = _ratio_iqr(train_times[variant], train_times[BASELINE])
        row["infer_time_iqr"] = _ratio_iqr(infer_times[variant], infer_times[BASELINE])
    return [rows[v] for v in config.variants]


def run_benchmark(config: BenchmarkConfig) -> list[dict[str, object]]:
    """Every backbone's rows. ``config.malloc == "retain"`` first keeps freed CPU memory in the
    process (:mod:`lightning_gsf.host_memory`), for the rest of the process; the rows say
    which mode was in effect. ``config.threads``, if given, sets torch's thread count, also for
    the rest of the process."""
    malloc = "retain" if host_memory.configure(config.malloc) else "default"
    if config.threads is not None:  # (for the process timer's one thread, set for callers of this function too)
        torch.set_num_threads(config.threads)
    with _room_for_every_compiled_model(config), _cuda_graphs_or_error(config):
        return [row for backbone in config.backbones for row in benchmark_backbone(backbone, config, malloc)]


def _cuda_graphs_or_error(config: BenchmarkConfig) -> contextlib.AbstractContextManager:
    """In a mode with CUDA graphs, a graph that inductor would skip (an op it cannot capture,
    say; it only logs why) fails the run instead of timing the network without graphs, as
    ``fullgraph=True`` does for graph breaks."""
    inductor = torch._inductor.config
    if not config.cuda_graphs or not hasattr(inductor.triton, "cudagraph_or_error"):
        return contextlib.nullcontext()
    return inductor.patch({"triton.cudagraph_or_error": True})


def _room_for_every_compiled_model(config: BenchmarkConfig) -> contextlib.AbstractContextManager:
    """With ``--compile``, a recompile limit that every model fits in: the models share
    ``VideoClassifier.forward``'s code, and each adds its own compiled versions (training and
    inference), where torch's default limit of 8 versions per code object (a hard failure
    under ``fullgraph=True``) stops at four models."""
    if not config.compile:
        return contextlib.nullcontext()
    dynamo_config = torch._dynamo.config
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    models = len(config.backbones) * len(config.variants)
    return dynamo_config.patch(**{name: max(getattr(dynamo_config, name), 4 * models + 8)})


def _format(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
    return str(value)


def format_table(rows: Sequence[dict[str, object]]) -> str:
    """The rows as an aligned text table (the configuration columns shown once above it)."""
    shown = [c for c in COLUMNS if c not in ("num_segments", "input_size", "batch_size", "dtype",
                                              "channels_last", "compile", "compile_mode", "device", "device_name",
                                              "threads", "timer", "gsf_ratio", "repeats", "warmup", "seed")]
    header = ""
    if rows:
        first = rows[0]
        header = (f"T={first['num_segments']} size={first['input_size']} batch={first['batch_size']} "
                  f"threads={first['threads']} timer={first['timer']} "
                  f"dtype={first['dtype']} channels_last={first['channels_last']} "
                  f"compile={first['compile']} compile_mode={_format(first['compile_mode'])} "
                  f"device={first['device']} ({first['device_name']}) "
                  f"gsf_ratio={_format(first['gsf_ratio'])} repeats={first['repeats']} warmup={first['warmup']} "
                  f"seed={first['seed']}\n")
    cells = [list(shown)] + [[_format(row[c]) for c in shown] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(shown))]
    lines = ["  ".join(cell.rjust(width) for cell, width in zip(line, widths)) for line in cells]
    return header + "\n".join(lines)


def write_csv(rows: Sequence[dict[str, object]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row[c] is None else row[c] for c in COLUMNS})


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="gsf benchmark",
        description="Parameters, FLOPs, activation memory and speed of GSF / TSM next to TSN.",
    )
    defaults = BenchmarkConfig()
    parser.add_argument("--backbones", nargs="+", default=list(defaults.backbones))
    parser.add_argument("--temporal-modules", nargs="+", default=list(defaults.temporal_modules),
                        choices=VARIANTS, help="TSN ('none') is always measured, as the baseline; "
                        f"{CONTROL}: TSN again, what the run reads for identical models")
    parser.add_argument("--num-segments", type=int, default=defaults.num_segments)
    parser.add_argument("--input-size", type=int, default=defaults.input_size)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--dtype", choices=("float32", "bf16"), default=defaults.dtype,
                        help="bf16: autocast to bfloat16 (weights stay float32)")
    parser.add_argument("--channels-last", action="store_true")
    parser.add_argument("--compile", action="store_true", help="torch.compile each model")
    parser.add_argument("--compile-mode", choices=COMPILE_MODES, default=defaults.compile_mode,
                        help="torch.compile's mode, with --compile (reduce-overhead and max-autotune replay CUDA "
                             f"graphs: --device cuda and --warmup >= {CUDA_GRAPH_WARMUP})")
    parser.add_argument("--device", default=defaults.device)
    parser.add_argument("--repeats", type=int, default=defaults.repeats)
    parser.add_argument("--warmup", type=int, default=defaults.warmup)
    parser.add_argument("--gsf-ratio", type=float, default=None,
                        help="fraction of channels GSF processes (default: the paper's, per backbone)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch.set_num_threads for the run (default: PyTorch's choice)")
    parser.add_argument("--timer", choices=tuple(TIMERS), default=defaults.timer,
                        help="wall clock, or CPU time of the process (steadier on a shared CPU "
                             "machine with --threads 1)")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--malloc", choices=host_memory.MODES, default=None,
                        help="retain: glibc keeps freed memory for reuse (no page faults each step); "
                             "default: glibc's own settings (default: $LIGHTNING_GSF_MALLOC, else retain)")
    parser.add_argument("--csv", type=Path, default=None, help="also write the rows to this CSV file")
    return parser


def main(argv: Sequence[str] | None = None) -> list[dict[str, object]]:
    """Run the benchmark from command-line arguments, print the table, return the rows."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    config = BenchmarkConfig(
        backbones=tuple(args.backbones), temporal_modules=tuple(args.temporal_modules),
        num_segments=args.num_segments, input_size=args.input_size, batch_size=args.batch_size,
        dtype=args.dtype, channels_last=args.channels_last, compile=args.compile, compile_mode=args.compile_mode,
        device=args.device, repeats=args.repeats, warmup=args.warmup, gsf_ratio=args.gsf_ratio,
        threads=args.threads, timer=args.timer, seed=args.seed,
        malloc=args.malloc or host_memory.mode_from_environment(),
    )
    if torch.device(config.device).type == "cuda":
        torch.backends.cudnn.benchmark = True  # as in training; the warm-up rounds pick the kernels
    rows = run_benchmark(config)
    print(format_table(rows))  # the tool's output, not a log message
    if args.csv is not None:
        write_csv(rows, args.csv)
        logger.info("wrote %s", args.csv)
    return rows


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # (a setting it cannot use: one line, as gsf benchmark prints it)
        raise SystemExit(f"{build_parser().prog}: error: {error}") from None
