#!/usr/bin/env bash
# One command for the side-by-side benchmark and the parity table:
#
#   bash benchmarks/run.sh [effnet bench options]     e.g. --quick, or --models efficientnet_b0 --threads 1
#
# Runs in the peers venv (torch CPU + torchvision + timm + Keras 3 + efficientnet_pytorch; built
# by /work/shared/tools/peers_env.sh, or point PEERS_PY at any python that has them). effnet
# is imported from this checkout's src/ (bench.py and parity.py put it on sys.path), so nothing
# is installed there and no peer ever becomes an effnet dependency. The measuring is
# `effnet bench` (effnet.bench); results go to benchmarks/results/ (parity.json, bench.json).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PEERS_PY:-/tmp/peers/bin/python}"
export KERAS_BACKEND="${KERAS_BACKEND:-torch}"
if ! "$PY" -c "import timm, torchvision, keras, efficientnet_pytorch" 2>/dev/null; then
    echo "no python with timm + torchvision + keras + efficientnet_pytorch at $PY; building the peers venv" >&2
    bash /work/shared/tools/peers_env.sh >&2
    PY=/tmp/peers/bin/python
fi
OUT="${OUT:-$HERE/results}"
mkdir -p "$OUT"
status=0
"$PY" "$HERE/parity.py" --out "$OUT/parity.json" || status=$?   # 1 = a count differs; still benchmark
"$PY" "$HERE/bench.py" --out "$OUT/bench.json" "$@"
exit "$status"
