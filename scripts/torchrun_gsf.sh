#!/bin/bash
# Train GSF with DDP under torchrun (no SLURM): NPROC processes on this node, NNODES nodes.
#
#   scripts/torchrun_gsf.sh configs/epic100/gsf_resnet50.yaml                # all GPUs of this node
#   # the configs' lr is for 32 clips a step, batch_size is per process: on 8 GPUs keep it with
#   scripts/torchrun_gsf.sh configs/epic100/gsf_resnet50.yaml --data.init_args.batch_size 4
#   NPROC=4 scripts/torchrun_gsf.sh configs/ssv2/gsf_resnet50_8f.yaml --trainer.max_epochs 1
#   # two nodes: run on each, with the same MASTER_ADDR and NODE_RANK 0 / 1
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 scripts/torchrun_gsf.sh CONFIG.yaml
#
# torchrun starts the processes and sets RANK/LOCAL_RANK/WORLD_SIZE; Lightning detects it
# (TorchElasticEnvironment) and must be told the same layout: trainer.devices = NPROC and
# trainer.num_nodes = NNODES. Resuming: add `--ckpt_path last`. torchrun passes a SIGTERM (or
# a Ctrl-C) on to the processes, which then save checkpoints/last.ckpt before they exit; it
# kills them after TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds (its default, 30 s, can fall in the
# middle of a validation or of the checkpoint write; here 180 s unless set).

set -euo pipefail

CONFIG=${1:?usage: scripts/torchrun_gsf.sh CONFIG.yaml [gsf fit arguments]}
shift

NPROC=${NPROC:-$(python -c "import torch; print(max(torch.cuda.device_count(), 1))")}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
export TORCH_ELASTIC_SHUTDOWN_TIMEOUT=${TORCH_ELASTIC_SHUTDOWN_TIMEOUT:-180}

exec torchrun \
    --nproc_per_node "$NPROC" \
    --nnodes "$NNODES" \
    --node_rank "$NODE_RANK" \
    --master_addr "$MASTER_ADDR" \
    --master_port "$MASTER_PORT" \
    -m lightning_gsf.cli fit \
    --config "$CONFIG" \
    --trainer.devices "$NPROC" \
    --trainer.num_nodes "$NNODES" \
    --trainer.strategy ddp \
    "$@"
