"""Formatting shared by the command modules (tables and figures as the CLI prints them)."""

from __future__ import annotations


def fmt_params(n: int) -> str:
    return f"{n / 1e6:.2f}M"


def fmt_flops(n: int) -> str:
    return f"{n / 1e9:.3f}G"


def print_table(header: list[str], rows: list[list[str]]) -> None:
    widths = [max(len(h), *(len(r[i]) for r in rows)) if rows else len(h) for i, h in enumerate(header)]
    print("  ".join(h.ljust(w) for h, w in zip(header, widths)))
    print("  ".join("-" * w for w in widths))
    for r in rows:
        print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))))
