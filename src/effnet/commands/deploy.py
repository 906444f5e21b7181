"""`effnet export`: a thin wrapper over :func:`effnet.deploy.export.export`."""

from __future__ import annotations

import argparse
import sys

#: The format an output suffix implies when --format is not given.
_SUFFIX_FORMATS = {".onnx": "onnx", ".pt": "torchscript", ".ts": "torchscript", ".pt2": "exported-program"}


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "export", help="export to ONNX / TorchScript / torch.export, verified against eager PyTorch",
        description="Export a model, load the export back with its own runtime (ONNX Runtime, "
                    "torch.jit.load, torch.export.load), compare its outputs with eager PyTorch on random "
                    "and real images, and only then write OUT (plus OUT.json: input shape, preprocessing, "
                    "class names, verification). A failed verification writes nothing. OUT is never the weight "
                    "file, and an existing OUT is replaced only with --overwrite.",
    )
    p.add_argument("weights", metavar="WEIGHTS",
                   help="an effnet weight file (.safetensors), or a registered model name (random weights)")
    p.add_argument("out", metavar="OUT", help="output file (.onnx, .pt, .pt2); never WEIGHTS itself")
    p.add_argument("--overwrite", action="store_true", help="replace OUT (and OUT.json) if they exist")
    p.add_argument("--format", metavar="FORMAT", default=None,
                   help="onnx, torchscript or exported-program (default: from OUT's suffix, else onnx)")
    p.add_argument("--resolution", type=int, default=None, metavar="PX",
                   help="input size (default: the one the weights record); the export takes this size only")
    p.add_argument("--dynamic-batch", action="store_true", help="symbolic batch axis (verified at batch 1 and 3)")
    p.add_argument("--batch-size", type=int, default=1, metavar="N", help="the fixed batch size (default 1)")
    p.add_argument("--half", action="store_true", help="float16 weights and input (tolerance 1e-2)")
    p.add_argument("--fast", action="store_true", help="fold BatchNorm into the convs first (effnet.optimize)")
    p.add_argument("--images", nargs="+", metavar="IMAGE", default=None,
                   help="real images to verify on (default: scikit-image's sample photos when installed)")
    p.add_argument("--tolerance", type=float, default=None,
                   help="largest accepted error (default 1e-4, 1e-2 with --half)")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset, 7 or newer (default 17)")
    p.add_argument("--dynamo", action="store_true",
                   help="ONNX through torch.export (the dynamo exporter) instead of the TorchScript-based one")
    p.set_defaults(func=cmd_export)


def cmd_export(args: argparse.Namespace) -> int:
    from pathlib import Path

    from effnet.deploy.export import export

    fmt = args.format or _SUFFIX_FORMATS.get(Path(args.out).suffix.lower(), "onnx")
    result = export(args.weights, args.out, fmt, resolution=args.resolution, dynamic_batch=args.dynamic_batch,
                    batch_size=args.batch_size, half=args.half, fast=args.fast, images=args.images,
                    tolerance=args.tolerance, opset=args.opset, dynamo=args.dynamo,
                    overwrite=args.overwrite)
    meta = result.metadata
    _out(f"{result.path}: {meta['model']} as {result.format}, input {meta['input']['name']} "
         f"{meta['input']['shape']} {meta['input']['dtype']}")
    for c in result.checks:
        _out(f"  verified on {c.input}: max |diff| {c.max_abs_diff:.3g}, error {c.error:.3g}")
    _out(f"max error {result.max_error:.3g} <= tolerance {result.tolerance:g} "
         f"({meta['verification']['runtime']}); metadata: {result.metadata_path}")
    return 0


def _out(text: object) -> None:
    """CLI output goes to stdout (library code logs instead)."""
    sys.stdout.write(f"{text}\n")
