"""Architecture parity: effnet vs timm vs torchvision, trainable parameters and MACs.

    python benchmarks/parity.py [--resolution N] [--out parity.json]

with torchvision and / or timm importable (each needs a torch that matches its build; a library
that does not import is skipped, with the reason).

Every model in ``effnet.list_models()`` is built on the meta device (no memory, no weights) in
each library that has it, and compared on
- trainable parameters (``requires_grad`` tensors; BatchNorm running stats are buffers, so
  they are not counted), and
- MACs of one forward pass at batch 1, at the effnet spec's evaluation resolution unless
  ``--resolution`` is given: ``torch.utils.flop_counter`` FLOPs / 2. The counter covers
  convolutions and matrix products (every multiply-accumulate in these networks); BatchNorm,
  activations, pooling and the SE gating multiply are element-wise and not counted, in any
  library.

Exit status 1 when any count differs, so the script can gate CI.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))  # this checkout's effnet
from effnet.bench.peers import DROP_PATH_RATE, peer_name, use_keras_torch_backend, versions  # noqa: E402

use_keras_torch_backend()  # before anything imports keras

LIBS = ("effnet", "timm", "torchvision")


def build(lib: str, name: str) -> nn.Module:
    """``lib``'s model for the effnet architecture ``name`` (timm: the TF-ported V2 whose weights
    effnet imports), as its library builds it; under ``torch.device("meta")`` it costs nothing."""
    import effnet

    if lib == "effnet":
        return effnet.create_model(name)
    peer = peer_name(lib, name, speed=False)
    if lib == "torchvision":
        import torchvision

        return getattr(torchvision.models, peer)(stochastic_depth_prob=DROP_PATH_RATE)
    import timm

    return timm.create_model(peer, drop_path_rate=DROP_PATH_RATE)


def count(lib: str, name: str, resolution: int) -> tuple[int, int]:
    """(trainable parameters, MACs at batch 1 and ``resolution``) of ``lib``'s model."""
    with torch.device("meta"):
        model = build(lib, name).eval()
        x = torch.empty(1, 3, resolution, resolution)  # (B, C, H, W)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    return params, counter.get_total_flops() // 2


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--resolution", type=int, default=None,
                    help="input side for MACs (default: each effnet spec's evaluation resolution)")
    ap.add_argument("--models", nargs="*", default=None, help="effnet names (default: all with a peer)")
    ap.add_argument("--out", default=None, help="also write the rows as JSON to this file")
    args = ap.parse_args(argv)

    import effnet

    missing = {}
    for lib in LIBS[1:]:
        try:
            importlib.import_module(lib)
        except Exception as e:  # torchvision built for another torch fails with more than ImportError
            missing[lib] = f"{type(e).__name__}: {e}"
            print(f"skipped {lib}: {missing[lib]}", file=sys.stderr)
    names = args.models or [n for n in effnet.list_models() if peer_name("timm", n, speed=False)]
    rows, mismatches = [], []
    for name in names:
        res = args.resolution or effnet.get_spec(name).resolution
        row: dict[str, object] = {"model": name, "resolution": res}
        for lib in LIBS:
            peer = None if lib in missing else peer_name(lib, name, speed=False)
            row[f"{lib}_name"] = peer
            row[f"{lib}_params"], row[f"{lib}_macs"] = count(lib, name, res) if peer else (None, None)
        for key in ("params", "macs"):
            for lib in ("timm", "torchvision"):
                theirs = row[f"{lib}_{key}"]
                if theirs is not None and theirs != row[f"effnet_{key}"]:
                    mismatches.append(f"{name} {key}: effnet {row[f'effnet_{key}']:,} vs {lib} "
                                      f"{row[f'{lib}_name']} {theirs:,} (diff {row[f'effnet_{key}'] - theirs:+,})")
        row["match"] = not any(m.startswith(f"{name} ") for m in mismatches)
        rows.append(row)

    def fmt(v: object, scale: float) -> str:
        return "-" if v is None else f"{v / scale:.3f}"

    head = (f"| {'effnet model':<18} | {'res':>4} | {'params effnet':>13} | {'timm':>9} | {'torchvision':>11} "
            f"| {'GMACs effnet':>12} | {'timm':>9} | {'torchvision':>11} | {'timm name':<20} | match |")
    print(head)
    print("|" + "|".join("-" * (len(c)) for c in head.split("|")[1:-1]) + "|")
    for r in rows:
        print(f"| {r['model']:<18} | {r['resolution']:>4} | {fmt(r['effnet_params'], 1e6):>12}M "
              f"| {fmt(r['timm_params'], 1e6):>8}M | {fmt(r['torchvision_params'], 1e6):>10}"
              f"{'M' if r['torchvision_params'] else ' '} "
              f"| {fmt(r['effnet_macs'], 1e9):>12} | {fmt(r['timm_macs'], 1e9):>9} "
              f"| {fmt(r['torchvision_macs'], 1e9):>11} | {r['timm_name'] or '-':<20} | {'yes' if r['match'] else 'NO':<5} |")
    print("\nparameters: trainable, in millions; GMACs: forward pass, batch 1, at `res` (flop_counter / 2)")
    if missing:
        print(f"not compared (did not import): {', '.join(missing)}")
    print("exact integer counts are compared; " + (
        "all match" if not mismatches else f"{len(mismatches)} MISMATCH(ES):\n  " + "\n  ".join(mismatches)))
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"versions": versions(), "rows": rows, "mismatches": mismatches}, f, indent=2)
    return 1 if mismatches else 0


if __name__ == "__main__":
    sys.exit(main())
