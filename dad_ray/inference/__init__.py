"""Ray Data batch inference: evaluation of checkpoints on shards, prediction of images or shards; one actor plan.

The drivers of the package (they start or join Ray through :func:`dad_ray.runtime.init_ray`); the components they
run live below them: :class:`~dad_ray.models.DepthPredictor` (models) and the metric functions (metrics).
"""

from dad_ray.inference.actors import ActorPlan, plan_actors, plan_for_cluster
from dad_ray.inference.evaluate import (
    EvalActor,
    ModelToEvaluate,
    evaluate_checkpoint,
    evaluate_checkpoints,
    format_table,
    model_to_evaluate,
    write_tensorboard,
)
from dad_ray.inference.predict import (
    IMAGE_SUFFIXES,
    PredictOptions,
    PredictSummary,
    collect_images,
    collect_uri_images,
    is_shard_dir,
    load_rgb,
    output_stem,
    predict_dataset,
    predict_images_ray,
    predict_inputs,
    predict_local,
    predict_shards,
    run_predict,
    write_prediction,
)
from dad_ray.inference.suite import SuiteSet, discover_suite, evaluate_suite, format_table5

__all__ = [
    "IMAGE_SUFFIXES",
    "ActorPlan",
    "EvalActor",
    "ModelToEvaluate",
    "PredictOptions",
    "PredictSummary",
    "SuiteSet",
    "collect_images",
    "collect_uri_images",
    "discover_suite",
    "evaluate_checkpoint",
    "evaluate_checkpoints",
    "evaluate_suite",
    "format_table",
    "format_table5",
    "is_shard_dir",
    "load_rgb",
    "model_to_evaluate",
    "output_stem",
    "plan_actors",
    "plan_for_cluster",
    "predict_dataset",
    "predict_images_ray",
    "predict_inputs",
    "predict_local",
    "predict_shards",
    "run_predict",
    "write_prediction",
    "write_tensorboard",
]
