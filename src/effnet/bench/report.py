"""The bench's answer as numbers a reader compares: which effnet configuration each peer is
compared with, the ratios effnet cost / peer cost, the JSON file and the plain-text tables.

Ratios are **effnet cost / peer cost** (time per call, time per image, bytes): below 1 effnet is
cheaper. effnet's side is its best fp32 configuration measured (:func:`reference_of`); a
compiled peer (``"timm+compile"``) is compared with effnet's compiled reference where that
measured the metric, else with the eager one, and the table marks such a cell.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from effnet.bench.names import EFFNET_FP32, LIBRARIES
from effnet.files import atomic_write

INFERENCE_PREFIXES = ("latency_", "throughput_")
TRAINING_PREFIXES = ("train_", "saved_act_", "peak_")

Entries = dict[str, dict[str, Any]]


def is_cost(metric: str) -> bool:
    """Metrics where lower is better (times and bytes); img/s are their reciprocals, not ratioed."""
    return metric.endswith("_ms") or metric.endswith("_mib")


def reference_of(entries: Entries) -> dict[str, str | None]:
    """effnet's side of the ratios: its best fp32 configuration that was measured (inference: the
    fp32 variant with the lowest batch-1 latency)."""

    def ok(label: str) -> bool:
        return entries.get(label, {}).get("status") == "ok"

    # The fastest fp32 path at batch 1 (torch fast path or a runtime session): effnet's best answer.
    fp32 = [f"effnet[{v}]" for v in EFFNET_FP32 if ok(f"effnet[{v}]")]
    best = min(fp32, key=lambda lb: entries[lb]["metrics"].get("latency_b1_ms", float("inf")), default=None)
    return {"inference": best, "training": "effnet[default]" if ok("effnet[default]") else None}


def _compiled_reference(entries: Entries, ref: str | None) -> str | None:
    """The label of effnet's compiled reference (``"effnet[fast]+compile"``) where it was measured,
    else None."""
    label = f"{ref}+compile"
    return label if ref is not None and entries.get(label, {}).get("status") == "ok" else None


def compared_with(entries: Entries, reference: dict[str, str | None], peer: str, metric: str) -> str | None:
    """The effnet entry that ``peer``'s ``metric`` is compared with (None: none measured it)."""
    ref = reference.get("inference" if metric.startswith(INFERENCE_PREFIXES) else "training")
    compiled_ref = _compiled_reference(entries, ref)
    if peer.endswith("+compile") and compiled_ref is not None and metric in entries[compiled_ref]["metrics"]:
        return compiled_ref
    return ref


def ratios(entries: Entries, reference: dict[str, str | None]) -> dict[str, dict[str, float]]:
    """``{peer label: {metric: effnet cost / peer cost}}`` for every cost metric both measured;
    ``reference`` names effnet's entry for ``"inference"`` and ``"training"`` metrics."""
    out: dict[str, dict[str, float]] = {}
    for label, entry in entries.items():
        if entry["lib"] == "effnet" or entry["status"] != "ok":
            continue
        row: dict[str, float] = {}
        for metric, cost in entry["metrics"].items():
            if not is_cost(metric) or not cost:
                continue
            ref = compared_with(entries, reference, label, metric)
            mine = entries.get(ref, {}).get("metrics", {}).get(metric) if ref is not None else None
            if mine is not None:
                row[metric] = mine / cost
        out[label] = row
    return out


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    """Write ``result`` as JSON, atomically (a half-written file never replaces a good one)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=2)))


def _fmt(v: float | None) -> str:
    if v is None:
        return "-"
    return f"{v:.3f}" if abs(v) < 10 else f"{v:.1f}"


def _phase_table(rec: dict[str, Any], phase: str, missing: set[str]) -> str:
    """One model's table for one phase: every candidate's medians, then effnet / each peer."""
    entries, reference = rec["entries"], rec["reference"]
    prefixes = INFERENCE_PREFIXES if phase == "inference" else TRAINING_PREFIXES
    # effnet's variants first, then the peers, in the order LIBRARIES lists them
    ok = sorted((lb for lb, e in entries.items() if phase in e["roles"] and e["status"] == "ok"),
                key=lambda lb: (LIBRARIES.index(entries[lb]["lib"]), lb.endswith("+compile")))
    peers = [lb for lb in ok if entries[lb]["lib"] != "effnet"]
    metrics = list(dict.fromkeys(m for lb in ok for m in entries[lb]["metrics"]
                                 if m.startswith(prefixes) and not m.endswith("_min")))
    ref = reference.get(phase)
    compiled_ref = _compiled_reference(entries, ref)
    # A compiled peer's column is headed by the compiled reference; a cell compared with the
    # eager one instead (the compiled reference did not measure that metric) is marked '*'.
    head_ref = {p: compiled_ref if p.endswith("+compile") and compiled_ref else ref or "effnet" for p in peers}
    fell_back = False

    def ratio_cell(peer: str, metric: str) -> str:
        nonlocal fell_back
        if not is_cost(metric):
            return ""
        cell = _fmt(rec["ratios"].get(peer, {}).get(metric))
        if cell != "-" and compared_with(entries, reference, peer, metric) != head_ref[peer]:
            fell_back = True
            return cell + "*"
        return cell

    head = ["metric", *ok, *(f"{head_ref[p]}/{p}" for p in peers)]
    rows = [[m, *(_fmt(entries[lb]["metrics"].get(m)) for lb in ok), *(ratio_cell(p, m) for p in peers)]
            for m in metrics]
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(head)]
    res = rec["resolution"] if phase == "inference" else rec["train_resolution"]
    lines = [f"{rec['model']} @ {res} px, {phase}",
             "  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths))),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    if fell_back:
        lines.append(f"  * against {ref}: {compiled_ref} did not measure this metric")
    other = TRAINING_PREFIXES if phase == "inference" else INFERENCE_PREFIXES
    for lb, e in entries.items():
        if phase in e["roles"] and e["status"] != "ok" and e["lib"] not in missing:
            lines.append(f"  {lb}: {e['status']} ({e['reason']})")
        for note in e["notes"] if phase in e["roles"] else ():
            if not note.startswith(other):  # a note that names the other phase's metric
                lines.append(f"  {lb}: {note}")
    return "\n".join(lines)


def table(result: dict[str, Any]) -> str:
    """Plain-text tables, one per model and phase: every candidate's medians, then effnet/peer."""
    missing = {s["lib"] for s in result["skipped"]}  # whole libraries: said once, not per model
    phases = ("inference", "training") if result["config"].get("train", True) else ("inference",)
    return "\n\n".join(_phase_table(rec, phase, missing) for rec in result["results"] for phase in phases)


__all__ = ["INFERENCE_PREFIXES", "TRAINING_PREFIXES", "compared_with", "is_cost", "ratios", "reference_of",
           "table", "write_json"]
