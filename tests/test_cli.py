import json

import pytest

from effnet.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_list(capsys):
    code, out, _ = run(capsys, "list")
    assert code == 0
    for name in ("efficientnet_b0", "efficientnet_l2", "efficientnetv2_xl", "efficientnetv2_b3"):
        assert name in out
    assert "5.29M" in out and "0.386G" in out


def test_profile_json(capsys):
    code, out, _ = run(capsys, "profile", "efficientnet_b0", "--json", "--no-latency", "--no-memory")
    d = json.loads(out)
    assert code == 0 and d["model"] == "efficientnet_b0" and d["params"] == 5_288_548
    assert d["resolution"] == 224 and abs(d["flops"] / 1e9 - 0.386) < 0.004
    code, out, _ = run(capsys, "profile", "efficientnetv2_s", "--resolution", "128", "--json", "--runs", "1")
    d = json.loads(out)
    assert d["resolution"] == 128 and d["latency_ms"] > 0 and d["activation_bytes"] > 0


def test_scale_json_and_table(capsys):
    code, out, _ = run(capsys, "scale", "--phi", "1", "2", "--json")
    rows = json.loads(out)
    assert code == 0 and [r["phi"] for r in rows] == [1, 2]
    assert rows[0]["depth"] == pytest.approx(1.2) and rows[0]["width"] == pytest.approx(1.1)
    assert rows[0]["resolution"] == 258 and rows[0]["params"] > 5_288_548 and rows[0]["flops"] > 0
    code, out, _ = run(capsys, "scale", "--phi-range", "0", "1", "0.5", "--alpha", "1.3")
    assert code == 0 and "alpha=1.3" in out and out.count("\n") >= 5


def test_scale_plot(capsys, tmp_path):
    code, _, _ = run(capsys, "scale", "--phi", "0", "1", "--plot", str(tmp_path / "s.png"))
    data = (tmp_path / "s.png").read_bytes()
    assert code == 0 and data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000


def test_table(capsys):
    code, out, _ = run(capsys, "table")
    assert code == 0 and "efficientnet_b7" in out and "efficientnetv2_l" in out and "37.75B" in out


def test_errors_are_messages_not_tracebacks(capsys):
    code, _, err = run(capsys, "profile", "efficientnet_b9", "--json")
    assert code == 1 and "unknown model" in err and "did you mean" in err
    code, _, err = run(capsys, "profile", "efficientnet_b0", "--resolution", "0")
    assert code == 1 and "resolution" in err
    code, _, err = run(capsys, "scale")
    assert code == 1 and "--phi" in err
