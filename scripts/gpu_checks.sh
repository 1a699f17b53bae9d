#!/usr/bin/env bash
# The project's GPU checks in one go, for a machine with one CUDA GPU, most wanted first (a
# run cut short by a time cap keeps what it finished: every step appends to checks.log as it
# goes):
#   1. the CUDA tests (`pytest -m gpu`; the `gsf fit` one alone takes about a minute; with
#      pytest-xdist installed, PYTEST_WORKERS processes compile Triton's kernels side by side),
#   2. the cost of GSF / TSM next to TSN (ResNet-50, batch 8, 224 px, float32, 8 segments),
#      then the same with LIGHTNING_GSF_CUDA_GRADIENT_REUSE=0 (GSF's and TSM's backwards
#      then write new gradients; by default they write over their output's gradient),
#   3. the other cost tables: 16 segments, bf16 autocast, bf16 channels-last,
#   4. where a ResNet-50 step's time goes, TSN next to GSF: eager, its kernels, as a CUDA graph
#      (scripts/trace_gpu_step.py), what a GSF call costs the host (scripts/gsf_host_cost.py;
#      then with the kernels stubbed out: the glue around the launches alone),
#      the GSF kernels' time per launch setting (scripts/tune_gsf_kernels.py), GSF per site
#      (scripts/profile_gsf.py: Triton, PyTorch-ops, compile formulation, literal spec),
#   5. the loader on this machine's cores next to the model: training clips/s of a synthetic
#      set with EPIC's frame height (256 px, generated while the tests run, and waited for
#      before the first timed step) at 224 px crops,
#   6. GSF's PyTorch-ops path and the literal spec at 8 segments, the kernels' registers and
#      loads for this GPU (scripts/kernel_resources.py), then TSN, TSM and GSF compiled and
#      replayed as CUDA graphs (torch.compile's reduce-overhead: the networks without their host
#      work per kernel; loss, backward launch and SGD step stay eager), and TSN and GSF under
#      plain torch.compile (float32, 8 segments;
#      GPU_CHECKS_COMPILE=0 skips both: compiling ResNet-50 takes minutes).
# Usage: scripts/gpu_checks.sh [OUTPUT_DIR]   (checks.log and one CSV per table land there;
# default runs/gpu_checks)
# PYTHON picks the interpreter (default: python3); STEP_TIMEOUT caps each step in seconds
# (default 0: no cap; the compile step alone takes minutes), TEST_TIMEOUT the tests' step
# (default: STEP_TIMEOUT); PYTEST_WORKERS (default 8) is the tests' process count where
# pytest-xdist is installed. Each step runs even if an earlier one failed; the exit status is
# that of the first failure.
set -uo pipefail
export PYTHONUNBUFFERED=1  # (output piped through tee reaches checks.log line by line, even if a cap kills the step)
out=${1:-runs/gpu_checks}
python=${PYTHON:-python3}
mkdir -p "$out"
status=0
log=$out/checks.log
: > "$log"
step() {  # step NAME COMMAND...: run, append to checks.log, remember the first failure
  local name=$1; shift
  echo "== $name: $*" | tee -a "$log"
  timeout "${STEP_TIMEOUT:-0}" "$@" 2>&1 | tee -a "$log"
  local rc=${PIPESTATUS[0]}
  if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
  echo "== $name: exit $rc" | tee -a "$log"
}
step gpu nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
step versions "$python" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_device_name())"
# The loader's data set, written on the CPU while the tests run (and waited for before the
# first timed step: on 2026-11-27 a larger set took 204 s beside the tests and shared the
# host with the first cost tables, which the host's share of GSF's GPU step makes noisy; the
# GPU may idle for a minute if the tests finish first). 256 training segments: 16 timed
# batches of 8 at 16 workers (one batch per worker is left untimed).
loader_dir=$(mktemp -d)
loader_root=$loader_dir/synthetic
"$python" -m lightning_gsf.data.synthetic --out "$loader_root" --num-train 256 --num-val 8 --num-test 8 \
  --size 256 > "$loader_dir/synthetic.log" 2>&1 &
synth=$!
workers=()
if "$python" -c "import xdist" 2> /dev/null; then workers=(-n "${PYTEST_WORKERS:-8}"); fi
STEP_TIMEOUT=${TEST_TIMEOUT:-${STEP_TIMEOUT:-0}} step test_gpu "$python" -m pytest -q -m gpu tests/test_gpu.py \
  -p no:cacheprovider --durations 8 "${workers[@]}"
wait "$synth"
synth_status=$?  # (the loader step below is skipped, and this one fails, if the set was not written)
step loader_data bash -c 'cat "$1"; [ "$2" -eq 0 ]' _ "$loader_dir/synthetic.log" "$synth_status"
bench=("$python" -m lightning_gsf.benchmark --backbones resnet50 --device cuda --timer wall
       --batch-size 8 --input-size 224 --repeats 15 --warmup 3)
step fp32_t8 "${bench[@]}" --num-segments 8 --temporal-modules tsm gsf --csv "$out/fp32_t8.csv"
step no_reuse_fp32_t8 env LIGHTNING_GSF_CUDA_GRADIENT_REUSE=0 "${bench[@]}" --num-segments 8 \
  --temporal-modules tsm gsf --csv "$out/no_reuse_fp32_t8.csv"
step fp32_t16 "${bench[@]}" --num-segments 16 --temporal-modules tsm gsf --csv "$out/fp32_t16.csv"
step bf16_t8 "${bench[@]}" --num-segments 8 --temporal-modules tsm gsf gsf_torch --dtype bf16 \
  --csv "$out/bf16_t8.csv"
step bf16_cl_t8 "${bench[@]}" --num-segments 8 --temporal-modules tsm gsf --dtype bf16 --channels-last \
  --csv "$out/bf16_cl_t8.csv"
step trace "$python" scripts/trace_gpu_step.py --temporal-modules gsf gsf_torch --steps 10
step host_cost "$python" scripts/gsf_host_cost.py --calls 200
step host_glue "$python" scripts/gsf_host_cost.py --calls 200 --stub-kernels --profile-rows 15
step tune "$python" scripts/tune_gsf_kernels.py
step profile "$python" scripts/profile_gsf.py --device cuda --batch-size 8 --input-size 224 --repeats 10
[ "$synth_status" -eq 0 ] && step loader env OMP_NUM_THREADS=1 "$python" -m lightning_gsf.data.benchmark --root "$loader_root" \
  --input-size 224 --num-segments 8 --batch-size 8 --workers 0 4 8 16 --batches 40 --randaugment
step fp32_t8_slow_paths "${bench[@]}" --num-segments 8 --temporal-modules gsf_torch gsf_reference \
  --csv "$out/fp32_t8_slow_paths.csv"
sm=$("$python" -c "import torch; print(''.join(map(str, torch.cuda.get_device_capability())))" || echo 90)
step resources env -u TRITON_INTERPRET "$python" scripts/kernel_resources.py --sm "$sm" --warps 4 8
if [ "${GPU_CHECKS_COMPILE:-1}" = 1 ]; then
  step cuda_graphs_t8 "${bench[@]}" --num-segments 8 --temporal-modules tsm gsf --compile \
    --compile-mode reduce-overhead --repeats 10 --csv "$out/cuda_graphs_t8.csv"
  step compile_t8 "${bench[@]}" --num-segments 8 --temporal-modules gsf --compile --repeats 10 \
    --csv "$out/compile_t8.csv"
fi
rm -rf "$loader_dir"
exit $status
