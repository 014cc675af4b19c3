"""Ray Data inside Ray Train on a small machine: a TorchTrainer with 2 one-CPU workers on ray.init(num_cpus=4)
consumes ``train_dataset`` through ``get_dataset_shard`` for two epochs and finishes (no CPU-reservation deadlock);
the workers see equal, disjoint shares of the rows with the fixed shapes the trainer expects."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dad_ray import runtime
from dad_ray.config.schema import DataConfig, SyntheticConfig
from dad_ray.data import ensure_synthetic, ingest_options, train_dataset

ray = pytest.importorskip("ray")

SAMPLES = 16


@pytest.fixture(scope="module", autouse=True)
def ray_local():
    with runtime.ray_session(4, dashboard=False, log_to_driver=False):
        yield


def test_torch_trainer_two_workers_consume_the_pipeline(tmp_path):
    from ray.train import DataConfig as TrainDataConfig
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from dad_ray.config.core import to_dict

    # Defined here so cloudpickle ships it by value: Ray workers cannot import this test module.
    def _worker(config: dict) -> None:
        import ray.train

        from dad_ray.config.core import from_dict
        from dad_ray.data import train_batches

        cfg = from_dict(DataConfig, config["data"])
        rank = ray.train.get_context().get_world_rank()
        shard = ray.train.get_dataset_shard("train")
        epochs = []
        for epoch in range(2):
            seen, sums, shapes = [], [], set()
            for batch in train_batches(shard, cfg, epoch, seed=0):
                seen += batch["index"].tolist()
                sums += batch["crop_depth"].sum(dim=(1, 2)).tolist()
                shapes.add((tuple(batch["crop_image"].shape), tuple(batch["local_images"].shape)))
            epochs.append({"indices": seen, "sums": sums, "shapes": [list(map(list, s)) for s in shapes]})
        Path(config["out"], f"rank{rank}.json").write_text(json.dumps(epochs))
        ray.train.report({"done": 1})

    cfg = DataConfig(
        root=str(tmp_path / "data"),
        batch_size=2,
        crop_size=28,
        min_crop=24,
        global_size=(28, 42),
        local_patch_size=14,
        shuffle_buffer=4,
        data_cpus=0.5,
        prefetch_batches=1,
        synthetic=SyntheticConfig(train_samples=SAMPLES, val_samples=2, height=32, width=48, seed=0),
    )
    ensure_synthetic(cfg.root, cfg.synthetic, splits=("train", "test"), progress=False, shard_bytes=20_000)
    trainer = TorchTrainer(
        _worker,
        train_loop_config={"data": to_dict(cfg), "out": str(tmp_path)},
        scaling_config=ScalingConfig(num_workers=2, use_gpu=False, resources_per_worker={"CPU": 1}),
        datasets={"train": train_dataset(cfg, seed=0)},
        dataset_config=TrainDataConfig(datasets_to_split=["train"], execution_options=ingest_options(cfg)),
        run_config=RunConfig(name="data_ingest", storage_path=str(tmp_path / "runs")),
    )
    result = trainer.fit()
    assert result.error is None
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    for epoch in range(2):
        a, b = ranks[0][epoch]["indices"], ranks[1][epoch]["indices"]
        assert len(a) == len(b) == SAMPLES // 2  # equal split: every rank runs the same number of steps
        assert sorted(a + b) == list(range(SAMPLES))  # disjoint, complete
        for rank in ranks:
            assert rank[epoch]["shapes"] == [[[2, 3, 28, 28], [2, 4, 3, 14, 14]]]
    by_index = [
        {i: s for rank in ranks for i, s in zip(rank[epoch]["indices"], rank[epoch]["sums"])} for epoch in range(2)
    ]
    changed = sum(abs(by_index[0][i] - by_index[1][i]) > 1e-3 for i in range(SAMPLES))
    assert changed >= SAMPLES // 2  # each epoch draws new augmentations (the execution index reaches the tasks)
