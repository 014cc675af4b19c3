"""Local paths and pyarrow URIs behave the same for the run-directory helpers (file:// stands in for s3://)."""

from __future__ import annotations

import pytest

from dad_ray.data import storage


def test_upload_tree_download_and_local_copy_through_a_uri(tmp_path):
    local = tmp_path / "local"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("one")
    (local / "sub" / "b.bin").write_bytes(b"\x00\x01")
    remote = f"file://{tmp_path / 'remote' / 'run'}"

    storage.upload_tree(local, storage.join(remote, "tensorboard"))
    assert (tmp_path / "remote" / "run" / "tensorboard" / "a.txt").read_text() == "one"
    assert (tmp_path / "remote" / "run" / "tensorboard" / "sub" / "b.bin").read_bytes() == b"\x00\x01"
    (local / "a.txt").write_text("two")  # a later sync overwrites
    storage.upload_tree(local, storage.join(remote, "tensorboard"))
    assert (tmp_path / "remote" / "run" / "tensorboard" / "a.txt").read_text() == "two"

    storage.upload_file(local / "a.txt", storage.join(remote, "x.txt"))
    assert storage.download_file(storage.join(remote, "x.txt"), tmp_path / "back.txt")
    assert (tmp_path / "back.txt").read_text() == "two"
    assert not storage.download_file(storage.join(remote, "missing.txt"), tmp_path / "nothing.txt")
    assert not (tmp_path / "nothing.txt").exists()

    copy = storage.local_copy(storage.join(remote, "x.txt"), tmp_path / "cache")
    assert open(copy).read() == "two" and copy.startswith(str(tmp_path / "cache"))
    assert storage.local_copy(str(local / "a.txt"), tmp_path / "cache") == str(local / "a.txt")  # local: as is
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        storage.local_copy(storage.join(remote, "missing.txt"), tmp_path / "cache")


def test_journal_at_a_uri_continues_the_existing_one(tmp_path):
    from dad_ray.train.monitor import JOURNAL_FILE, Journal, read_journal

    uri = f"file://{tmp_path / 'run' / JOURNAL_FILE}"
    first = Journal(uri, attempt_start=0, node_ids=["n1"])
    first.write(1, 0, 0.5)
    first.close()
    second = Journal(uri, attempt_start=1, node_ids=["n2"])
    second.write(2, 0, 0.4)
    second.flush()  # step lines are buffered until a flush (every log_every steps)
    second.sync()
    entries = read_journal(tmp_path / "run" / JOURNAL_FILE)
    assert [e.get("attempt_start", e.get("step")) for e in entries] == [0, 1, 1, 2]
    assert entries[2]["node_ids"] == ["n2"]
    second.close()


def test_path_helpers_take_pathlib_paths(tmp_path):
    """A ``pathlib.Path`` is a local path to every helper (the CI of stop 19 failed on ``"://" in Path``)."""
    (tmp_path / "r.json").write_text("{}\n")
    assert storage.join(tmp_path, "r.json") == str(tmp_path / "r.json")
    assert storage.is_file(tmp_path / "r.json")
    assert storage.read_path(tmp_path / "r.json") == b"{}\n"
    fs, inner = storage.resolve(tmp_path)
    assert inner == str(tmp_path)
