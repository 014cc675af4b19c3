"""Per-trial start-up (issue 16): the processes of a Tune trial that never build a model — the trial actor, which
builds the ``TorchTrainer``, and the Ray Train controller, which unpickles its train function and dataset factory —
import neither timm nor torchvision (torchvision imports ``torch._dynamo``: ~1.5 s of every such process's start on
2 cores, measured in ``.notes/issue-16-cpu.md``). The Train workers import them when they run the loop."""

from __future__ import annotations

import json
import subprocess
import sys

import ray.cloudpickle

from dad_ray.config import DataConfig
from dad_ray.train.trainer import ResumedTrainData, train_loop_per_worker

MODEL_LIBRARIES = ("timm", "torchvision", "torch._dynamo")


def _loaded_after(code: str) -> list[str]:
    """The model libraries a fresh interpreter has loaded after running ``code``."""
    probe = f"{code}\nimport json, sys\nprint(json.dumps([m for m in {MODEL_LIBRARIES!r} if m in sys.modules]))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# What the trial actor imports, what the controller unpickles, and checkpoint I/O and the losses on their own.
TRIAL_SIDE = (
    "import dad_ray.tune.driver, dad_ray.train.trainer, dad_ray.train.checkpoint, dad_ray.tune.analysis\n"
    "from dad_ray.models import load_weights, save_weights, WeightsError\n"
    "from dad_ray.losses import disparity_target, distill_losses\n"
)


def test_the_trial_actor_and_the_controller_import_no_model_library(tmp_path):
    payload = tmp_path / "controller.pkl"  # what the controller gets: the train function and the dataset factory
    payload.write_bytes(
        ray.cloudpickle.dumps((train_loop_per_worker, ResumedTrainData(DataConfig(), 0, str(tmp_path / "ckpt"))))
    )
    code = f"{TRIAL_SIDE}import pickle\nfn, data = pickle.loads(open({str(payload)!r}, 'rb').read())"
    assert _loaded_after(code) == []


def test_the_probe_sees_a_loaded_library():
    assert _loaded_after("import sys\nsys.modules['timm'] = sys") == ["timm"]
