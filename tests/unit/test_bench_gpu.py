"""``jobs/benchmark.py gpu`` (issue 16): its CPU dry run where Ray and the other packages the GPU machines lack are
not importable, its peak table and MFU arithmetic, and ``--json`` on every benchmark."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dad_ray.bench.gpu import PHASES, mfu, peak_bf16_tflops

REPO = Path(__file__).resolve().parents[2]

# What the lent GPU machines lack (they have torch, timm, safetensors, numpy, pyarrow, tensorboard, transformers,
# onnxruntime): importing any of these on the benchmark's path fails the test.
ABSENT = ("ray", "matplotlib", "scipy", "h5py", "pandas", "tensorboardX", "onnx", "onnxscript")

# None in sys.modules: ``import ray`` (and ``import ray.train``) raises ImportError, and importlib.util.find_spec
# answers None, exactly as for a package that is not installed (torch probes optional packages with find_spec).
BLOCKED_RUN = """
import runpy, sys
for name in sys.argv[1].split(","):
    sys.modules[name] = None
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def _module_level_imports(path: Path) -> set[str]:
    """Modules a file imports when it is imported (top-level statements, not inside functions)."""
    found = set()
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
    return found


def _file_of(module: str) -> Path | None:
    base = REPO / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def test_gpu_benchmark_import_graph_reaches_no_absent_package():
    """Static and quick (the slow dry run below is the dynamic proof): every dad_ray module that importing the
    benchmark imports, with its packages' __init__, imports none of the packages the GPU machines lack."""
    todo, seen, offenders = ["jobs.benchmark", "dad_ray.bench.gpu"], set(), []
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for i in range(1, len(parts) + 1):  # the module and every package above it
            name = ".".join(parts[:i])
            path = _file_of(name)
            if name in seen or path is None:
                continue
            seen.add(name)
            for imported in _module_level_imports(path):
                if imported.split(".")[0] in ABSENT:
                    offenders.append(f"{name} imports {imported}")
                elif imported.startswith("dad_ray"):
                    todo.append(imported)
    assert "dad_ray.train.step" in seen and "dad_ray.train.task" in seen
    assert offenders == []


def test_the_blocking_harness_makes_an_absent_package_fail_to_import(tmp_path):
    script = tmp_path / "uses_ray.py"
    script.write_text("import ray.train\n")
    proc = subprocess.run([sys.executable, "-c", BLOCKED_RUN, "ray", str(script)], capture_output=True, text=True)
    assert proc.returncode != 0 and "ModuleNotFoundError" in proc.stderr and "ray" in proc.stderr


@pytest.mark.slow  # a subprocess importing torch and timm, then the whole tiny benchmark (~5-8 s on 2 cores)
def test_gpu_benchmark_dry_run_imports_no_ray_and_writes_every_figure(tmp_path):
    out = tmp_path / "gpu.json"
    cmd = [sys.executable, "-c", BLOCKED_RUN, ",".join(ABSENT), str(REPO / "jobs" / "benchmark.py"), "gpu"]
    cmd += ["--device", "cpu", "--tiny", "--json", str(out)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 0, proc.stderr[-4000:]
    report = json.loads(out.read_text())
    assert report["device_name"] == "cpu" and report["peak_bf16_tflops"] is None
    (pair,) = report["pairs"]
    assert (pair["teacher"], pair["student"], pair["batch"], pair["crop"]) == ("dav2_tiny", "dav2_micro", 2, 56)
    assert pair["images_per_s"] > 0 and pair["step_ms"] > 0
    assert set(pair["split_ms"]) == {*PHASES, "host_overhead"}
    assert all(pair["split_ms"][k] > 0 for k in ("teacher", "student_forward", "losses", "backward", "optimizer"))
    flops = pair["flops"]
    assert 0 < flops["teacher_tflop"] < flops["step_tflop"]
    assert flops["student_tflop"] == pytest.approx(flops["step_tflop"] - flops["teacher_tflop"])
    assert pair["mfu"] == {"step": None, "student_fwd_bwd": None}  # no peak for a CPU
    assert pair["fused_attention"] and not pair["fused_adamw"] and pair["teacher_dtype"] == "torch.float32"
    assert pair["auto_batch"]["largest"] == 4 == pair["auto_batch"]["limit"]  # nothing runs out of memory on CPU
    assert (pair["auto_batch"]["micro_batch"], pair["auto_batch"]["grad_accum"]) == (2, 4)  # 8 = 2 x 4 (85 % of 4)
    assert 0 < pair["loss_share"] and pair["memory_estimate"]["total_gib"] > 0
    assert report["l_dis"]["vectorised_ms"] > 0 and report["l_dis"]["loop_ms"] > 0
    assert "dav2_tiny → dav2_micro" in proc.stdout and "MFU step" in proc.stdout  # the Markdown report


@pytest.mark.parametrize(
    ("name", "tflops"),
    [
        ("NVIDIA H100 80GB HBM3", 989.4),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.4),
        ("NVIDIA GH200 480GB", 989.4),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA A10G", None),
        ("Tesla V100-SXM2-16GB", None),
    ],
)
def test_peak_bf16_by_device_name(name, tflops):
    assert peak_bf16_tflops(name) == tflops


def test_mfu_is_counted_flops_over_time_over_peak():
    result = {"step_ms": 100.0, "split_ms": {"student_forward": 20.0, "backward": 30.0}}
    flops = {"step_tflop": 50.0, "student_tflop": 20.0}
    # 50 TFLOP in 0.1 s = 500 TFLOP/s of a 1000 peak; 20 TFLOP in 0.05 s = 400 TFLOP/s
    assert mfu(result, flops, 1000.0) == {"step": 0.5, "student_fwd_bwd": 0.4}
    assert mfu(result, flops, None) == {"step": None, "student_fwd_bwd": None}


def _cli_benchmarks() -> tuple[str, ...]:
    """The subcommands ``jobs/benchmark.py`` offers (its BENCHMARKS tuple, read without importing the job)."""
    tree = ast.parse((REPO / "jobs" / "benchmark.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "BENCHMARKS" for t in node.targets):
            return ast.literal_eval(node.value)
    raise AssertionError("jobs/benchmark.py has no BENCHMARKS tuple")


@pytest.mark.parametrize("name", _cli_benchmarks())
def test_every_benchmark_takes_json(name, capsys):
    from jobs.benchmark import main

    with pytest.raises(SystemExit) as exit_:
        main([name, "--help"])  # the benchmark's own help, not the dispatcher's
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--json" in out and "{losses," not in out


@pytest.mark.parametrize("name", ["data", "train", "students"])
def test_benchmarks_with_a_config_print_it_and_run_nothing(name, capsys, monkeypatch):
    from jobs.benchmark import main

    monkeypatch.setattr("dad_ray.runtime.ray_session", None)  # starting Ray would fail loudly
    assert main([name, "--print-config", "--set", "train.seed=7"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["train"]["seed"] == 7


def test_losses_benchmark_writes_its_figures(tmp_path):
    from dad_ray.bench.losses import main

    out = tmp_path / "sub" / "losses.json"
    report = main(["--batch", "1", "--size", "28", "--repeats", "1", "--threads", "1", "--json", str(out)])
    figures = json.loads(out.read_text())
    assert (figures["batch"], figures["size"], figures["normalization"]) == (1, 28, "hybrid")
    assert figures["ratio_median"] == pytest.approx(figures["loop_median_s"] / figures["vectorised_median_s"])
    assert f"{1e3 * figures['vectorised_median_s']:.1f}" in report
