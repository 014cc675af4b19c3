"""The one filesystem helper (dad_ray.data.storage) against a real S3 endpoint on loopback (moto's server, started
for this module), reached through the AWS environment and through Ray-style URI query parameters; URI paths
through the tune driver and the synthetic-data check. No Ray: a second or two in all."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from dad_ray.data import storage
from tests.s3_bed import moto_s3

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def s3():
    with moto_s3() as bed:
        yield bed


@pytest.fixture
def aws_env(s3, monkeypatch):
    """The standard AWS variables point at the endpoint (as for MinIO/R2 users)."""
    for key, value in s3.env.items():
        monkeypatch.setenv(key, value)
    return s3


@pytest.fixture
def aws_credentials_only(s3, monkeypatch):
    """Key, secret and region in the environment, but no endpoint: only a URI's query can name it."""
    for key, value in s3.credentials.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    return s3


def test_join_parent_basename_keep_a_uris_query():
    q = "?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.join("s3://b/runs" + q, "exp", "trials/") == "s3://b/runs/exp/trials" + q
    assert storage.join("s3://b/runs/" + q, "x.yaml") == "s3://b/runs/x.yaml" + q
    assert storage.join("s3://b/runs", "x") == "s3://b/runs/x"
    assert storage.parent("s3://b/runs/exp" + q) == "s3://b/runs" + q
    assert storage.parent("s3://b/exp/") == "s3://b"
    assert storage.basename("s3://b/runs/exp" + q) == "exp"
    assert storage.basename("s3://b/runs/exp/") == "exp"
    assert storage.absolute("s3://b/x" + q) == "s3://b/x" + q  # never through pathlib
    assert storage.absolute("rel/dir") == str(Path.cwd() / "rel" / "dir")
    assert storage.parent("rel/dir/") == str(Path.cwd() / "rel")
    assert storage.split_query("s3://b/p" + q) == ("s3://b/p", q)


def _round_trip(uri_of, s3, tmp_path, prefix):
    storage.write_path(uri_of(prefix, "a", "one.txt"), "one")
    assert storage.read_path(uri_of(prefix, "a", "one.txt")) == b"one"
    assert storage.is_file(uri_of(prefix, "a", "one.txt")) and not storage.is_file(uri_of(prefix, "a"))
    local = tmp_path / "tree"
    (local / "sub").mkdir(parents=True)
    (local / "sub" / "two.bin").write_bytes(b"\x00\x02")
    storage.upload_tree(local, uri_of(prefix, "tb"))
    assert storage.children(uri_of(prefix)) == ["a", "tb"]
    assert storage.download_file(uri_of(prefix, "tb", "sub", "two.bin"), tmp_path / "back.bin")
    assert (tmp_path / "back.bin").read_bytes() == b"\x00\x02"
    with pytest.raises(FileNotFoundError, match=re.escape(uri_of(prefix, "missing.txt"))):
        storage.read_path(uri_of(prefix, "missing.txt"))
    # the objects are where the URI says, keys free of the query
    assert s3.keys(prefix) == [f"{prefix}/a/one.txt", f"{prefix}/tb/sub/two.bin"]


def test_the_aws_environment_reaches_the_endpoint(aws_env, tmp_path):
    s3 = aws_env
    _round_trip(lambda *p: storage.join(s3.uri(), *p), s3, tmp_path, "via_env")


def test_a_uris_query_reaches_the_endpoint_and_survives_joins(aws_credentials_only, tmp_path):
    s3 = aws_credentials_only
    _round_trip(lambda *p: storage.join(s3.uri(query=True), *p), s3, tmp_path, "via_query")
    # without the query (and without AWS_ENDPOINT_URL) the same path is not the test endpoint's: nothing to find
    # there that this test wrote, so a lost query would show as a missing file above rather than pass


def test_no_filesystem_is_built_outside_the_storage_helper():
    """Arrow #49643: a bare S3FileSystem() ignores AWS_ENDPOINT_URL; every filesystem comes from storage.resolve."""
    offenders = []
    for path in [*REPO.joinpath("dad_ray").rglob("*.py"), *REPO.joinpath("jobs").glob("*.py")]:
        if path.name == "storage.py" and path.parent.name == "data":
            continue
        text = path.read_text()
        if re.search(r"S3FileSystem\(|GcsFileSystem\(|FileSystem\.from_uri\(|LocalFileSystem\(", text):
            offenders.append(str(path.relative_to(REPO)))
    assert offenders == []


def test_experiment_directories_on_a_uri_stay_uris(aws_credentials_only):
    from dad_ray.tune.driver import SPACE_FILE, experiment_dir, load_experiment_space, trial_run_dir
    from dad_ray.tune.space import resolve_space_path

    s3 = aws_credentials_only
    exp = experiment_dir(s3.uri("tune", query=True), "smoke")
    assert exp == s3.uri("tune", "smoke", query=True)
    assert trial_run_dir(exp, "abc_00001") == s3.uri("tune", "smoke", "trials", "abc_00001", query=True)
    data = yaml.safe_load(resolve_space_path("smoke").read_text())
    storage.write_path(storage.join(exp, SPACE_FILE), yaml.safe_dump({**data, "_name": "smoke"}))
    space = load_experiment_space(exp)
    assert space.name == "smoke" and space.base.train.name == "smoke"
    with pytest.raises(FileNotFoundError, match="not a tune experiment directory"):
        load_experiment_space(s3.uri("tune", "nothing", query=True))


def test_synthetic_check_uses_real_shards_as_they_are(tmp_path, caplog):
    """A base preset that describes synthetic scenes must not refuse a data.root of real shards."""
    from dad_ray.config import build_config
    from dad_ray.data.manifest import FORMAT, SCHEMA_VERSION, read_manifest, write_manifest
    from dad_ray.data.prepare import ensure_synthetic

    for split, n in (("train", 795), ("test", 654)):
        write_manifest(
            str(tmp_path / split),
            {
                "format": FORMAT,
                "schema_version": SCHEMA_VERSION,
                "split": split,
                "source": "nyu_depth_v2_labeled.mat",
                "fingerprint": {"source": {"kind": "nyu_mat", "split": split}, "split": split},
                "image_format": "jpeg",
                "row_group_size": 8,
                "num_samples": n,
                "shards": [{"file": "part-00000.parquet", "num_rows": n, "bytes": 1, "sha256": "0" * 64}],
                "skipped": [],
            },
        )
    cfg = build_config("smoke")
    assert cfg.data.synthetic.train_samples > 0
    with caplog.at_level("INFO"):
        ensure_synthetic(str(tmp_path), cfg.data.synthetic)  # no Ray started: nothing to make
    assert read_manifest(str(tmp_path / "train"))["num_samples"] == 795  # untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["test", "train"]
    assert "used as they are" in caplog.text and "delete" not in caplog.text


def test_a_relative_base_config_of_a_space_in_a_uri_experiment_is_read_from_beside_it(aws_credentials_only):
    from dad_ray.config import ConfigError
    from dad_ray.tune.driver import SPACE_FILE, experiment_dir, load_experiment_space
    from dad_ray.tune.space import resolve_space_path

    s3 = aws_credentials_only
    exp = experiment_dir(s3.uri("tune", query=True), "relbase")
    data = yaml.safe_load(resolve_space_path("smoke").read_text())
    data.pop("base_preset", None)
    storage.write_path(storage.join(exp, "my_base.yaml"), "base: smoke\ntrain:\n  name: from_the_bucket\n")
    storage.write_path(storage.join(exp, SPACE_FILE), yaml.safe_dump({**data, "base_config": "my_base.yaml"}))
    space = load_experiment_space(exp)
    assert space.base.train.name == "from_the_bucket"  # not <cwd>/s3:/…/my_base.yaml
    storage.write_path(storage.join(exp, SPACE_FILE), yaml.safe_dump({**data, "base_config": "missing.yaml"}))
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_experiment_space(exp)


def test_distill_reads_its_config_file_from_a_uri(aws_env, capsys):
    import sys

    sys.path.insert(0, str(REPO / "jobs"))
    try:
        import distill
    finally:
        sys.path.remove(str(REPO / "jobs"))
    uri = aws_env.uri("configs", "best_config.yaml")
    storage.write_path(uri, "base: smoke\ntrain:\n  name: best_from_s3\n")
    assert distill.main(["--config", uri, "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["train"]["name"] == "best_from_s3"
    with pytest.raises(SystemExit):
        distill.main(["--config", aws_env.uri("configs", "none.yaml"), "--print-config"])


def test_copy_student_uploads_to_a_uri(aws_env, tmp_path):
    from ray.train import Checkpoint, Result

    from dad_ray.train.checkpoint import STUDENT_FILE
    from dad_ray.train.trainer import copy_student

    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / STUDENT_FILE).write_bytes(b"weights")
    result = Result(metrics={}, checkpoint=Checkpoint.from_directory(str(ckpt)), error=None, path=str(tmp_path))
    dest = aws_env.uri("teachers", "boot.safetensors")
    copy_student(result, dest)
    assert storage.read_path(dest) == b"weights"


def test_predictions_are_written_to_a_uri(aws_env, tmp_path):
    """jobs/predict.py --out s3://…: each image's .npy and .png land in the bucket, equal to a local run's."""
    import numpy as np
    from PIL import Image

    from dad_ray.inference.predict import PredictOptions, predict_inputs
    from dad_ray.models import create_model, save_weights

    images = tmp_path / "images"
    (images / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in ("a.png", "sub/b.png"):
        Image.fromarray(rng.integers(0, 256, (28, 42, 3), dtype=np.uint8)).save(images / name)
    checkpoint = save_weights(create_model("dav2_micro"), tmp_path / "micro.safetensors")

    def run(out: str):
        opts = PredictOptions(model="dav2_micro", checkpoint=str(checkpoint), out=out, input_size=28, batch_size=2)
        return predict_inputs([str(images)], opts, ray_mode="off")

    assert run(aws_env.uri("preds")).written == 2
    assert run(str(tmp_path / "local")).written == 2
    for stem in ("a", "sub/b"):
        for ext in ("npy", "png"):
            assert aws_env.read(f"preds/{stem}.{ext}") == (tmp_path / "local" / f"{stem}.{ext}").read_bytes()
