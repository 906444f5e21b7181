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
    # Counts only by default: latency and activation memory are measured when asked.
    code, out, _ = run(capsys, "profile", "efficientnetv2_s", "--resolution", "128", "--json")
    d = json.loads(out)
    assert d["latency_ms"] is None and d["activation_bytes"] is None
    code, out, _ = run(capsys, "profile", "efficientnetv2_s", "--resolution", "128", "--json", "--runs", "1",
                       "--latency", "--memory")
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


def test_scale_by_another_strategy(capsys):
    # fast (Dollar et al. 2021), alpha 0.8, s = 2: d = 2^0.1 = 1.072, w = 2^0.4 = 1.320,
    # 224 * 2^0.05 = 231.9 -> 232 px; FLOPs about 2x (measured 2.03x on B0).
    code, out, _ = run(capsys, "scale", "--strategy", "fast", "--phi", "1")
    assert code == 0 and "fast scaling of efficientnet_b0" in out and "alpha=0.8" in out
    (row,) = [line.split() for line in out.splitlines() if line.startswith("1 ")]
    assert row[:4] == ["1", "1.072", "1.320", "232"] and row[-1] == "2.00x"
    code, out, _ = run(capsys, "scale", "--strategy", "fast", "--phi", "1", "--json")
    (r,) = json.loads(out)
    assert code == 0 and r["strategy"] == "fast" and r["resolution"] == 232
    assert r["width"] == pytest.approx(2**0.4) and r["depth"] == pytest.approx(2**0.1)
    assert r["flops_ratio"] == pytest.approx(2.0, rel=0.1) and r["flops_ratio_predicted"] == pytest.approx(2.0)
    code, out, _ = run(capsys, "scale", "--strategy", "fast", "--fast-alpha", "1", "--phi", "1", "--json")
    assert json.loads(out)[0]["width"] == pytest.approx(2**0.5)  # alpha = 1 is width scaling
    code, out, _ = run(capsys, "scale", "--strategy", "tiny", "--phi", "-1", "--json")
    assert json.loads(out)[0]["resolution"] == 224 and json.loads(out)[0]["width"] == pytest.approx(2**-0.5)


def test_scale_strategy_errors_name_what_is_valid(capsys):
    code, _, err = run(capsys, "scale", "--strategy", "nope", "--phi", "1")
    assert code == 1 and "unknown scaling strategy 'nope'" in err
    for name in ("width", "depth", "resolution", "compound", "v2", "fast", "tiny"):
        assert name in err
    code, _, err = run(capsys, "scale", "--strategy", "fast", "--alpha", "1.3", "--phi", "1")
    assert code == 1 and "--alpha" in err and "--fast-alpha" in err
    code, _, err = run(capsys, "scale", "--strategy", "tiny", "--phi", "1")
    assert code == 1 and "only shrinks" in err and "Choose phi between" in err


@pytest.mark.slow  # measures every grid point's FLOPs; the measured grid is tested in test_scaling_grid
def test_scale_grid(capsys):
    # step 0.1, tolerance 0.1: a small grid, quick to measure (the B0 default is in test_scaling_grid)
    code, out, _ = run(capsys, "scale", "grid", "--step", "0.1", "--tolerance", "0.1", "--json")
    d = json.loads(out)
    assert code == 0 and d["base"] == "efficientnet_b0" and d["phi"] == 1 and d["grid_points"] > 0
    assert sum(1 + len(c["collapsed"]) for c in d["candidates"]) == d["grid_points"]
    (paper,) = [c for c in d["candidates"] if (c["alpha"], c["beta"], c["gamma"]) == (1.2, 1.1, 1.2)]
    assert paper["flops_ratio_predicted"] == pytest.approx(1.2 * 1.1**2 * 1.2**2)  # 2.0909
    assert paper["flops_ratio"] > 0 and paper["resolution"] == 269  # 224 * 1.2 = 268.8
    code, out, _ = run(capsys, "scale", "--base", "efficientnet_b0", "grid", "--step", "0.1", "--tolerance", "0.1")
    assert code == 0 and "distinct network(s)" in out and "measured" in out and "1.2 " in out


def test_scale_grid_errors(capsys):
    code, _, err = run(capsys, "scale", "grid", "--tolerance", "-1")
    assert code == 1 and err.startswith("effnet scale grid: error:") and "tolerance" in err
    code, _, err = run(capsys, "scale", "grid", "--step", "0")
    assert code == 1 and "step must be a positive number" in err
    code, _, err = run(capsys, "scale", "grid", "--phi", "0")
    assert code == 1 and "phi must be > 0" in err
    code, _, err = run(capsys, "scale", "grid", "--step", "0.7", "--tolerance", "0.05")
    assert code == 1 and "loosen" in err
    code, _, err = run(capsys, "scale", "--strategy", "fast", "grid")
    assert code == 1 and "--strategy" in err and "after 'grid'" in err
    with pytest.raises(SystemExit) as e:
        main(["scale", "grid", "--step", "abc"])
    assert e.value.code == 2 and "effnet scale grid: error: argument --step" in capsys.readouterr().err


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


def test_a_closed_pipe_ends_quietly(tmp_path):
    """`effnet list | head -1`: the reader closes the pipe; effnet stops with 141 and no traceback."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "effnet", "list"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.readline()
    proc.stdout.close()  # before effnet has written the rest: its next write or flush hits a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) in (0, 141), err
    assert "Traceback" not in err and "BrokenPipeError" not in err, err


def test_the_command_table_names_what_each_module_registers():
    """effnet.cli.COMMANDS lets `effnet CMD` load one module; it must agree with the parsers."""
    import argparse

    from effnet.cli import COMMANDS, build_parser

    def registered(parser: argparse.ArgumentParser) -> list[str]:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        return list(sub.choices)

    assert registered(build_parser()) == list(COMMANDS)
    for command, module in COMMANDS.items():
        alone = registered(build_parser(command))
        assert command in alone, f"{module} does not register {command!r}"
        assert all(COMMANDS[c] == module for c in alone)


def test_a_named_command_loads_only_its_own_module():
    import subprocess
    import sys

    code = ("import sys; from effnet.cli import COMMAND_MODULES, build_parser; build_parser('train'); "
            "print(sorted(m for m in sys.modules if m in COMMAND_MODULES))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['effnet.commands.train']"  # not profile, scale, search, deploy, viz, bench ...


def test_every_option_of_every_command_has_help():
    """Twenty options once had no help text (eval/predict --weights, --topk, --device ...)."""
    import argparse

    from effnet.cli import build_parser

    def missing(parser: argparse.ArgumentParser, path: list[str]) -> list[str]:
        out = []
        for a in parser._actions:
            if isinstance(a, argparse._SubParsersAction):
                for name, sub in a.choices.items():
                    out += missing(sub, [*path, name])
            elif a.option_strings and not isinstance(a, argparse._HelpAction) and not a.help:
                out.append(f"effnet {' '.join(path)} {a.option_strings[0]}")
        return out

    assert missing(build_parser(), []) == []
