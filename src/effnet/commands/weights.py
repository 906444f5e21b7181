"""`effnet convert` and `effnet pretrained`: thin wrappers over :mod:`effnet.weights`."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser(
        "convert", help="convert torchvision/timm/Keras/efficientnet_pytorch weights to a self-describing effnet file",
        description="Convert a peer library's weights (state dict .pth/.pt/.bin/.safetensors, or "
                    "Keras .weights.h5/.h5) into effnet safetensors with spec and preprocessing.",
    )
    p.add_argument("src", help="source weights file")
    p.add_argument("out", help="output .safetensors file (never the source; an existing file only with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument("--source", required=True, choices=("torchvision", "timm", "keras", "efficientnet_pytorch"),
                   help="the library the weights come from")
    p.add_argument("--model", required=True,
                   help="the source library's model name (efficientnet_b3, tf_efficientnetv2_m, "
                        "EfficientNetV2S, efficientnet-b3, efficientnet-lite0 ...); `effnet pretrained "
                        "--peers` lists them")
    p.add_argument("--advprop", action="store_true",
                   help="efficientnet_pytorch AdvProp weights: record the [-1, 1] input normalisation")
    p.set_defaults(func=cmd_convert)

    q = sub.add_parser(
        "pretrained", help="download, verify and cache published weights (or list what is known)",
    )
    q.add_argument("names", nargs="*", help="effnet model names to fetch into the cache")
    q.add_argument("--peers", action="store_true", help="list the peer model names convert accepts")
    q.set_defaults(func=cmd_pretrained)


def cmd_convert(args: argparse.Namespace) -> int:
    from effnet.files import check_output
    from effnet.weights import convert, read_weights

    check_output(args.out, inputs=[args.src], overwrite=args.overwrite)
    path = convert(args.src, args.out, source=args.source, model=args.model, advprop=args.advprop)
    wf = read_weights(path)
    _out(f"{path}: {wf.spec.name} ({wf.source}), {wf.spec.num_classes} classes, "
          f"input {wf.preprocessing.resolution} px, padding={wf.spec.padding}, bn_eps={wf.spec.bn_eps:g}")
    return 0


def cmd_pretrained(args: argparse.Namespace) -> int:
    from effnet.weights.hub import PRETRAINED, cache_dir, cached_path, fetch_pretrained
    from effnet.weights.peers import list_peers

    if args.peers:
        _out("\n".join(list_peers()))
        return 0
    if not args.names:
        _out(f"cache: {cache_dir()}")
        for name, entry in PRETRAINED.items():
            state = "cached" if cached_path(name, entry).is_file() else "-"
            _out(f"{name:20s} {state:7s} {entry.url} ({entry.checksum.describe()})")
        return 0
    for name in args.names:
        _out(fetch_pretrained(name))
    return 0


def _out(text: object) -> None:
    """CLI output goes to stdout (library code logs instead)."""
    sys.stdout.write(f"{text}\n")
