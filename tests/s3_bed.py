"""An S3-compatible endpoint on loopback for the tests: moto's server mode (``moto[server]`` in the test extra), as
Ray's own storage tests use it.

Code under test reaches it the two ways users reach MinIO, Ceph or R2, and never through a test-only branch:

- the standard environment (:attr:`S3Bed.env`: ``AWS_ENDPOINT_URL``, key, secret, region), which boto3, the AWS CLI
  and ``pyarrow.fs.FileSystem.from_uri`` honour;
- the URI's own query (:meth:`S3Bed.uri` with ``query=True``: ``s3://bucket/path?endpoint_override=HOST:PORT&
  scheme=http``), as Ray's storage tests write it; key, secret and region still come from the environment.

The server is started by its own handle (``moto_server -H 127.0.0.1 -p PORT``, a free port) and only that process is
stopped. The secret key is random per server: tests grep logs and TensorBoard files for it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

LOOPBACK = "127.0.0.1"
MOTO_SERVER = os.path.join(os.path.dirname(sys.executable), "moto_server")


@dataclass(frozen=True)
class S3Bed:
    port: int
    bucket: str
    secret: str  # AWS_SECRET_ACCESS_KEY: must never show up in a log, a config or a TensorBoard file

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def query(self) -> str:
        return f"?endpoint_override={self.endpoint}&scheme=http"

    @property
    def credentials(self) -> dict[str, str]:
        """Key, secret and region: what every way of reaching the endpoint needs from the environment."""
        return {
            "AWS_ACCESS_KEY_ID": "dadraytestkey",
            "AWS_SECRET_ACCESS_KEY": self.secret,
            "AWS_REGION": "us-east-1",
            "AWS_DEFAULT_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",  # no instance-role lookups (seconds of timeouts) on a dev box
        }

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS environment that points every S3 client at this endpoint."""
        return {**self.credentials, "AWS_ENDPOINT_URL": f"http://{self.endpoint}"}

    def uri(self, *parts: str, query: bool = False) -> str:
        """``s3://<bucket>/<parts>``, with the endpoint in the URI's query when ``query``."""
        path = "/".join([self.bucket, *(p.strip("/") for p in parts if p)])
        return f"s3://{path}" + (self.query if query else "")

    def filesystem(self):
        """The test's own view of the bucket (explicit endpoint: independent of the code under test)."""
        import pyarrow.fs as pafs

        return pafs.S3FileSystem(
            endpoint_override=self.endpoint,
            scheme="http",
            access_key=self.credentials["AWS_ACCESS_KEY_ID"],
            secret_key=self.secret,
            region="us-east-1",
        )

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``<bucket>/<prefix>``, relative to the bucket, sorted."""
        import pyarrow.fs as pafs

        base = "/".join(p for p in (self.bucket, prefix.strip("/")) if p)
        infos = self.filesystem().get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
        return sorted(i.path[len(self.bucket) + 1 :] for i in infos if i.type == pafs.FileType.File)

    def read(self, key: str) -> bytes:
        with self.filesystem().open_input_stream(f"{self.bucket}/{key}") as stream:
            return stream.read()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def moto_s3(bucket: str = "dadray", startup_timeout_s: float = 30) -> Iterator[S3Bed]:
    """A moto S3 server on 127.0.0.1 with one empty bucket; stops exactly the process it started."""
    bed = S3Bed(port=_free_port(), bucket=bucket, secret="dadray-secret-" + uuid.uuid4().hex)
    process = subprocess.Popen(
        [MOTO_SERVER, "-H", LOOPBACK, "-p", str(bed.port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + startup_timeout_s
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"moto_server exited with {process.returncode} before listening on {bed.endpoint}")
            try:
                socket.create_connection((LOOPBACK, bed.port), timeout=0.2).close()
                break
            except OSError as err:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"no moto_server on {bed.endpoint} after {startup_timeout_s} s") from err
                time.sleep(0.1)
        import pyarrow.fs as pafs

        fs = pafs.S3FileSystem(
            endpoint_override=bed.endpoint,
            scheme="http",
            access_key=bed.credentials["AWS_ACCESS_KEY_ID"],
            secret_key=bed.secret,
            region="us-east-1",
            allow_bucket_creation=True,
        )
        fs.create_dir(bucket)
        yield bed
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
