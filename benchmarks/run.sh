#!/usr/bin/env bash
# One command for the side-by-side benchmark and the parity table, with the current Python:
#
#   pip install -e ".[bench]"                         # the peers that install from the package index
#   bash benchmarks/run.sh [effnet bench options]     e.g. --quick, or --models efficientnet_b0 --threads 1
#
# The `bench` extra installs efficientnet_pytorch and Keras 3. torchvision and timm are measured
# too when they import; each needs a torch that matches its build (install the torchvision wheel
# made for your torch, then timm), so they are not in the extra. A peer that does not import is
# listed as skipped, with the reason. effnet is imported from this checkout's src/ (bench.py and
# parity.py put it on sys.path). The measuring is `effnet bench` (effnet.bench); results go to
# benchmarks/results/ (parity.json, bench.json).
set -euo pipefail
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PY="${PYTHON:-python}"
export KERAS_BACKEND="${KERAS_BACKEND:-torch}"
OUT="${OUT:-$HERE/results}"
mkdir -p "$OUT"
status=0
"$PY" "$HERE/parity.py" --out "$OUT/parity.json" || status=$?   # 1 = a count differs; still benchmark
"$PY" "$HERE/bench.py" --out "$OUT/bench.json" "$@"
exit "$status"
