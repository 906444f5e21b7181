"""Converters from torchvision / timm state dicts, checked against independent references:
the peers' own checkpoints and logits, and the key/shape manifests of every published variant
(``tests/fixtures``, see its README). Nothing here is built from effnet's own mapping.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import effnet
from effnet.weights import check_state_dict, convert, load_model, read_weights, save_weights
from effnet.weights.peers import PEERS
from effnet.weights.torch_maps import convert_state_dict, read_torch_state_dict
from fixtures.references import REFERENCES, manifests, peer_state_dict, reference_io

#: Reference checkpoints: name -> (source, the peer's model name, effnet name).
CHECKPOINTS = {name: (source, peer, own) for name, (source, peer, own, _) in REFERENCES.items()}
#: The reference logits come from the peer run on CPU in float32 (one thread); effnet reproduces
#: them to 1e-6 (B0) and 2.5e-6 (V2-S, 40 blocks). Logits are small (std 0.09-0.11), so the
#: tolerance is absolute and tight: the wrong padding moves them by 0.2 or more, the wrong
#: BatchNorm eps by 0.1 or more.
ATOL = 1e-5


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each reference checkpoint written once, as the peer's state dict in a safetensors file."""
    folder = tmp_path_factory.mktemp("peers")
    paths = {}
    for name in CHECKPOINTS:
        paths[name] = folder / f"{name}.safetensors"
        save_file(peer_state_dict(name), str(paths[name]))
    return paths


def _reference(checkpoints: dict[str, Path], name: str) -> tuple[Path, dict[str, torch.Tensor]]:
    """The checkpoint file of ``name`` and its io tensors (``input``, the peer's ``logits``)."""
    return checkpoints[name], reference_io(name)


def _assert_logits(model: torch.nn.Module, io: dict[str, torch.Tensor]) -> None:
    with torch.no_grad():
        logits = model.eval()(io["input"])  # (B, 1000)
    torch.testing.assert_close(logits, io["logits"], rtol=0, atol=ATOL)


@pytest.mark.parametrize("name", sorted(CHECKPOINTS))
def test_converted_checkpoint_reproduces_peer_logits(name: str, checkpoints: dict[str, Path],
                                                     tmp_path: Path) -> None:
    """load_model and create_model(weights=...) both run the converted file as the peer did,
    which holds only if every tensor went to the right place and the file recorded the
    peer's padding and BatchNorm eps."""
    source, peer, effnet_name = CHECKPOINTS[name]
    src, io = _reference(checkpoints, name)
    out = convert(src, tmp_path / "w.safetensors", source, peer)
    model = load_model(out)
    assert model.source == f"{source}:{peer}"
    _assert_logits(model, io)
    _assert_logits(effnet.create_model(effnet_name, weights=str(out)), io)


def test_tf_weights_keep_same_padding_in_create_model(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """timm's tf_ ports need TF "SAME" padding and eps 1e-3: create_model of the plain effnet
    name must keep them from the file (with symmetric padding the logits move by 0.25)."""
    src, io = _reference(checkpoints, "timm_tf_efficientnet_b0")
    out = convert(src, tmp_path / "w.safetensors", "timm", "tf_efficientnet_b0")
    model = effnet.create_model("efficientnet_b0", weights=str(out))
    assert model.spec.padding == "same" and model.spec.bn_eps == 1e-3
    _assert_logits(model, io)
    # A different number of classes keeps the backbone (and its padding) and replaces the head.
    model10 = effnet.create_model("efficientnet_b0", num_classes=10, weights=str(out)).eval()
    assert model10.classifier.out_features == 10 and model10.spec.padding == "same"
    with torch.no_grad():
        torch.testing.assert_close(model10.forward_features(io["input"]),
                                   model.eval().forward_features(io["input"]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="differ from 'efficientnet_b1'"):
        effnet.create_model("efficientnet_b1", weights=str(out))


def test_torch_weights_record_pytorch_runtime(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """torchvision B0 is a PyTorch-trained port: symmetric padding and PyTorch's eps 1e-5."""
    src, _ = _reference(checkpoints, "torchvision_efficientnet_b0")
    wf = read_weights(convert(src, tmp_path / "w.safetensors", "torchvision", "efficientnet_b0"))
    assert wf.spec.padding == "symmetric" and wf.spec.bn_eps == 1e-5
    assert wf.preprocessing.resolution == 224


# --- manifests: exact key names and shapes of every published torchvision / timm variant -------
def _effnet_name(peer: str) -> str:
    """The effnet architecture a peer name denotes, by the peers' naming convention alone:
    ``tf_`` marks TF-ported weights of the same layers; torchvision writes ``efficientnet_v2_s``
    where effnet (and timm) write ``efficientnetv2_s``."""
    return peer.removeprefix("tf_").replace("efficientnet_v2_", "efficientnetv2_")


def _tagged(manifest: dict[str, list[int]]) -> dict[str, torch.Tensor]:
    """The manifest's exact keys and shapes, each tensor filled with its own index (int16 and
    expanded from one element: no memory until the converter copies it)."""
    assert len(manifest) < 2**15, "too many keys for int16 tags"
    return {k: torch.tensor(i, dtype=torch.int16).expand(shape) for i, (k, shape) in enumerate(manifest.items())}


@pytest.mark.parametrize("key", sorted(manifests()))
def test_manifest_converts_one_to_one(key: str) -> None:
    """Every key of the peer's state dict is used exactly once, every tensor of the effnet
    model the peer name denotes is filled with the right shape, tensor kinds agree (a BN
    bias never lands in a weight), and layers keep their order (no two same-shaped blocks
    swapped): both libraries list their state dicts in execution order, as effnet does."""
    source, peer = key.split("/")
    manifest = manifests()[key]
    converted = convert_state_dict(_tagged(manifest), source, peer).state_dict
    with torch.device("meta"):
        own = effnet.create_model(_effnet_name(peer), num_classes=1000).state_dict()
    assert set(converted) == set(own), "effnet tensors not filled"
    assert {k: tuple(v.shape) for k, v in converted.items()} == {k: tuple(v.shape) for k, v in own.items()}
    names = list(manifest)
    tags = [int(converted[k].reshape(-1)[0]) for k in own]  # own order = effnet execution order
    assert sorted(tags) == list(range(len(manifest))), "a source key was not used exactly once"
    assert tags == sorted(tags), f"layer order differs: {[(k, names[t]) for k, t in zip(own, tags)][:3]}"
    wrong_kind = [(k, names[t]) for k, t in zip(own, tags) if k.rsplit(".", 1)[1] != names[t].rsplit(".", 1)[1]]
    assert not wrong_kind, wrong_kind[:5]


def test_timm_siblings_share_the_manifest_layout() -> None:
    """timm names the PyTorch-trained and the TF-ported (``tf_``) model of one architecture
    alike; the peers that have no manifest of their own convert their sibling's keys."""
    checked, uncovered = [], []
    for source, peer in PEERS:
        if source != "timm" or f"timm/{peer}" in manifests():
            continue
        sibling = peer.removeprefix("tf_") if peer.startswith("tf_") else f"tf_{peer}"
        if f"timm/{sibling}" not in manifests():
            uncovered.append(peer)
            continue
        state = {k: torch.empty(shape, device="meta") for k, shape in manifests()[f"timm/{sibling}"].items()}
        convert_state_dict(state, "timm", peer)  # raises on any unused, missing or misshapen key
        checked.append(peer)
    assert checked, "no timm sibling checked"
    # Architectures no manifest describes; their maps rest on the same code as their neighbours'.
    assert set(uncovered) <= {f"{tf}efficientnet{v}" for tf in ("", "tf_") for v in ("_b8", "_l2", "v2_b1", "v2_b2")}
    # torchvision: every model has its own manifest.
    assert {f"torchvision/{n}" for s, n in PEERS if s == "torchvision"} <= set(manifests())


# --- refusing files that do not fit -------------------------------------------------------------
def test_wrong_model_name_names_keys_and_layout(checkpoints: dict[str, Path]) -> None:
    src, _ = _reference(checkpoints, "timm_tf_efficientnet_b0")
    state = read_torch_state_dict(src)
    with pytest.raises(ValueError, match="look like a timm state dict"):
        convert_state_dict(state, "torchvision", "efficientnet_b0")
    with pytest.raises(ValueError, match=r"expected key\(s\) missing"):
        convert_state_dict(state, "timm", "tf_efficientnet_b1")  # B1 has more blocks
    with pytest.raises(ValueError, match=r"shape mismatch\(es\)"):
        convert_state_dict(state, "timm", "tf_efficientnetv2_b0")
    with pytest.raises(ValueError, match="did you mean"):
        convert_state_dict(state, "timm", "tf_efficientnet_b9")


def test_refuses_pickled_objects_and_truncated_files(tmp_path: Path) -> None:
    bad = tmp_path / "evil.pth"
    torch.save({"x": torch.zeros(1), "obj": Path("/")}, bad)  # a non-tensor object
    with pytest.raises(ValueError, match="refusing to unpickle|expected a state dict"):
        read_torch_state_dict(bad)
    good = tmp_path / "good.pth"
    torch.save({"x": torch.zeros(1000)}, good)
    cut = tmp_path / "cut.pth"
    cut.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        read_torch_state_dict(cut)
    model = effnet.create_model("efficientnetv2_b0")
    save_weights(model, tmp_path / "w.safetensors")
    data = (tmp_path / "w.safetensors").read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        load_model(tmp_path / "cut.safetensors")


def test_training_checkpoints_are_unwrapped(checkpoints: dict[str, Path], tmp_path: Path) -> None:
    """A timm training checkpoint nests the weights and DDP prefixes ``module.``."""
    src, io = _reference(checkpoints, "timm_tf_efficientnet_b0")
    state = read_torch_state_dict(src)
    torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, tmp_path / "ckpt.pth")
    out = convert(tmp_path / "ckpt.pth", tmp_path / "w.safetensors", "timm", "tf_efficientnet_b0")
    _assert_logits(load_model(out), io)


def test_check_state_dict_names_first_mismatch() -> None:
    model = effnet.create_model("efficientnetv2_b0")
    state = model.state_dict()
    state["stem.conv.weight"] = torch.zeros(8, 3, 3, 3)
    with pytest.raises(ValueError, match=r"stem\.conv\.weight: file \(8, 3, 3, 3\)"):
        check_state_dict(model, state)


def test_h5py_is_loaded_only_to_read_keras_files() -> None:
    """h5py is optional: importing the converters (Keras included) must not need it."""
    code = "import sys, effnet.weights.converters, effnet.weights.keras; assert 'h5py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
