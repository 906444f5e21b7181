"""effnet.bench: the harness (interleaving, ratios, memory), the peers' builders and `effnet bench`.

Timings are never asserted (the machine is shared); what is checked is what could be wrong
independently of the load: the order of the samples, the arithmetic of the ratios, what a
memory measurement sees, the peers' networks, and the result's documented fields.
"""

import json
import os
import sys

import pytest
import torch

from effnet.bench import (
    ENTRY_FIELDS,
    MODEL_FIELDS,
    RESULT_FIELDS,
    Unavailable,
    build_runner,
    interleaved,
    peak_memory_bytes,
    ratios,
    reference_of,
    rotation,
    saved_activation_bytes,
    use_keras_torch_backend,
)
from effnet.cli import main

MIB = 2**20
#: B0's trainable parameters in torchvision and timm (docs/paper.md section 3), the independent count
#: every peer's B0 must reach.
B0_PARAMS = 5_288_548


def test_rotation_starts_each_round_one_candidate_later():
    assert rotation(["a", "b", "c"], 4) == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"], ["a", "b", "c"]]
    with pytest.raises(ValueError, match="rounds"):
        rotation(["a"], 0)


def test_interleaved_samples_in_rotating_rounds():
    calls: list[str] = []
    fns = {k: (lambda k=k: calls.append(k)) for k in ("a", "b", "c")}
    times = interleaved(fns, warmup=1, iters=5, rounds=2, device="cpu")
    # one untimed warm-up each, then 5 samples each in 2 rounds (3 + 2), round 2 starting at "b"
    assert calls == ["a", "b", "c"] + ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["b"] * 2 + ["c"] * 2 + ["a"] * 2
    assert {k: len(v) for k, v in times.items()} == {"a": 5, "b": 5, "c": 5}


def _entry(lib, metrics, status="ok", roles=("inference", "training")):
    return {"lib": lib, "status": status, "metrics": metrics, "roles": list(roles)}


def test_ratios_are_effnet_cost_over_peer_cost_by_hand():
    entries = {
        "effnet[plain]": _entry("effnet", {"latency_b1_ms": 30.0}, roles=("inference",)),
        "effnet[fast]": _entry("effnet", {"latency_b1_ms": 20.0, "throughput_b8_ms": 100.0,
                                          "throughput_b8_img_s": 80.0}, roles=("inference",)),
        "effnet[int8]": _entry("effnet", {"latency_b1_ms": 10.0}, roles=("inference",)),
        "effnet[default]": _entry("effnet", {"train_b8_ms": 900.0, "peak_train_b8_mib": 600.0},
                                  roles=("training",)),
        "timm": _entry("timm", {"latency_b1_ms": 25.0, "throughput_b8_ms": 80.0, "throughput_b8_img_s": 100.0,
                                "train_b8_ms": 1200.0, "peak_train_b8_mib": 500.0}),
        "keras": _entry("keras", {"latency_b1_ms": 40.0}),
        "torchvision": _entry("torchvision", {}, status="skipped"),
    }
    ref = reference_of(entries)
    assert ref == {"inference": "effnet[fast]", "training": "effnet[default]"}  # fast beats plain; int8 never
    r = ratios(entries, ref)
    # 20/25, 100/80, 900/1200, 600/500; img/s is not a cost, int8's 10 ms is not the reference
    assert r["timm"] == {"latency_b1_ms": 0.8, "throughput_b8_ms": 1.25, "train_b8_ms": 0.75,
                         "peak_train_b8_mib": 1.2}
    assert r["keras"] == {"latency_b1_ms": 0.5}
    assert "torchvision" not in r and not any(k.startswith("effnet") for k in r)
    # without fast, plain is the inference reference: 30 / 25
    del entries["effnet[fast]"]
    assert ratios(entries, reference_of(entries))["timm"]["latency_b1_ms"] == pytest.approx(1.2)


def test_peak_memory_sees_a_known_allocation():
    def allocate() -> None:
        t = torch.ones(200 * MIB // 4)  # 200 MiB of float32, written so every page is resident
        del t

    assert peak_memory_bytes(allocate) >= 190 * MIB
    assert peak_memory_bytes(lambda: None) < 50 * MIB


def test_saved_activations_of_a_hand_counted_forward():
    w = torch.randn(64, 64, requires_grad=True)
    x = torch.randn(32, 64)  # (B, C)
    # matmul saves x (not counted: treated as a parameter here) and w; sigmoid saves its
    # output (32 x 64 float32 = 8 KiB); w is a parameter, so only the sigmoid's output counts
    assert saved_activation_bytes(lambda: torch.sigmoid(x @ w), [w, x]) == 32 * 64 * 4


def _keras_or_skip(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KERAS_BACKEND", raising=False)  # restored after the test
    use_keras_torch_backend()
    if "keras" in sys.modules and sys.modules["keras"].backend.backend() != "torch":
        pytest.skip("Keras was imported on another backend earlier in this process")
    pytest.importorskip("keras")


def test_keras_peer_gives_logits_in_its_native_layout(monkeypatch):
    _keras_or_skip(monkeypatch)
    r = build_runner("keras", "", "efficientnet_b0", 64)
    assert r.lib_model == "EfficientNetB0" and r.params == B0_PARAMS
    x = torch.randn(2, 3, 64, 64)  # (B, C, H, W)
    assert r.prepare(x).shape == (2, 64, 64, 3)  # NHWC, Keras's native layout
    with torch.no_grad():
        logits = r.forward(r.prepare(x))
    assert logits.shape == (2, 1000)
    assert not torch.allclose(logits.sum(-1), torch.ones(2))  # logits, not softmax probabilities


def test_efficientnet_pytorch_peer_gives_logits_in_its_best_configuration():
    pytest.importorskip("efficientnet_pytorch")
    from efficientnet_pytorch.utils import MemoryEfficientSwish

    r = build_runner("efficientnet_pytorch", "", "efficientnet_b0", 64)
    assert r.lib_model == "efficientnet-b0" and r.params == B0_PARAMS
    assert isinstance(r.module._swish, MemoryEfficientSwish)
    assert r.module._conv_stem.weight.is_contiguous(memory_format=torch.channels_last)
    r.module.eval()
    with torch.no_grad():
        assert r.forward(r.prepare(torch.randn(2, 3, 64, 64))).shape == (2, 1000)
    with pytest.raises(Unavailable, match="V1 only"):
        build_runner("efficientnet_pytorch", "", "efficientnetv2_s", 64)


@pytest.mark.slow
def test_bench_cli_reports_a_missing_peer_and_writes_the_documented_json(tmp_path, monkeypatch, capsys):
    # torchvision made unimportable whatever this Python has: None in sys.modules stops an import
    monkeypatch.setitem(sys.modules, "torchvision", None)
    monkeypatch.setitem(sys.modules, "torchvision.models", None)
    out = tmp_path / "bench.json"
    code = main(["bench", "--models", "tinynet_e", "--resolution", "32", "--train-resolution", "32",
                 "--batch", "2", "--train-batch", "2", "--iters", "2", "--batch-iters", "1", "--train-iters", "1",
                 "--libs", "effnet", "torchvision", "--threads", "1", "--no-progress", "--out", str(out)])
    printed = capsys.readouterr().out
    assert code == 0
    assert "skipped torchvision: torchvision is not importable" in printed
    assert "tinynet_e @ 32 px, inference" in printed and "tinynet_e @ 32 px, training" in printed
    result = json.loads(out.read_text())
    assert tuple(result) == RESULT_FIELDS
    assert result["skipped"][0]["lib"] == "torchvision" and "not importable" in result["skipped"][0]["reason"]
    (rec,) = result["results"]
    assert tuple(rec) == MODEL_FIELDS and rec["model"] == "tinynet_e" and rec["resolution"] == 32
    entries = rec["entries"]
    for e in entries.values():
        assert tuple(e) == ENTRY_FIELDS
    assert entries["torchvision"]["status"] == "skipped" and rec["ratios"] == {}
    plain, default = entries["effnet[plain]"], entries["effnet[default]"]
    assert plain["params"] == default["params"] == 2_042_972  # timm's tinynet_e (test_family)
    assert {"latency_b1_ms", "throughput_b2_ms", "throughput_b2_img_s"} <= set(plain["metrics"])
    assert {"train_b2_ms", "train_b2_img_s", "saved_act_b2_mib", "peak_train_b2_mib"} <= set(default["metrics"])
    assert default["metrics"]["peak_train_b2_mib"] > 0
    # memory-saving (gradient checkpointing), when this effnet has it, saves less for backward
    saving = entries["effnet[memory-saving]"]
    if saving["status"] == "ok":
        assert saving["metrics"]["saved_act_b2_mib"] < default["metrics"]["saved_act_b2_mib"]
    assert result["config"]["threads"] == 1 and result["meta"]["versions"]["torchvision"] == "not installed"
    assert os.path.getsize(out) > 0


def test_bench_refuses_bad_input(capsys):
    assert main(["bench", "--models", "efficientnet_b9", "--no-progress"]) == 1
    assert "efficientnet_b9" in capsys.readouterr().err
    assert main(["bench", "--models", "tinynet_e", "--batch", "0", "--no-progress"]) == 1
    assert "--batch 0: expected a positive number" in capsys.readouterr().err


@pytest.mark.gpu
def test_bench_on_cuda_uses_bf16_autocast_cuda_graphs_and_the_cuda_allocator():
    from effnet.bench import run

    result = run(["tinynet_e"], resolution=64, train_resolution=64, batch=4, train_batch=4, iters=3,
                 batch_iters=1, train_iters=1, libs=["effnet"], device="cuda", progress=False)
    assert result["config"]["autocast"] == "bfloat16" and result["config"]["cuda_graphs"]
    entries = result["results"][0]["entries"]
    plain = entries["effnet[plain]"]
    assert plain["status"] == "ok" and not any("CUDA graph" in n for n in plain["notes"])  # captured
    assert plain["metrics"]["latency_b1_ms"] > 0
    # torch.cuda.max_memory_allocated of one step: at least the activations it saved for backward
    default = entries["effnet[default]"]["metrics"]
    assert default["peak_train_b4_mib"] >= default["saved_act_b4_mib"]


def test_the_reference_is_effnets_fastest_fp32_path():
    entries = {
        "effnet[plain]": _entry("effnet", {"latency_b1_ms": 30.0}, roles=("inference",)),
        "effnet[fast]": _entry("effnet", {"latency_b1_ms": 20.0}, roles=("inference",)),
        "effnet[ort]": _entry("effnet", {"latency_b1_ms": 12.0}, roles=("inference",)),
        "effnet[openvino]": _entry("effnet", {"latency_b1_ms": 15.0}, roles=("inference",)),
        "effnet[ort-int8]": _entry("effnet", {"latency_b1_ms": 5.0}, roles=("inference",)),
        "onnxruntime": _entry("onnxruntime", {"latency_b1_ms": 10.0}, roles=("inference",)),
    }
    ref = reference_of(entries)
    assert ref["inference"] == "effnet[ort]"  # int8 is another precision, never the reference
    assert ratios(entries, ref)["onnxruntime"] == {"latency_b1_ms": pytest.approx(1.2)}  # 12 / 10


@pytest.mark.slow
def test_effnet_runtime_sessions_give_the_plain_logits():
    pytest.importorskip("onnxruntime", reason="onnxruntime (runtime extra) is not installed")
    plain = build_runner("effnet", "plain", "tinynet_e", 64)
    plain.module.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = plain.forward(plain.prepare(x))
    variants = ["ort"] + (["openvino"] if __import__("importlib").util.find_spec("openvino") else [])
    for variant in variants:
        r = build_runner("effnet", variant, "tinynet_e", 64)
        assert r.params == plain.params and r.roles == ("inference",)
        y = r.forward(r.prepare(x))
        assert (y - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item()), variant
    r = build_runner("effnet", "ort-int8", "tinynet_e", 64)
    assert r.module.precision == "int8" and r.forward(r.prepare(x)).shape == (2, 1000)
    if "openvino" in variants:
        r = build_runner("effnet", "openvino-int8", "tinynet_e", 64)
        assert (r.module.runtime, r.module.precision) == ("openvino", "int8") and r.params == plain.params
        assert r.roles == ("inference",) and r.forward(r.prepare(x)).shape == (2, 1000)


@pytest.mark.slow
def test_onnxruntime_runs_a_peers_own_export():
    pytest.importorskip("onnxruntime", reason="onnxruntime (runtime extra) is not installed")
    try:
        r = build_runner("onnxruntime", "", "efficientnet_b0", 64)
    except Unavailable as e:
        pytest.skip(str(e))
    lib, _, lib_model = r.lib_model.partition(":")
    assert r.params == B0_PARAMS and r.roles == ("inference",)
    peer = build_runner(lib, "", "efficientnet_b0", 64)  # the same seed: the same weights
    peer.module.eval()
    if lib == "efficientnet_pytorch":
        peer.module.set_swish(memory_efficient=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        ref = peer.forward(peer.prepare(x))
    assert peer.lib_model == lib_model
    assert (r.forward(x) - ref).abs().max() <= 1e-4 * max(1.0, ref.abs().max().item())


def test_bench_with_only_missing_libraries_fails_with_a_message(monkeypatch, capsys):
    for name in ("torchvision", "torchvision.models", "timm"):
        monkeypatch.setitem(sys.modules, name, None)
    code = main(["bench", "--models", "tinynet_e", "--quick", "--libs", "torchvision", "timm", "--no-progress",
                 "--no-peak"])
    err = capsys.readouterr().err
    assert code == 1 and "nothing was measured" in err and "torchvision is not importable" in err


def test_training_workers_run_in_rotating_rounds_and_a_failed_one_is_noted(monkeypatch):
    # The parent's side of the CPU training timing: one worker per candidate per round, the order
    # rotating as in-process interleaving rotates it, train_iters steps split over the rounds, the
    # peak the median of the workers' first-step peaks; a failing worker leaves a note and no figure.
    from effnet.bench import worker
    from effnet.bench.runner import make_config

    calls = []

    def fake(lib, variant, name, cfg, *, steps, warmup, compile):
        assert not compile
        calls.append((lib, steps))
        if lib == "timm":
            raise RuntimeError("training worker for timm x failed: boom")
        return {"peak_bytes": {"effnet": 10, "torchvision": 30}[lib] * MIB * len(calls), "times": [0.5] * steps,
                "kernel": [0.1] * steps, "faults": [7] * steps,
                "steady_peak_bytes": {"effnet": 20, "torchvision": 60}[lib] * MIB * len(calls)}

    monkeypatch.setattr(worker, "run_worker", fake)
    cfg = make_config(["tinynet_e"], libs=["effnet"], train_iters=5, rounds=2, progress=False)
    entries = {lb: {"lib": lb, "variant": "", "notes": [], "metrics": {}} for lb in ("effnet", "timm", "torchvision")}
    times, kernel = worker.train_in_workers("tinynet_e", cfg, list(entries), entries,
                                            __import__("tqdm").tqdm(disable=True))
    # round 1: effnet, timm (fails, never again), torchvision with 3 steps; round 2 starts one later
    assert calls == [("effnet", 3), ("timm", 3), ("torchvision", 3), ("torchvision", 2), ("effnet", 2)]
    assert times == {"effnet": [0.5] * 5, "torchvision": [0.5] * 5}
    assert kernel == {"effnet": [0.1] * 5, "torchvision": [0.1] * 5}
    assert entries["effnet"]["metrics"]["peak_train_b32_mib"] == (10 * 1 + 10 * 5) / 2  # median of 10 and 50
    assert entries["torchvision"]["metrics"]["peak_train_b32_mib"] == (30 * 3 + 30 * 4) / 2
    assert entries["effnet"]["metrics"]["peak_train_b32_steady_mib"] == (20 * 1 + 20 * 5) / 2
    assert "timm" not in times and "failed: boom" in entries["timm"]["notes"][0]
    assert not entries["timm"]["metrics"]


def test_a_worker_times_its_steps_after_the_measured_first_one():
    from effnet.bench.worker import measure

    job = {"lib": "effnet", "variant": "default", "model": "tinynet_e", "resolution": 32, "batch": 2, "device": "cpu",
           "threads": 1, "flush_denormal": True, "autocast": None, "steps": 3, "warmup": 1}
    out = measure(job)
    assert len(out["times"]) == 3 and all(t > 0 for t in out["times"])
    assert out["peak_bytes"] > 0
    if sys.platform.startswith("linux"):
        # The peak over all steps starts from the same resident size as the first step's and
        # its high-water mark is not reset in between, so it is at least the first step's.
        assert out["steady_peak_bytes"] >= out["peak_bytes"]
        assert len(out["kernel"]) == len(out["faults"]) == 3
        assert all(k >= 0 for k in out["kernel"]) and all(f >= 0 for f in out["faults"])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="getrusage's counters as Linux keeps them")
def test_the_workers_cpu_counters_see_the_pages_a_step_faults_in():
    # 64 MiB of fresh memory (above glibc's largest mmap threshold, so new pages), every byte
    # written: the kernel faults in at least one page per 2 MiB (huge pages; 4 KiB pages give 512
    # times more). What is measured must be this process's minor faults, not major ones or time.
    import numpy as np

    from effnet.bench.worker import _cpu_counters

    before = _cpu_counters()
    block = np.ones(64 << 20, dtype=np.uint8)
    after = _cpu_counters()
    assert block[-1] == 1
    assert after[1] - before[1] >= 32
    assert after[0] >= before[0]


def test_compile_wraps_torch_networks_only_and_a_failed_compilation_is_reported(monkeypatch):
    # --compile on the CPU: runtime sessions and ONNX Runtime are no torch networks (torch.compile
    # of a session once killed the whole run inside dynamo); effnet[fast] is compiled as its
    # optimised network, not as the TorchScript trace; a network whose compilation fails is
    # reported as failed and the others are still timed.
    from effnet.bench import runner as run
    from effnet.bench.peers import Runner
    from effnet.deploy.optimize import TracedInference

    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten())
    traced = TracedInference(net, torch.randn(1, 3, 32, 32))

    def fake_build(lib, variant, name, res, device):
        if lib == "effnet" and variant not in ("plain", "fast", "ort"):
            raise Unavailable("not in this test")
        module = {"plain": net, "fast": traced}.get(variant, net)
        compilable = not (lib == "onnxruntime" or variant == "ort")
        return Runner(lib, variant, name, module, ("inference",), n_params=1, compilable=compilable)

    compiled = []

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("inductor: boom")

    def fake_compile(module, **options):
        assert options == {"dynamic": False}  # one static compilation per batch size
        compiled.append(module)
        return Broken() if len(compiled) == 3 else module  # the third one (timm's network) fails

    monkeypatch.setattr(run, "build_runner", fake_build)
    monkeypatch.setattr(torch, "compile", fake_compile)
    cfg = run.make_config(["tinynet_e"], resolution=32, libs=["effnet", "timm", "onnxruntime"], compile=True,
                          iters=1, batch_iters=1, rounds=1, batch=2, train=False, progress=False)
    entries: dict = {}
    run._inference("tinynet_e", 32, cfg, entries, __import__("tqdm").tqdm(disable=True))
    # plain's network, fast's network under the trace, timm's network: nothing else
    assert [m is net for m in compiled] == [True, True, True]
    assert {lb for lb in entries if lb.endswith("+compile")} == {"effnet[plain]+compile", "effnet[fast]+compile",
                                                                  "timm+compile"}
    assert entries["timm+compile"]["status"] == "failed" and "boom" in entries["timm+compile"]["reason"]
    assert "latency_b1_ms" not in entries["timm+compile"]["metrics"]
    for label in ("effnet[plain]+compile", "effnet[fast]+compile", "timm", "effnet[ort]"):
        assert entries[label]["status"] == "ok" and "throughput_b2_ms" in entries[label]["metrics"], label
    assert any(n.startswith("throughput_b2: first call (compilation)") for n in entries["effnet[fast]+compile"]["notes"])
    run._build_all("tinynet_e", 32, "inference", cfg, entries)  # the training phase builds its labels again
    assert "throughput_b2_ms" in entries["effnet[plain]+compile"]["metrics"]  # ... and keeps these figures


def test_a_compiled_candidate_is_compiled_in_its_worker_before_anything_is_measured(monkeypatch):
    # --compile times training in fresh workers too: the worker compiles the network and makes
    # the compiling step before the peak and the timed steps, and the parent asks for it by label.
    from effnet.bench import worker
    from effnet.bench.runner import make_config
    from effnet.model import ConvNet

    calls, seen_by_peak = [], []

    class Counting(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            calls.append(1)
            return self.net(x)

    compiled_nets, trimmed = [], []
    monkeypatch.setattr(torch, "compile", lambda net, **options: compiled_nets.append(net) or Counting(net))
    monkeypatch.setattr(worker, "return_freed_memory", lambda: trimmed.append(len(calls)))
    optimisers = []

    class Recorded(torch.optim.SGD):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            optimisers.append(self)

    monkeypatch.setattr(torch.optim, "SGD", Recorded)
    real_peak = worker.peak_memory_bytes

    def peak(fn, device):
        # the real optimiser (made first) has no state yet: the measured step creates it, as eager
        seen_by_peak.append((len(calls), len(optimisers[0].state)))
        return real_peak(fn, device)

    monkeypatch.setattr(worker, "peak_memory_bytes", peak)
    job = {"lib": "effnet", "variant": "default", "model": "tinynet_e", "resolution": 32, "batch": 2, "device": "cpu",
           "threads": 1, "flush_denormal": True, "autocast": None, "steps": 2, "warmup": 1, "compile": True}
    out = worker.measure(job)
    assert len(compiled_nets) == 1 and isinstance(compiled_nets[0], ConvNet)
    assert trimmed == [1] and seen_by_peak == [(1, 0)]  # the compiling step, its freed pages returned, then the peak
    assert len(calls) == 5 and len(out["times"]) == 2  # compile, peak, warm-up, 2 timed
    # An eager candidate: no extra step before the measured first one, no trim.
    real_build = worker.build_runner

    def counting_build(*args):
        runner = real_build(*args)
        runner.module = Counting(runner.module)
        return runner

    monkeypatch.setattr(worker, "build_runner", counting_build)
    calls.clear(), seen_by_peak.clear(), trimmed.clear(), optimisers.clear()
    worker.measure({**job, "compile": False})
    assert seen_by_peak == [(0, 0)] and not trimmed and len(calls) == 4 and len(compiled_nets) == 1

    asked = []
    monkeypatch.setattr(worker, "run_worker", lambda lib, variant, name, cfg, *, steps, warmup, compile: asked.append(
        (lib, compile)) or {"peak_bytes": MIB, "times": [0.1] * steps, "kernel": [], "faults": []})
    cfg = make_config(["tinynet_e"], libs=["effnet", "timm"], compile=True, train_iters=1, rounds=1, progress=False)
    assert cfg.train_in_workers
    entries = {lb: {"lib": lib, "variant": "", "notes": [], "metrics": {}}
               for lb, lib in (("effnet", "effnet"), ("timm+compile", "timm"))}
    worker.train_in_workers("tinynet_e", cfg, list(entries), entries, __import__("tqdm").tqdm(disable=True))
    assert asked == [("effnet", False), ("timm", True)]


def test_compiled_candidates_across_the_two_phases(monkeypatch):
    # A network whose compilation failed at inference is not compiled again for training; the
    # others go to the training workers by their "+compile" label and are not run in this process
    # (the workers compile their own); their inference figures survive the training phase.
    from effnet.bench import runner as run
    from effnet.bench.peers import Runner

    def fake_build(lib, variant, name, res, device):
        if lib == "effnet" and variant not in ("plain", "default"):
            raise Unavailable("not in this test")
        net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                  torch.nn.Linear(4, 1000))
        roles = {"plain": ("inference",), "default": ("training",)}.get(variant, ("inference", "training"))
        return Runner(lib, variant, name, net, roles, n_params=1)

    class Broken(torch.nn.Module):
        def forward(self, x):
            raise RuntimeError("inductor: boom")

    in_training = []

    class Watched(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            if torch.is_grad_enabled():
                in_training.append(1)
            return self.net(x)

    def fake_compile(module, **options):
        return Broken() if module[-1].out_features == 1000 and fake_compile.timm_next else Watched(module)

    fake_compile.timm_next = False
    real_fake_build = fake_build

    def build(lib, variant, name, res, device):
        fake_compile.timm_next = lib == "timm"
        return real_fake_build(lib, variant, name, res, device)

    asked = []

    def fake_workers(name, cfg, labels, entries, bar):
        asked.extend(labels)
        return {lb: [0.1] for lb in labels}, {}

    monkeypatch.setattr(run, "build_runner", build)
    monkeypatch.setattr(torch, "compile", fake_compile)
    monkeypatch.setattr(run, "train_in_workers", fake_workers)
    cfg = run.make_config(["tinynet_e"], resolution=32, libs=["effnet", "timm"], compile=True, iters=1,
                          batch_iters=1, rounds=1, batch=2, train_batch=2, train_resolution=32, train_iters=1,
                          progress=False)
    entries: dict = {}
    run._inference("tinynet_e", 32, cfg, entries, __import__("tqdm").tqdm(disable=True))
    assert entries["timm+compile"]["status"] == "failed"
    run._training("tinynet_e", cfg, entries, __import__("tqdm").tqdm(disable=True))
    assert sorted(asked) == ["effnet[default]", "effnet[default]+compile", "timm"]
    assert not in_training  # no compiled network trained here
    assert "latency_b1_ms" in entries["effnet[plain]+compile"]["metrics"]
    assert "train_b2_ms" in entries["effnet[default]+compile"]["metrics"]
    assert "saved_act_b2_mib" not in entries["effnet[default]+compile"]["metrics"]


def test_the_table_names_the_compiled_reference_and_puts_each_note_under_its_phase():
    from effnet.bench.report import ratios, table

    def entry(lib, metrics, notes=()):
        return {**_entry(lib, metrics, roles=("inference", "training")), "notes": list(notes)}

    entries = {
        "effnet[default]": entry("effnet", {"train_b2_ms": 10.0}),
        "effnet[default]+compile": entry("effnet", {"train_b2_ms": 30.0}),
        "timm": entry("timm", {"train_b2_ms": 20.0}),
        "timm+compile": entry("timm", {"train_b2_ms": 15.0, "latency_b1_ms": 1.0},
                              notes=["latency_b1: first call (compilation) 3 s", "train_b2: first call (compilation) 9 s"]),
    }
    ref = {"inference": None, "training": "effnet[default]"}
    rec = {"model": "tinynet_e", "resolution": 32, "train_resolution": 32, "entries": entries, "reference": ref,
           "ratios": ratios(entries, ref)}
    text = table({"skipped": [], "config": {"train": True}, "results": [rec]})
    inference, training = text.split("\n\n")
    assert "effnet[default]+compile/timm+compile" in training and "effnet[default]/timm " in training + " "
    assert "2.000" in training  # 30 / 15: compiled against compiled
    assert "latency_b1: first call" in inference and "train_b2: first call" not in inference
    assert "train_b2: first call" in training and "latency_b1: first call" not in training


def test_the_table_marks_a_compiled_peers_ratio_taken_against_the_eager_reference():
    # effnet's compiled reference did not measure peak memory: timm+compile's peak is compared with
    # the eager reference (400 / 800 = 0.5), and the column headed by the compiled reference says so.
    from effnet.bench.report import ratios, table

    def entry(lib, metrics):
        return {**_entry(lib, metrics, roles=("training",)), "notes": []}

    entries = {
        "effnet[default]": entry("effnet", {"train_b2_ms": 10.0, "peak_b2_mib": 400.0}),
        "effnet[default]+compile": entry("effnet", {"train_b2_ms": 30.0}),
        "timm+compile": entry("timm", {"train_b2_ms": 15.0, "peak_b2_mib": 800.0}),
    }
    ref = {"inference": None, "training": "effnet[default]"}
    rec = {"model": "tinynet_e", "resolution": 32, "train_resolution": 32, "entries": entries, "reference": ref,
           "ratios": ratios(entries, ref)}
    assert rec["ratios"]["timm+compile"] == {"train_b2_ms": 2.0, "peak_b2_mib": 0.5}
    text = table({"skipped": [], "config": {"train": True}, "results": [rec]})
    training = text.split("\n\n")[1]
    peak = next(line for line in training.splitlines() if line.startswith("peak_b2_mib"))
    step = next(line for line in training.splitlines() if line.startswith("train_b2_ms"))
    assert peak.endswith("0.500*") and step.endswith("2.000")
    assert "* against effnet[default]: effnet[default]+compile did not measure this metric" in training
