"""The three export formats: how each is written and how its runtime loads it back.

ONNX (run by ONNX Runtime), TorchScript (``torch.jit``) and ExportedProgram (``torch.export``).
:func:`effnet.deploy.export.export` picks one with :func:`write` and verifies it through
:func:`load`. onnx and onnxruntime are optional dependencies, imported when an ONNX file is
written or loaded.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

__all__ = ["EXTERNAL_DATA_BYTES", "FORMATS", "INPUT_NAME", "MAX_BATCH", "MIN_OPSET", "OUTPUT_NAME", "Runner",
           "load", "max_opset", "write"]

#: Above this many bytes of parameters an ONNX file keeps its tensors in ``OUT.data``: one
#: protobuf message cannot exceed 2 GiB (efficientnet_l2 in float32 is 1.9 GB of weights).
EXTERNAL_DATA_BYTES = 1 << 30
#: The dynamic batch axis is declared up to this size (torch.export needs an upper bound to be
#: finite only for its own checks; ONNX and TorchScript keep the axis symbolic).
MAX_BATCH = 4096
INPUT_NAME, OUTPUT_NAME = "input", "logits"
#: Supported formats and the file suffix each gets when OUT is a folder.
FORMATS: dict[str, str] = {"onnx": ".onnx", "torchscript": ".pt", "exported-program": ".pt2"}

#: An export loaded by its runtime: a float input batch -> logits.
Runner = Callable[[torch.Tensor], torch.Tensor]


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool,
                 opset: int, dynamo: bool) -> None:
    large = sum(p.numel() * p.element_size() for p in model.parameters()) > EXTERNAL_DATA_BYTES
    if dynamo:
        dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic_batch else None
        # The dynamo exporter's graph passes log each rewrite at INFO: hundreds of lines per model.
        quiet = [logging.getLogger(n) for n in ("onnx_ir", "onnxscript", "torch.onnx")]
        levels = [q.level for q in quiet]
        for q in quiet:
            q.setLevel(max(q.getEffectiveLevel(), logging.WARNING))
        try:
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamo=True, dynamic_shapes=dynamic_shapes,
                              external_data=large, verbose=False)
        finally:
            for q, level in zip(quiet, levels):
                q.setLevel(level)
    else:
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
        with warnings.catch_warnings():
            # The TorchScript-based exporter warns that it is deprecated in favour of dynamo=True,
            # and traces the model's input checks (TracerWarning): neither concerns the result.
            warnings.simplefilter("ignore")
            torch.onnx.export(model, (example,), str(path), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                              opset_version=opset, dynamo=False, dynamic_axes=axes, do_constant_folding=True)
    if large:
        _consolidate_external_data(path)


def _consolidate_external_data(path: Path) -> None:
    """Put every external tensor of ``path`` into one ``NAME.data`` beside it (the exporters may
    write one file per tensor), so that the export is two files that move together."""
    import onnx

    proto = onnx.load(str(path), load_external_data=True)
    for f in path.parent.iterdir():
        if f != path:
            f.unlink()
    onnx.save_model(proto, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{path.name}.data", size_threshold=1024)


def _onnx_runner(path: Path) -> tuple[Runner, str]:
    import numpy as np
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: the fp16 graph's "casts inserted" notes are expected
    # A few runs only: threads that spin while waiting for work cost more than they save, and
    # slow everything else on a busy machine.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def run(x: torch.Tensor) -> torch.Tensor:
        (y,) = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})
        return torch.from_numpy(np.asarray(y))

    return run, f"onnxruntime {ort.__version__} (CPUExecutionProvider)"


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        # Tracing records the model's Python-side input checks as constants (TracerWarning):
        # the checks are for eager callers; the traced graph has fixed channels and size anyway.
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        torch.jit.save(traced, str(path))


def _torchscript_runner(path: Path) -> tuple[Runner, str]:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path), map_location="cpu")
    return loaded, f"torch.jit.load (torch {torch.__version__})"


def _export_program(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> None:
    dynamic_shapes = ({0: torch.export.Dim("batch", min=1, max=MAX_BATCH)},) if dynamic_batch else None
    program = torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes)
    torch.export.save(program, str(path))


def _program_runner(path: Path) -> tuple[Runner, str]:
    return torch.export.load(str(path)).module(), f"torch.export.load (torch {torch.__version__})"


#: The oldest ONNX opset whose export ONNX Runtime loads and runs (checked: 7, 9, 11, 13, 17;
#: opset 5 gives INVALID_GRAPH).
MIN_OPSET = 7


def max_opset() -> int:
    """The newest opset the installed onnx knows (unbounded when onnx is missing: the export then
    says so itself)."""
    try:
        import onnx

        return int(onnx.defs.onnx_opset_version())
    except ImportError:  # the export itself says that onnx is missing
        return 10**6


def write(format: str, model: nn.Module, example: torch.Tensor, path: Path, *, dynamic_batch: bool,
          opset: int, dynamo: bool) -> None:
    """Write ``model`` traced on ``example`` to ``path`` in ``format`` (one of :data:`FORMATS`).
    ``opset`` and ``dynamo`` apply to ONNX only."""
    if format == "onnx":
        _export_onnx(model, example, path, dynamic_batch, opset, dynamo)
    elif format == "torchscript":
        _export_torchscript(model, example, path)
    else:
        _export_program(model, example, path, dynamic_batch)


def load(format: str, path: Path) -> tuple[Runner, str]:
    """The export at ``path`` loaded by its runtime: (runner, a line naming the runtime)."""
    return {"onnx": _onnx_runner, "torchscript": _torchscript_runner, "exported-program": _program_runner}[format](path)
