#!/bin/bash
# Multi-GPU URD training on one machine with torchrun (Lightning detects the torchelastic environment).
# Each process loads the same config; results go to results/<dataset>/<category>/<run>/ from rank 0.
#
#   experiments/torchrun.sh                        # 2 GPUs, mvtec/bottle
#   GPUS=4 DATASET=visa CATEGORY=pcb1 experiments/torchrun.sh trainer.max_steps=2000
#
# Multi-node: run this on every node with NNODES, NODE_RANK and MASTER_ADDR set (torchrun's rendezvous).
# Batch size is per process (see experiments/slurm/train.sbatch).
set -euo pipefail
GPUS=${GPUS:-2}
DATASET=${DATASET:-mvtec}
CATEGORY=${CATEGORY:-bottle}
NNODES=${NNODES:-1}
export URD_RUN=${URD_RUN:-torchrun-$(date +%Y%m%d-%H%M%S)}   # set once here, shared by every rank

torchrun --nproc_per_node="$GPUS" --nnodes="$NNODES" --node_rank="${NODE_RANK:-0}" \
  --master_addr="${MASTER_ADDR:-127.0.0.1}" --master_port="${MASTER_PORT:-29500}" \
  -m urd_lightning train dataset="$DATASET" data.category="$CATEGORY" \
  trainer.accelerator=gpu trainer.devices="$GPUS" trainer.num_nodes="$NNODES" trainer.strategy=ddp "$@"
