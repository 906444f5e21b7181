#!/usr/bin/env bash
# The GPU checks in one command, sized for a short lease on one CUDA GPU (about 5 minutes on an
# H100 is the aim; nothing in the default test suite needs a GPU):
#
#   bash benchmarks/gpu.sh                 # OUT=folder for the results (default benchmarks/results/gpu)
#
# 1. the `gpu`-marked tests (bf16/fp16 training steps against fp32, a mixed-precision digits run,
#    SyncBatchNorm in an NCCL group; the two-process NCCL test runs where two GPUs are visible,
#    since NCCL does not put two ranks on one GPU),
# 2. `effnet bench` on CUDA, B0 at 224 px: bf16 inference (batch 1 from a CUDA graph, batch 32)
#    and bf16 training at batch 32, effnet against timm and torchvision, eager and
#    torch.compile'd (`--compile`), peak memory from torch.cuda.max_memory_allocated,
# 3. where two GPUs are visible: `torchrun --nproc_per_node=2` of the digits job (NCCL), whose
#    log names the backend.
#
# effnet is imported from this checkout's src/ (no install needed when its dependencies are
# there); timm and torchvision are measured when they import. Each step's exit status is kept and
# the script exits with the first failure, after running every step.
set -uo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT="$(dirname "$HERE")"
PY="${PYTHON:-python3}"
OUT="${OUT:-$HERE/results/gpu}"
mkdir -p "$OUT"
export PYTHONPATH="$ROOT/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu.sh: no CUDA device is visible to $PY; nothing run" >&2
    exit 2
fi
"$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0), torch.cuda.device_count(), 'GPU(s)')" | tee "$OUT/device.txt"
status=0
keep() { local rc=$?; [ "$status" -ne 0 ] || status=$rc; }

# One process (addopts without -n 2): the GPU tests share one device, and pytest-xdist may be absent here.
(cd "$ROOT" && "$PY" -m pytest -q -o addopts="--strict-markers" -p no:cacheprovider -m gpu tests/test_gpu.py) 2>&1 | tee "$OUT/tests.txt"; keep
"$PY" "$HERE/bench.py" --device cuda --models efficientnet_b0 --libs effnet timm torchvision --compile \
    --train-resolution 224 --rounds 3 --out "$OUT/bench.json" 2>&1 | tee "$OUT/bench.txt"; keep
if [ "$("$PY" -c 'import torch; print(torch.cuda.device_count())')" -ge 2 ]; then
    "$PY" -m torch.distributed.run --nproc_per_node=2 -m effnet train --epochs 1 --device cuda \
        --out "$OUT/ddp_run" --overwrite 2>&1 | tee "$OUT/ddp.txt"; keep
else
    echo "gpu.sh: one GPU visible: the two-process NCCL run needs two; skipped" | tee "$OUT/ddp.txt"
fi
exit "$status"
