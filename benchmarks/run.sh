#!/usr/bin/env bash
# One command for the side-by-side benchmark and the parity table:
#
#   bash benchmarks/run.sh [bench.py options]        e.g. --threads 1 --full --variants eager channels_last
#
# Runs in the peers venv (torchvision + timm on the CPU torch; built by
# /work/shared/tools/peers_env.sh, or point PEERS_PY at any python that has both). effnet is
# imported from this checkout's src/ (bench.py puts it on sys.path), so nothing is installed
# and torchvision/timm never become effnet dependencies. Results go to benchmarks/results/.
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PEERS_PY:-/tmp/peers/bin/python}"
if ! "$PY" -c "import timm, torchvision" 2>/dev/null; then
    echo "no python with timm + torchvision at $PY; building the peers venv" >&2
    bash /work/shared/tools/peers_env.sh >&2
    PY=/tmp/peers/bin/python
fi
OUT="${OUT:-$HERE/results}"
mkdir -p "$OUT"
status=0
"$PY" "$HERE/parity.py" --out "$OUT/parity.json" || status=$?   # 1 = a count differs; still benchmark
"$PY" "$HERE/bench.py" --out "$OUT/bench.json" "$@"
exit "$status"
