"""effnet model names -> the equivalent torchvision and timm models, and one builder per library.

Shared by ``bench.py`` (speed and memory) and ``parity.py`` (parameters and MACs). torchvision
and timm are imported lazily and only here: they are peers we measure against, never
dependencies of effnet.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

# Benchmark this checkout, not whatever effnet happens to be installed in the peers venv.
_SRC = Path(__file__).resolve().parents[1] / "src"
if str(_SRC) not in sys.path:
    sys.path.insert(0, str(_SRC))

from torch import nn  # noqa: E402  (after the sys.path fix above)

LIBS = ("effnet", "torchvision", "timm")


@dataclass(frozen=True)
class Peers:
    """The names one effnet architecture has in the peer libraries (None: no equivalent)."""

    torchvision: str | None
    timm: str | None  # the TF-ported name: the one whose weights effnet imports
    timm_speed: str | None  # the same architecture with PyTorch-style static padding

    def name(self, lib: str, *, speed: bool = False) -> str | None:
        if lib == "torchvision":
            return self.torchvision
        if lib == "timm":
            return self.timm_speed if speed else self.timm
        raise ValueError(f"lib: expected 'torchvision' or 'timm', got {lib!r}")


def _v1(n: str) -> Peers:
    # timm's efficientnet_b* and torchvision's efficientnet_b* are both the paper's B0..B7 with
    # symmetric padding; torchvision stops at B7.
    tv = f"efficientnet_{n}" if n in {f"b{i}" for i in range(8)} else None
    return Peers(torchvision=tv, timm=f"efficientnet_{n}", timm_speed=f"efficientnet_{n}")


def _v2(n: str) -> Peers:
    # timm's tf_efficientnetv2_* use dynamic TF "SAME" padding (a pad op per strided conv);
    # for speed we compare against timm's static-padding twin (same layers, same parameters),
    # which is what effnet builds by default. The B0..B3 twins exist only as tf_ models.
    tv = f"efficientnet_v2_{n}" if n in ("s", "m", "l") else None
    speed = f"efficientnetv2_{n}" if n in ("s", "m", "l", "xl") else f"tf_efficientnetv2_{n}"
    return Peers(torchvision=tv, timm=f"tf_efficientnetv2_{n}", timm_speed=speed)


#: effnet name -> peer names. Every effnet model in the registry has a timm equivalent.
PEERS: dict[str, Peers] = {
    **{f"efficientnet_{n}": _v1(n) for n in [f"b{i}" for i in range(9)] + ["l2"]},
    **{f"efficientnetv2_{n}": _v2(n) for n in ("s", "m", "l", "xl", "b0", "b1", "b2", "b3")},
}


def build(lib: str, name: str, *, speed: bool = False, drop_path_rate: float = 0.2) -> nn.Module:
    """The model ``lib`` calls the effnet architecture ``name``, randomly initialised.

    Regularisation is made equal across libraries so a training step does the same work:
    stochastic depth ``drop_path_rate`` (torchvision's default and effnet's), and the effnet
    spec's classifier dropout. Call under ``torch.device("meta")`` to build without memory.
    """
    import effnet

    spec = effnet.get_spec(name)
    if lib == "effnet":
        return effnet.create_model(name, drop_path_rate=drop_path_rate)
    peer = PEERS[name].name(lib, speed=speed)
    if peer is None:
        raise ValueError(f"{name}: no {lib} equivalent")
    if lib == "torchvision":
        import torchvision

        return getattr(torchvision.models, peer)(stochastic_depth_prob=drop_path_rate, dropout=spec.dropout)
    import timm

    return timm.create_model(peer, drop_path_rate=drop_path_rate, drop_rate=spec.dropout)


def peer_name(lib: str, name: str, *, speed: bool = False) -> str | None:
    """What ``lib`` calls the effnet model ``name`` (None: no equivalent)."""
    return name if lib == "effnet" else PEERS[name].name(lib, speed=speed)


def versions() -> dict[str, str]:
    """Library versions for the results header (a missing peer reads 'not installed')."""
    import platform

    import torch

    import effnet

    out = {"python": platform.python_version(), "torch": torch.__version__, "effnet": effnet.__version__}
    for lib in ("torchvision", "timm"):
        try:
            out[lib] = __import__(lib).__version__
        except ImportError:
            out[lib] = "not installed"
    return out
