"""`effnet bench`: effnet next to torchvision, timm, Keras 3, efficientnet_pytorch and ONNX Runtime (effnet.bench.runner)."""

from __future__ import annotations

import argparse

from effnet.commands.common import check_positive


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    from effnet.bench.names import LIBRARIES

    p = sub.add_parser(
        "bench", help="inference latency/throughput, training speed and peak memory of effnet vs the peers",
        description="Measure effnet (plain, fast, its ONNX Runtime and OpenVINO sessions, int8 through torch, "
                    "ONNX Runtime and OpenVINO; training default and memory-saving) next to every peer library "
                    "importable in this Python (torchvision, timm, Keras 3, efficientnet_pytorch, and plain "
                    "ONNX Runtime on a peer's own export), interleaved across libraries; print medians and the "
                    "ratios effnet cost / peer cost (< 1: effnet cheaper; effnet's side is its fastest fp32 "
                    "path). Peers that cannot be imported are listed as skipped; when nothing asked for can "
                    "be measured the command fails. benchmarks/run.sh runs it with the current Python.",
    )
    p.add_argument("--models", nargs="+", metavar="NAME", default=None,
                   help="effnet model names (default efficientnet_b0 @224, efficientnet_b3 @300, "
                        "efficientnetv2_s @384)")
    p.add_argument("--resolution", type=int, default=None, help="one input side for every model")
    p.add_argument("--libs", nargs="+", choices=LIBRARIES, default=list(LIBRARIES), metavar="LIB",
                   help=f"libraries to measure (default all: {', '.join(LIBRARIES)})")
    p.add_argument("--quick", action="store_true",
                   help="every model at 128 px, batch 8, training batch 8 at 96 px, few iterations (minutes on a CPU)")
    p.add_argument("--batch", type=int, default=None, help="throughput batch (default 32; --quick 8)")
    p.add_argument("--train-batch", type=int, default=None, help="training batch (default 32; --quick 8)")
    p.add_argument("--train-resolution", type=int, default=None, help="training input side (default 128; --quick 96)")
    p.add_argument("--iters", type=int, default=None, help="timed batch-1 calls per candidate (default 20)")
    p.add_argument("--batch-iters", type=int, default=None, help="timed large-batch calls per candidate (default 4)")
    p.add_argument("--train-iters", type=int, default=None, help="timed training steps per candidate (default 4)")
    p.add_argument("--rounds", type=int, default=None, help="interleaving rounds across libraries (default 2)")
    p.add_argument("--device", default=None, help="cpu or cuda (default cuda when visible)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default torch's)")
    p.add_argument("--compile", action="store_true", help="also measure every torch network under torch.compile")
    p.add_argument("--no-cuda-graphs", action="store_true", help="CUDA: time batch-1 latency eagerly, not replayed")
    p.add_argument("--no-train", action="store_true", help="inference only: skip the training phase")
    p.add_argument("--no-peak", action="store_true", help="skip the peak training memory (one subprocess each)")
    p.add_argument("--train-in-process", action="store_true",
                   help="CPU: time the training steps in this process, interleaved (default: in a fresh process "
                        "per candidate and round, as a user's own run starts)")
    p.add_argument("--keep-denormals", action="store_true",
                   help="CPU: do not flush subnormal floats (random-init SE gates make them; see README)")
    p.add_argument("--out", metavar="JSON", default=None,
                   help="also write every measurement to this JSON file (an existing file is replaced only "
                        "with --overwrite)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_bench)


def cmd_bench(args: argparse.Namespace) -> int:
    from effnet.bench.report import table, write_json
    from effnet.bench.runner import run
    from effnet.files import check_output

    for option in ("resolution", "batch", "train_batch", "train_resolution", "iters", "batch_iters",
                   "train_iters", "rounds", "threads"):
        check_positive("--" + option.replace("_", "-"), getattr(args, option))
    if args.out:  # checked before minutes of measuring, so a bad path loses nothing
        check_output(args.out, overwrite=args.overwrite)
    result = run(args.models, resolution=args.resolution, libs=args.libs, quick=args.quick, batch=args.batch,
                 train_batch=args.train_batch, train_resolution=args.train_resolution, iters=args.iters,
                 batch_iters=args.batch_iters, train_iters=args.train_iters, rounds=args.rounds,
                 device=args.device, threads=args.threads, peak=not args.no_peak, train=not args.no_train,
                 compile=args.compile,
                 cuda_graphs=not args.no_cuda_graphs, flush_denormal=not args.keep_denormals,
                 progress=not args.no_progress, train_in_workers=not args.train_in_process)
    meta = result["meta"]
    print(f"# {meta['date']}  {meta['device_name']}  threads={meta['threads']}  "
          f"load={meta['loadavg_start'][0]:.1f}->{meta['loadavg_end'][0]:.1f}  "
          + "  ".join(f"{k} {v}" for k, v in meta["versions"].items()))
    for s in result["skipped"]:
        print(f"skipped {s['lib']}: {s['reason']}")
    print()
    print(table(result))
    print("\nratios: effnet cost / peer cost (ms per call or per batch, MiB); < 1 = effnet cheaper. "
          "img/s: higher is better.")
    busy = max(meta["loadavg_start"][0], meta["loadavg_end"][0])
    if busy > (meta["cpu_count"] or 1) and result["config"]["device"] == "cpu":
        print(f"NOTE: the machine was busy (1-min load average up to {busy:.1f} on {meta['cpu_count']} cores): "
              "absolute times are inflated; the interleaved ratios are the robust part.")
    if args.out:
        print(f"wrote {write_json(result, args.out)}")
    return 0
