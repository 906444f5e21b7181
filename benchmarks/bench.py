"""Side-by-side speed and memory: `effnet bench` run from this checkout, results kept here.

    bash benchmarks/run.sh [effnet bench options]           # parity table, then this
    python benchmarks/bench.py --quick                      # this alone

All the measuring is the library's (``effnet.bench``: interleaving, saved activations, peak
memory in fresh subprocesses, ratios); this script only makes *this checkout's* effnet
importable in the running Python (where the peers are installed: ``pip install -e ".[bench]"``,
plus torchvision and timm built for that torch; none is ever an effnet dependency) and writes
the JSON to ``benchmarks/results/bench.json`` unless ``--out`` says otherwise.
"""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"
if str(SRC) not in sys.path:
    sys.path.insert(0, str(SRC))  # this checkout's effnet, not whatever the venv may hold
# As the `effnet` command does, before torch is imported: huge pages for torch's CPU allocator
# (effnet.hostmem), for this process and the training workers it starts, so every library runs
# under the same allocator setting a user's `effnet bench` sees.
from effnet.hostmem import enable_huge_pages  # noqa: E402  (after the sys.path fix above)

enable_huge_pages()
# The training workers are fresh Pythons: they find the same effnet through PYTHONPATH
# (effnet.bench sets it), and Keras must pick the torch backend before its first import.
from effnet.bench.peers import use_keras_torch_backend  # noqa: E402
from effnet.cli import main  # noqa: E402

use_keras_torch_backend()

if __name__ == "__main__":
    argv = sys.argv[1:]
    if "--out" not in argv and not any(a.startswith("--out=") for a in argv) and not {"-h", "--help"} & set(argv):
        argv += ["--out", str(HERE / "results" / "bench.json")]
    sys.exit(main(["bench", *argv]))
