"""The benchmark tool on a tiny configuration: columns, CSV, ratios (no timing assertions)."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from collections.abc import Callable

import pytest
import torch
from torch import nn

from lightning_gsf.benchmark import (
    COLUMNS,
    BenchmarkConfig,
    build_model,
    count_flops,
    gflops_per_clip,
    gsf_as_reference,
    main,
    make_batch,
    make_steps,
    saved_activation_bytes,
    time_round_robin,
)
from lightning_gsf import benchmark, host_memory
from lightning_gsf.gsf import GSF

TINY = ["--backbones", "resnet18", "--num-segments", "2", "--input-size", "32", "--batch-size", "1",
        "--repeats", "1", "--warmup", "0"]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    path = tmp_path_factory.mktemp("benchmark") / "result.csv"
    rows = main([*TINY, "--temporal-modules", "gsf", "tsm", "gsf_reference", "none_control", "--csv", str(path),
                 "--malloc", "retain", "--repeats", "3"])
    return rows, path


def test_rows_have_every_column_and_tsn_first(tiny_run, capsys):
    rows, _ = tiny_run
    assert [row["temporal_module"] for row in rows] == ["none", "gsf", "tsm", "gsf_reference", "none_control"]
    for row in rows:
        assert set(row) == set(COLUMNS)
        assert row["backbone"] == "resnet18" and row["num_segments"] == 2 and row["input_size"] == 32
        assert row["train_clips_s"] > 0 and row["infer_clips_s"] > 0
        assert row["activation_mib"] > 0 and row["gflops_per_clip"] > 0
        assert row["cuda_peak_mib"] is None  # CPU run
        assert row["compile"] is False and row["compile_mode"] is None  # (eager: no mode)
        assert row["malloc"] == ("retain" if host_memory.is_glibc() else "default")  # (glibc only)
        assert row["device_name"] == benchmark.cpu_model() != ""  # the machine, named in every row
    tsn = rows[0]
    assert tsn["params_vs_tsn"] == tsn["gflops_vs_tsn"] == tsn["activation_vs_tsn"] == 1.0
    assert tsn["train_time_vs_tsn"] == tsn["infer_time_vs_tsn"] == 1.0
    assert tsn["train_time_iqr"] == tsn["infer_time_iqr"] == 0.0
    for row in rows[1:]:
        assert row["train_time_iqr"] >= 0.0 and row["infer_time_iqr"] >= 0.0


def test_cpu_model_is_read_from_cpuinfo_else_from_platform(tmp_path, monkeypatch):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\n"
                       "flags\t\t: fpu avx512f\n\nprocessor\t: 1\nmodel name\t: AMD EPYC 9R14\n")
    assert benchmark.cpu_model(cpuinfo) == "AMD EPYC 9R14"
    monkeypatch.setattr(benchmark.platform, "processor", lambda: "")
    monkeypatch.setattr(benchmark.platform, "machine", lambda: "x86_64")
    assert benchmark.cpu_model(tmp_path / "missing") == "x86_64"  # (not Linux)
    cpuinfo.write_text("processor\t: 0\nmodel name\t: \n")  # an empty name is no name
    assert benchmark.cpu_model(cpuinfo) == "x86_64"


def test_ratio_spread_is_the_interquartile_range_of_the_rounds():
    rounds = [2.0, 4.0, 6.0, 8.0, 10.0]  # over a baseline of 1 s each: ratios 2..10
    assert benchmark._ratio_iqr(rounds, [1.0] * 5) == pytest.approx(8.0 - 4.0)  # quartiles 4 and 8 (NumPy's)
    assert benchmark._ratio_iqr([1.0, 1.0, 1.0, 1.0, 1.4], [1.0] * 5) == 0.0  # one outlier of five: no spread
    assert benchmark._ratio_iqr([1.0, 2.0], [1.0] * 2) == pytest.approx(0.5)  # within the range, never past it
    assert benchmark._ratio_iqr([2.0], [1.0]) is None  # one round has no spread


def test_compiled_runs_have_room_for_every_model():
    """Every model adds its compiled versions of the shared ``VideoClassifier.forward``: the
    recompile limit grows with the models (torch's 8 failed at four under ``fullgraph``)."""
    dynamo_config = torch._dynamo.config
    name = "recompile_limit" if hasattr(dynamo_config, "recompile_limit") else "cache_size_limit"
    before = getattr(dynamo_config, name)
    config = benchmark.BenchmarkConfig(backbones=("resnet18", "resnet34"), temporal_modules=("tsm", "gsf"),
                                       compile=True)
    with benchmark._room_for_every_compiled_model(config):
        assert getattr(dynamo_config, name) >= 4 * 6
    assert getattr(dynamo_config, name) == before
    with benchmark._room_for_every_compiled_model(benchmark.BenchmarkConfig()):
        assert getattr(dynamo_config, name) == before


def test_the_process_timer_takes_one_thread():
    """CPU time of several threads is not time per clip."""
    with pytest.raises(ValueError, match="process timer adds up the CPU time of every thread"):
        benchmark.BenchmarkConfig(timer="process", threads=2)
    assert benchmark.BenchmarkConfig(timer="process", threads=1).timer == "process"


def test_run_benchmark_sets_the_thread_count_it_is_given(monkeypatch):
    """Not only the command line: a caller of run_benchmark gets the one thread that the
    process timer's figures assume."""
    set_to = []
    monkeypatch.setattr(torch, "set_num_threads", set_to.append)
    monkeypatch.setattr(benchmark, "benchmark_backbone", lambda backbone, config, malloc: [])
    benchmark.run_benchmark(benchmark.BenchmarkConfig(timer="process", threads=1, malloc="default"))
    assert set_to == [1]


def test_autocast_weight_copies_are_not_activations():
    """In bf16 the convolutions save autocast's bf16 copies of their weights: parameter
    memory, the same for every variant, left out of the activations (TSN's ResNet-18 saved
    about 22 MB of them in a full step)."""
    config = benchmark.BenchmarkConfig(backbones=("resnet18",), num_segments=2, input_size=32, batch_size=1,
                                       dtype="bf16")
    model = benchmark.build_model("resnet18", "none", config)
    clips, labels = benchmark.make_batch(config)
    counted = benchmark.saved_activation_bytes(model, clips, labels, config)
    weights_in_bf16 = sum(p.numel() * 2 for p in model.parameters() if p.dim() > 1)
    float32 = benchmark.saved_activation_bytes(model, clips, labels, benchmark.BenchmarkConfig(
        backbones=("resnet18",), num_segments=2, input_size=32, batch_size=1))
    assert counted < float32 < counted + weights_in_bf16  # bf16 activations, no weight copies


def test_costs_relative_to_tsn_are_what_the_modules_imply(tiny_run):
    by_module = {row["temporal_module"]: row for row in tiny_run[0]}
    assert by_module["tsm"]["params_vs_tsn"] == 1.0  # TSM has no parameters
    assert by_module["gsf"]["params_vs_tsn"] > 1.0
    assert by_module["gsf"]["params_m"] == by_module["gsf_reference"]["params_m"]
    assert by_module["gsf"]["gflops_vs_tsn"] > 1.0
    # The fast path saves less for backward than the literal one.
    assert by_module["gsf"]["activation_mib"] < by_module["gsf_reference"]["activation_mib"]


def test_the_control_is_a_second_tsn(tiny_run):
    """``none_control`` is TSN again (same weights, same outputs), timed beside the others:
    every cost but time reads 1.0 against TSN, and its time ratio is the run's own spread."""
    control = {row["temporal_module"]: row for row in tiny_run[0]}["none_control"]
    assert control["params_vs_tsn"] == control["gflops_vs_tsn"] == control["activation_vs_tsn"] == 1.0
    assert control["train_time_vs_tsn"] > 0 and control["infer_time_vs_tsn"] > 0
    config = BenchmarkConfig(backbones=("resnet18",), num_segments=2, input_size=32, batch_size=1)
    torch.manual_seed(0)
    tsn = build_model("resnet18", "none", config).eval()
    torch.manual_seed(0)
    again = build_model("resnet18", "none_control", config).eval()
    assert not any(isinstance(m, GSF) for m in again.modules())
    assert tsn.state_dict().keys() == again.state_dict().keys()
    for name, value in tsn.state_dict().items():
        assert torch.equal(value, again.state_dict()[name]), name
    clips, _ = make_batch(config)
    with torch.no_grad():
        assert torch.equal(tsn(clips)["class"], again(clips)["class"])


def test_csv_holds_the_same_rows(tiny_run):
    rows, path = tiny_run
    with path.open() as handle:
        reader = csv.DictReader(handle)
        assert tuple(reader.fieldnames) == COLUMNS
        written = list(reader)
    assert [r["temporal_module"] for r in written] == [r["temporal_module"] for r in rows]
    for row, original in zip(written, rows):
        assert float(row["activation_mib"]) == pytest.approx(original["activation_mib"])
        assert row["cuda_peak_mib"] == ""


@pytest.mark.parametrize("variant,method", [("gsf_reference", "forward_reference"),
                                            ("gsf_compilable", "forward_compilable"),
                                            ("gsf_torch", "forward_torch"),
                                            ("gsf_cpu", "forward_cpu"),
                                            ("gsf_triton", "forward_triton")])
def test_formulation_variants_run_their_gsf_with_the_same_results(variant, method):
    config = BenchmarkConfig(backbones=("resnet18",), num_segments=2, input_size=32, batch_size=1)
    torch.manual_seed(0)
    fast = build_model("resnet18", "gsf", config).eval()
    torch.manual_seed(0)
    reference = build_model("resnet18", variant, config).eval()
    gsf_modules = [m for m in reference.modules() if isinstance(m, GSF)]
    assert gsf_modules and all(m.forward == getattr(m, method) for m in gsf_modules)
    clips, _ = make_batch(config)
    with torch.no_grad():
        torch.testing.assert_close(fast(clips)["class"], reference(clips)["class"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("variant,method", [("gsf_triton", "forward_triton"), ("gsf_cpu", "forward_cpu"),
                                            ("gsf_torch", "forward_torch"), ("gsf", "forward")])
def test_flops_of_every_gsf_path_are_those_of_the_reference(variant, method):
    """FlopCounterMode cannot see Triton kernels or C++ ops, and the PyTorch-ops path computes
    the pooled means as a matmul (counted) where the reference takes a mean: every path is
    counted as the reference, and the variant's own forward is back afterwards."""
    config = BenchmarkConfig(backbones=("resnet18",), num_segments=2, input_size=32, batch_size=1)
    clips, _ = make_batch(config)
    counts = {}
    for name in ("none", "gsf_reference", variant):
        model = build_model("resnet18", name, config)
        counts[name] = count_flops(model, clips, config)
    assert counts[variant] == counts["gsf_reference"] > counts["none"]
    gsf_modules = [m for m in model.modules() if isinstance(m, GSF)]
    assert all(m.forward == getattr(m, method) for m in gsf_modules)


def test_channels_last_variant_runs_in_channels_last():
    config = BenchmarkConfig(num_segments=2, input_size=32, batch_size=1, channels_last=True)
    model = build_model("resnet18", "gsf", config).eval()
    assert model.base_model.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    clips, _ = make_batch(config)
    features = []
    handle = model.base_model.layer1.register_forward_hook(lambda m, i, o: features.append(o))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(clips)["class"]
    handle.remove()
    assert logits.shape == (1, 174) and torch.isfinite(logits).all()
    assert features[0].is_contiguous(memory_format=torch.channels_last)


def _multiply_add_flops(model: nn.Module, clips: torch.Tensor) -> int:
    """2 x the multiply-adds of every convolution and linear layer in a forward of ``clips``,
    from the layers' shapes (GSF run as its reference, whose gate and fusion are such layers)."""
    total = 0

    def count(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Linear):
            total += 2 * output.numel() * module.in_features
        else:
            total += 2 * output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)

    layers = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
    handles = [m.register_forward_hook(count) for m in model.modules() if isinstance(m, layers)]
    with torch.no_grad(), gsf_as_reference(model):
        model.eval()(clips)
    for handle in handles:
        handle.remove()
    return total


@pytest.mark.parametrize("variant", ["none", "tsm", "gsf", "gsf_torch"])
def test_gflops_per_clip_are_the_layers_multiply_adds_twice_over_one_clip(variant):
    """Against the layers' shapes, with a batch of 3 (a count left undivided by the batch, a
    count of multiply-adds, or one that included backward would all be off)."""
    config = BenchmarkConfig(backbones=("resnet18",), num_segments=2, input_size=32, batch_size=3)
    clips, _ = make_batch(config)
    model = build_model("resnet18", variant, config)
    expected = _multiply_add_flops(model, clips) / 3
    assert gflops_per_clip(model, clips, config) * 1e9 == pytest.approx(expected, rel=1e-12)
    assert expected > 0


class _RecordsItsMode(nn.Module):
    """Records, at every forward, whether it trains, whether grad and inference mode are on."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.Linear(3, NUM_CLASSES_OF_PROBE)
        self.calls: list[tuple[bool, bool, bool]] = []

    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        self.calls.append((self.training, torch.is_grad_enabled(), torch.is_inference_mode_enabled()))
        return {"class": self.layer(clips.mean(dim=(1, 3, 4)))}


NUM_CLASSES_OF_PROBE = 5


def test_the_timed_steps_train_with_an_optimiser_step_and_infer_in_eval_inference_mode():
    config = BenchmarkConfig(num_segments=2, input_size=4, batch_size=2)
    model = _RecordsItsMode()
    clips = torch.randn(2, 2, 3, 4, 4)
    labels = torch.tensor([0, 1])
    steps = make_steps(model, clips, labels, config)
    before = model.layer.weight.detach().clone()
    steps.train()
    assert model.calls == [(True, True, False)]
    assert not torch.equal(model.layer.weight, before)  # (the optimiser's step is part of a training step)
    steps.infer()
    assert model.calls[-1] == (False, False, True)
    steps.train()  # (and back to training mode)
    assert model.calls[-1] == (True, True, False)


def test_round_robin_times_only_the_calls_after_the_warm_up_each_round_in_turn():
    """A fake clock that each call advances: a step's first calls are slow (as a first call's
    allocations and compilation are), later ones cost 1 + the step's index."""
    clock = [0.0]
    order: list[str] = []

    def step(name: str, cost: float) -> Callable[[], None]:
        calls = [0]

        def call() -> None:
            calls[0] += 1
            order.append(name)
            clock[0] += 100.0 if calls[0] <= 2 else cost
        return call

    steps = {"a": step("a", 1.0), "b": step("b", 2.0)}
    times = time_round_robin(steps, repeats=3, warmup=2, device="cpu", timer=lambda: clock[0])
    assert times == {"a": [1.0, 1.0, 1.0], "b": [2.0, 2.0, 2.0]}
    assert order == ["a", "b"] * 5  # (warm-up rounds, then timed rounds, one call per step in turn)


def test_time_ratios_are_the_median_of_the_rounds_ratios():
    """Paired by round (a slow round slows both), not a ratio of medians (here 1.5)."""
    times, baseline = [1.0, 10.0, 3.0], [1.0, 2.0, 10.0]
    assert benchmark._median_ratio(times, baseline) == 1.0


class _SavesTwoSlicesOfOneStorage(nn.Module):
    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        x = clips.flatten(1) * 2  # a new storage of 2 x 48 floats
        a, b = x[:, :8], x[:, 8:16]  # two views of a third of it, both saved by a * b
        return {"class": (a * b).sum(1, keepdim=True)}


class _SavesTheSameTensorTwice(nn.Module):
    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        x = clips.flatten(1) * 2  # a new storage, saved twice by x * x
        return {"class": (x * x).sum(1, keepdim=True)}


@pytest.mark.parametrize("network", [_SavesTheSameTensorTwice, _SavesTwoSlicesOfOneStorage])
def test_activation_bytes_count_each_storage_whole_and_once(network):
    """A tensor saved twice, or two views of a third of one storage: the storage counts once, whole."""
    config = BenchmarkConfig(num_segments=1, input_size=4, batch_size=2)
    clips = torch.randn(2, 1, 3, 4, 4, requires_grad=True)
    labels = torch.zeros(2, dtype=torch.long)
    counted = saved_activation_bytes(network(), clips, labels, config)
    storage_bytes = 2 * 48 * 4
    assert storage_bytes <= counted < storage_bytes + 64  # x's storage once, plus the loss's few bytes


class _SavesALinearOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(48, 96)

    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.fc(clips.flatten(1))  # (a new storage of 2 x 96 floats, saved by x * x)
        return {"class": (x * x).sum(1, keepdim=True)}


def test_a_layer_output_is_an_activation_not_a_weight_copy():
    """Only casts of parameters are left out of the count, not every tensor whose graph
    starts at a parameter (a Linear's output)."""
    config = BenchmarkConfig(num_segments=1, input_size=4, batch_size=2)
    clips, labels = torch.randn(2, 1, 3, 4, 4), torch.zeros(2, dtype=torch.long)
    counted = saved_activation_bytes(_SavesALinearOutput(), clips, labels, config)
    assert counted >= 2 * 96 * 4


@pytest.mark.parametrize(
    "field,value,message",
    [("temporal_modules", ("gsm",), "unknown temporal modules"), ("dtype", "fp16", "dtype"),
     ("temporal_modules", ("gsf", "tsm", "gsf"), r"temporal modules \['gsf'\] listed twice; .* none_control"),
     ("repeats", 0, ">= 1"), ("num_segments", 0, ">= 1"), ("input_size", 0, ">= 1"), ("batch_size", 0, ">= 1"),
     ("malloc", "tcmalloc", "malloc must be one of"), ("timer", "cpu", "timer must be one of"),
     ("threads", 0, r"threads must be >= 1, got 0"), ("threads", -2, r"threads must be >= 1, got -2"),
     ("compile_mode", "fastest", "compile_mode must be one of"), ("compile_mode", "reduce-overhead", "needs compile"),
     ("device", "cudax", "device 'cudax' is no device: "), ("device", "cuda:x", "device 'cuda:x' is no device: ")],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        BenchmarkConfig(**{field: value})


@pytest.mark.skipif(torch.cuda.is_available(), reason="a machine without a CUDA device")
@pytest.mark.parametrize("entry", [["gsf", "benchmark"], ["python", "-m", "lightning_gsf.benchmark"]])
def test_a_cuda_device_where_there_is_none_is_one_line(entry):
    """(It was a traceback from the first copy to the device.)"""
    command = [sys.executable, "-m", "lightning_gsf.cli", "benchmark"] if entry[0] == "gsf" else \
        [sys.executable, "-m", "lightning_gsf.benchmark"]
    result = subprocess.run([*command, *TINY, "--device", "cuda"], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["gsf benchmark: error: device 'cuda': no CUDA device is available here"]


@pytest.mark.parametrize("mode,graphed", [("default", False), ("reduce-overhead", True), ("max-autotune", True),
                                          ("max-autotune-no-cudagraphs", False)])
def test_compile_mode_reaches_the_compiler_and_cuda_graphs_hear_of_each_step(mode, graphed, monkeypatch):
    """``--compile-mode`` is torch.compile's ``mode`` (one that torch knows, replaying CUDA
    graphs where inductor's settings for it say so); in those modes (which reuse their
    outputs' memory) every timed step starts with ``cudagraph_mark_step_begin``, so that a
    graph's replay may overwrite the previous step's outputs, and a graph that inductor would
    skip fails the run."""
    import torch._inductor

    assert mode in torch._inductor.list_mode_options() and benchmark.uses_cuda_graphs(mode) is graphed
    compiled, steps_begun = [], []
    monkeypatch.setattr(benchmark.torch, "compile", lambda model, **kwargs: compiled.append(kwargs) or model)
    monkeypatch.setattr(benchmark.torch.compiler, "cudagraph_mark_step_begin", lambda: steps_begun.append(1))
    # (the graph modes need a CUDA device: the model and clips stay on the CPU, stand-ins)
    with monkeypatch.context() as cuda_here:
        cuda_here.setattr(benchmark.torch.cuda, "is_available", lambda: True)
        config = BenchmarkConfig(num_segments=2, input_size=32, batch_size=1, compile=True, compile_mode=mode,
                                 device="cuda" if graphed else "cpu", warmup=benchmark.CUDA_GRAPH_WARMUP)
    eager = BenchmarkConfig(num_segments=2, input_size=32, batch_size=1)
    steps = benchmark.make_steps(build_model("resnet18", "none", eager), *make_batch(eager), config)
    steps.train()
    steps.infer()
    assert compiled == [{"fullgraph": True, "mode": mode}]
    assert len(steps_begun) == (2 if graphed else 0)
    with benchmark._cuda_graphs_or_error(config):
        assert torch._inductor.config.triton.cudagraph_or_error is graphed
    assert torch._inductor.config.triton.cudagraph_or_error is False
    if not graphed:  # (the rows of a CPU run, compiled by the stand-in above)
        rows = main([*TINY, "--temporal-modules", "tsm", "--compile", "--compile-mode", mode])
        assert [(row["compile"], row["compile_mode"]) for row in rows] == [(True, mode)] * 2


@pytest.mark.parametrize("device,warmup,message", [("cpu", 3, "needs --device cuda"), ("cuda", 1, "needs warmup >= 2")])
def test_cuda_graph_modes_refuse_what_would_time_no_graphs(device, warmup, message):
    """On the CPU inductor skips CUDA graphs (and says so only in a log), and with one warm-up
    call the timed rounds would include the graphs' recording."""
    with pytest.raises(ValueError, match=message):
        BenchmarkConfig(compile=True, compile_mode="reduce-overhead", device=device, warmup=warmup)


@pytest.mark.slow
def test_compiled_run_measures_gsf_and_tsn():
    """``--compile`` (inductor, fullgraph) on the tiny configuration."""
    torch._dynamo.reset()
    rows = main([*TINY, "--temporal-modules", "gsf", "--compile"])
    assert [row["temporal_module"] for row in rows] == ["none", "gsf"]
    assert all(row["compile"] and row["train_clips_s"] > 0 and row["infer_clips_s"] > 0 for row in rows)


class _Tiny(nn.Module):
    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(3, hidden), nn.Linear(hidden, benchmark.NUM_CLASSES)

    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"class": self.b(self.a(clips.mean(dim=(1, 3, 4))))}


def _rows_with_known_times(monkeypatch, **config):
    """Two linear stand-ins (TSN: 4 hidden units, GSF: 8), known step times and activation bytes."""
    monkeypatch.setattr(benchmark, "build_model", lambda backbone, variant, config: _Tiny(8 if variant == "gsf" else 4))
    monkeypatch.setattr(benchmark, "saved_activation_bytes",
                        lambda model, *args: 2**20 * (model.a.out_features // 2 + 1))
    train = {"none": [2.0, 4.0, 8.0, 4.0, 2.0], "gsf": [6.0, 4.0, 16.0, 12.0, 4.0]}  # (ratios 3, 1, 2, 3, 2)
    infer = {"none": [1.0] * 5, "gsf": [5.0, 4.0, 4.0, 2.0, 1.0]}
    calls = iter([train, infer])
    monkeypatch.setattr(benchmark, "time_round_robin", lambda steps, *args: next(calls))
    config = BenchmarkConfig(temporal_modules=("gsf",), num_segments=2, input_size=4, batch_size=2, **config)
    return benchmark.benchmark_backbone("tiny", config, "default")


def test_row_figures_follow_from_the_measurements(monkeypatch):
    """Every column from known parameters, FLOPs, bytes and times: clips/s is the batch over
    the median time, the ratios and their IQR are of the rounds' own ratios."""
    tsn, gsf = _rows_with_known_times(monkeypatch)
    assert (tsn["params_m"] * 1e6, gsf["params_vs_tsn"]) == (pytest.approx(886), pytest.approx(1598 / 886))
    assert (tsn["gflops_per_clip"] * 1e9, gsf["gflops_vs_tsn"]) == (pytest.approx(2 * (12 + 4 * 174)),
                                                                   pytest.approx(2.0))
    assert (tsn["activation_mib"], gsf["activation_mib"], gsf["activation_vs_tsn"]) == (3.0, 5.0, pytest.approx(5 / 3))
    assert (tsn["train_clips_s"], gsf["train_clips_s"]) == (0.5, pytest.approx(2 / 6))
    assert (tsn["infer_clips_s"], gsf["infer_clips_s"]) == (2.0, 0.5)
    assert (gsf["train_time_vs_tsn"], gsf["train_time_iqr"]) == (2.0, 1.0)
    assert (gsf["infer_time_vs_tsn"], gsf["infer_time_iqr"]) == (4.0, 2.0)
    assert tsn["threads"] == torch.get_num_threads()


def test_compiled_rows_have_no_activation_memory(monkeypatch):
    monkeypatch.setattr(benchmark.torch, "compile", lambda model, **kwargs: model)
    rows = _rows_with_known_times(monkeypatch, compile=True)
    assert all(row["activation_mib"] is None and row["activation_vs_tsn"] is None for row in rows)


def test_tsn_is_measured_once_wherever_it_is_listed():
    assert BenchmarkConfig(temporal_modules=("none", "tsm")).variants == ("none", "tsm")


def test_the_process_timer_refuses_several_default_threads_and_cuda(monkeypatch):
    monkeypatch.setattr(torch, "get_num_threads", lambda: 4)
    with pytest.raises(ValueError, match="process timer adds up"):
        BenchmarkConfig(timer="process")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    with pytest.raises(ValueError, match="only measures CPU devices"):
        BenchmarkConfig(timer="process", threads=1, device="cuda")


def test_command_line_reaches_the_config(monkeypatch):
    configs = []
    monkeypatch.setattr(benchmark, "run_benchmark", lambda config: configs.append(config) or [])
    main(["--gsf-ratio", "0.25", "--channels-last", "--seed", "3", "--malloc", "default"])
    assert (configs[0].gsf_ratio, configs[0].channels_last, configs[0].seed) == (0.25, True, 3)


def test_flop_count_gives_gsf_its_own_forward_back():
    """Counted on the literal spec, then timed on GSF's own (fast) forward."""
    config = BenchmarkConfig(num_segments=2, input_size=32, batch_size=1)
    model = build_model("resnet18", "gsf", config)
    count_flops(model, make_batch(config)[0], config)
    gsf_modules = [m for m in model.modules() if isinstance(m, GSF)]
    assert gsf_modules and all(m.forward.__func__ is GSF.forward for m in gsf_modules)


def test_activation_memory_is_that_of_a_training_forward():
    model = _RecordsItsMode().eval()  # (as count_flops leaves it)
    config = BenchmarkConfig(num_segments=2, input_size=4, batch_size=2)
    saved_activation_bytes(model, torch.randn(2, 2, 3, 4, 4), torch.tensor([0, 1]), config)
    assert model.calls == [(True, True, False)]


def test_zero_threads_is_refused_before_anything_runs(monkeypatch):
    """(It was torch.set_num_threads' traceback, from inside the run; `python -m` prints the error in one line.)"""
    monkeypatch.setattr(benchmark, "run_benchmark", lambda config: pytest.fail("the run started"))
    with pytest.raises(ValueError, match="threads must be >= 1, got 0"):
        main(["--threads", "0"])


def test_build_model_gives_gsf_the_configured_ratio():
    config = BenchmarkConfig(backbones=("resnet18",), num_segments=2, input_size=32, batch_size=1, gsf_ratio=0.5)
    gsf_modules = [m for m in build_model("resnet18", "gsf", config).modules() if isinstance(m, GSF)]
    assert gsf_modules and all(m.ratio == 0.5 for m in gsf_modules)


def test_a_cost_ratio_to_a_missing_or_zero_baseline_is_none():
    assert benchmark._ratio(3.0, 2.0) == 1.5 and benchmark._ratio(None, 2.0) is None
    assert benchmark._ratio(3.0, None) is None and benchmark._ratio(3.0, 0.0) is None


def test_the_table_names_the_configuration_once_and_aligns_each_column_right():
    row = {c: None for c in COLUMNS}
    row.update(backbone="resnet18", temporal_module="none", num_segments=8, input_size=160, batch_size=2,
               threads=1, timer="wall", dtype="float32", channels_last=False, compile=False, device="cpu",
               device_name="Test CPU", repeats=5, warmup=1, seed=0, malloc="retain", params_m=24.5,
               gflops_per_clip=123.456, train_clips_s=1.23456)
    header, names, *cells = benchmark.format_table([row, dict(row, temporal_module="gsf")]).splitlines()
    assert header == ("T=8 size=160 batch=2 threads=1 timer=wall dtype=float32 channels_last=False compile=False "
                      "compile_mode=- device=cpu (Test CPU) gsf_ratio=- repeats=5 warmup=1 seed=0")
    assert names.split()[:3] == ["backbone", "temporal_module", "malloc"] and "device_name" not in names.split()
    first = dict(zip(names.split(), cells[0].split()))
    assert (first["params_m"], first["gflops_per_clip"], first["train_clips_s"]) == ("24.500", "123.5", "1.235")
    assert first["cuda_peak_mib"] == "-" and len(cells) == 2
    right_edge = names.index("temporal_module") + len("temporal_module")
    assert cells[0].index(" none ") + len(" none") == right_edge == cells[1].index(" gsf ") + len(" gsf")


def test_command_line_defaults_are_the_configs_and_malloc_overrides_the_environment(monkeypatch):
    configs = []
    monkeypatch.setattr(benchmark, "run_benchmark", lambda config: configs.append(config) or [])
    monkeypatch.setenv(host_memory.ENVIRONMENT_VARIABLE, "retain")
    main([])
    main(["--malloc", "default"])
    assert configs == [BenchmarkConfig(malloc="retain"), BenchmarkConfig(malloc="default")]


def test_run_benchmark_applies_the_malloc_mode_and_rows_name_the_mode_in_effect(monkeypatch):
    applied = []
    monkeypatch.setattr(benchmark.host_memory, "configure", lambda mode: applied.append(mode) or False)  # (refused)
    monkeypatch.setattr(benchmark, "benchmark_backbone", lambda backbone, config, malloc: [{"malloc": malloc}])
    assert benchmark.run_benchmark(BenchmarkConfig(malloc="retain")) == [{"malloc": "default"}]
    assert applied == ["retain"]


def test_a_cuda_rows_machine_is_the_cards_name(monkeypatch):
    monkeypatch.setattr(benchmark.torch.cuda, "get_device_name", lambda device: f"card of {device}")
    assert benchmark.device_name("cuda:1") == "card of cuda:1"
    assert benchmark.device_name("cpu") == benchmark.cpu_model()


def test_the_batch_is_the_seeds():
    config = BenchmarkConfig(num_segments=1, input_size=4, batch_size=8, seed=3)
    (clips, labels), (again, labels_again) = make_batch(config), make_batch(config)
    assert torch.equal(clips, again) and torch.equal(labels, labels_again)


class _SavesACastActivation(nn.Module):
    def forward(self, clips: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (clips.flatten(1) * 2).double()  # a cast of an activation (not of a weight), saved by x * x
        return {"class": (x * x).sum(1, keepdim=True).float()}


def test_a_cast_activation_is_an_activation():
    config = BenchmarkConfig(num_segments=1, input_size=4, batch_size=2)
    clips, labels = torch.randn(2, 1, 3, 4, 4, requires_grad=True), torch.zeros(2, dtype=torch.long)
    assert saved_activation_bytes(_SavesACastActivation(), clips, labels, config) >= 2 * 48 * 8


def test_both_timings_take_the_configured_rounds_warm_up_and_timer(monkeypatch):
    calls = []
    monkeypatch.setattr(benchmark, "build_model", lambda backbone, variant, config: _Tiny(4))
    monkeypatch.setattr(benchmark, "time_round_robin", lambda steps, *args: calls.append((list(steps), *args))
                        or {variant: [1.0, 1.0, 1.0] for variant in steps})
    config = BenchmarkConfig(temporal_modules=("gsf",), num_segments=2, input_size=4, batch_size=2, repeats=3,
                             warmup=2, timer="process", threads=1)
    benchmark.benchmark_backbone("tiny", config, "default")
    assert calls == [(["none", "gsf"], 3, 2, "cpu", benchmark.TIMERS["process"])] * 2


def test_without_cpuinfo_the_processor_is_named_before_the_architecture(tmp_path, monkeypatch):
    monkeypatch.setattr(benchmark.platform, "processor", lambda: "Intel64 Family 6 Model 85 Stepping 7")
    monkeypatch.setattr(benchmark.platform, "machine", lambda: "AMD64")
    assert benchmark.cpu_model(tmp_path / "missing") == "Intel64 Family 6 Model 85 Stepping 7"
