"""HParams summaries read back with TensorBoard's own event reader."""

from __future__ import annotations

import pytest

pytest.importorskip("tensorboard")


def read_hparams(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from tensorboard.plugins.hparams import plugin_data_pb2

    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    content = acc.PluginTagToContent("hparams")
    out = {}
    for tag, raw in content.items():
        data = plugin_data_pb2.HParamsPluginData.FromString(raw)
        out[tag] = data
    return acc, out


def test_write_hparams_round_trip(tmp_path):
    from dad_ray.tune.hparams import write_hparams

    write_hparams(
        tmp_path,
        {"loss.lambda_lg": 0.25, "loss.normalization": "hybrid", "data.crop_size": 56},
        {"hparams/best_val_abs_rel": 0.123, "hparams/steps": 12.0},
        step=12,
        status="completed",
    )
    acc, plugin = read_hparams(tmp_path)
    assert {"_hparams_/experiment", "_hparams_/session_start_info", "_hparams_/session_end_info"} <= set(plugin)
    start = plugin["_hparams_/session_start_info"].session_start_info
    assert start.hparams["loss.lambda_lg"].number_value == pytest.approx(0.25)
    assert start.hparams["loss.normalization"].string_value == "hybrid"
    assert start.hparams["data.crop_size"].number_value == 56
    assert start.hparams["status"].string_value == "completed"
    experiment = plugin["_hparams_/experiment"].experiment
    assert {m.name.tag for m in experiment.metric_infos} == {"hparams/best_val_abs_rel", "hparams/steps"}
    scalars = acc.Tags()["scalars"]
    assert "hparams/best_val_abs_rel" in scalars
    (event,) = acc.Scalars("hparams/best_val_abs_rel")
    assert event.step == 12 and event.value == pytest.approx(0.123)
