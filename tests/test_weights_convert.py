"""Converters from torchvision / timm state dicts, checked against the peers' own logits and
against the key/shape manifests of every published variant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

import effnet
from effnet.weights import check_state_dict, convert, load_model, read_weights, save_weights
from effnet.weights.convert import (
    convert_state_dict,
    read_torch_state_dict,
    timm_mapping,
    torchvision_mapping,
)
from effnet.weights.peers import PEERS, get_peer

REFERENCE = Path(__file__).resolve().parents[2] / "shared" / "reference"
needs_reference = pytest.mark.skipif(
    not (REFERENCE / "index.json").is_file(), reason=f"reference fixtures not found at {REFERENCE}"
)
FIXTURES = {
    "torchvision_efficientnet_b0": ("torchvision", "efficientnet_b0"),
    "timm_tf_efficientnet_b0": ("timm", "tf_efficientnet_b0"),
    "torchvision_efficientnet_v2_s": ("torchvision", "efficientnet_v2_s"),
}


@needs_reference
@pytest.mark.parametrize("fixture", sorted(FIXTURES))
def test_reference_logits(fixture: str, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    index = json.loads((REFERENCE / "index.json").read_text())
    assert fixture in index, f"{fixture} missing from {REFERENCE / 'index.json'}"
    source, peer = FIXTURES[fixture]
    out = convert(REFERENCE / index[fixture]["file"], tmp_path / "w.safetensors", source, peer)
    model = load_model(out)
    io = load_file(str(REFERENCE / index[fixture]["io"]))
    with torch.no_grad():
        logits = model(io["input"])
    assert (logits - io["logits"]).abs().max().item() < 1e-4
    assert model.source == f"{source}:{peer}"


def _manifests() -> dict[str, dict[str, list[int]]]:
    path = REFERENCE / "state_dict_manifests.json"
    return json.loads(path.read_text()) if path.is_file() else {}


@needs_reference
@pytest.mark.parametrize("key", sorted(_manifests()) or ["none"])
def test_every_manifest_converts(key: str) -> None:
    """Every key of the peer's state dict is used once and every effnet tensor filled; the
    tensors live on the meta device so even V2-XL costs no memory or time."""
    source, peer = key.split("/")
    manifest = _manifests()[key]
    state = {k: torch.empty(shape, device="meta") for k, shape in manifest.items()}
    c = convert_state_dict(state, source, peer)
    with torch.device("meta"):
        model = effnet.build(c.spec)
    own = model.state_dict()
    assert set(c.state_dict) == set(own)
    for k, v in own.items():
        assert c.state_dict[k].shape == v.shape, k


def test_mappings_cover_every_peer_model() -> None:
    """Each table row maps onto its effnet architecture one-to-one (no manifest needed)."""
    for (source, name), peer in PEERS.items():
        if source == "keras":
            continue
        spec = peer.spec()
        mapping = (torchvision_mapping if source == "torchvision" else timm_mapping)(spec)
        sources = [s for s, _ in mapping.values()]
        assert len(sources) == len(set(sources)), name


def _random_source(source: str, peer: str) -> dict[str, torch.Tensor]:
    """A peer-layout state dict with random values, built by inverting the mapping."""
    spec = get_peer(source, peer).spec()
    model = effnet.build(spec)
    for name, buf in model.named_buffers():
        if "running_var" in name:
            buf.uniform_(0.5, 1.5)
        elif "running_mean" in name:
            buf.normal_(0, 0.1)
    mapping = torchvision_mapping(spec) if source == "torchvision" else timm_mapping(spec)
    own = model.state_dict()
    return {src: own[key].clone() for key, (src, _) in mapping.items()}


def test_timm_roundtrip_and_create_model(tmp_path: Path) -> None:
    state = _random_source("timm", "efficientnetv2_b0")
    torch.save(state, tmp_path / "timm.pth")
    out = convert(tmp_path / "timm.pth", tmp_path / "w.safetensors", "timm", "efficientnetv2_b0")
    wf = read_weights(out)
    assert wf.spec.bn_eps == 1e-5 and wf.spec.padding == "symmetric"
    model = effnet.create_model("efficientnetv2_b0", weights=str(out))
    assert torch.equal(model.state_dict()["head.conv.weight"], state["conv_head.weight"])
    # A different number of classes keeps the backbone and replaces the head.
    model10 = effnet.create_model("efficientnetv2_b0", num_classes=10, weights=str(out))
    assert model10.classifier.out_features == 10
    assert torch.equal(model10.state_dict()["stem.conv.weight"], state["conv_stem.weight"])
    with pytest.raises(ValueError, match="differ from 'efficientnetv2_b1'"):
        effnet.create_model("efficientnetv2_b1", weights=str(out))


def test_tf_weights_keep_same_padding_in_create_model(tmp_path: Path) -> None:
    state = _random_source("timm", "tf_efficientnetv2_b0")
    torch.save(state, tmp_path / "tf.pth")
    out = convert(tmp_path / "tf.pth", tmp_path / "w.safetensors", "timm", "tf_efficientnetv2_b0")
    model = effnet.create_model("efficientnetv2_b0", weights=str(out)).eval()
    assert model.spec.padding == "same" and model.spec.bn_eps == 1e-3
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(model(x), load_model(out)(x), atol=1e-5)


def test_wrong_model_name_names_keys_and_layout(tmp_path: Path) -> None:
    state = _random_source("timm", "efficientnetv2_b0")
    with pytest.raises(ValueError, match="look like a timm state dict"):
        convert_state_dict(state, "torchvision", "efficientnet_b0")
    with pytest.raises(ValueError, match=r"expected key\(s\) missing"):
        convert_state_dict(state, "timm", "efficientnetv2_b1")
    with pytest.raises(ValueError, match="did you mean"):
        convert_state_dict(state, "timm", "tf_efficientnetv2_b9")


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


def test_check_state_dict_names_first_mismatch() -> None:
    model = effnet.create_model("efficientnetv2_b0")
    state = model.state_dict()
    state["stem.conv.weight"] = torch.zeros(8, 3, 3, 3)
    with pytest.raises(ValueError, match=r"stem\.conv\.weight: file \(8, 3, 3, 3\)"):
        check_state_dict(model, state)
