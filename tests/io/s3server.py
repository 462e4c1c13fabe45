"""A real S3-API server (moto's server mode) on loopback, started and stopped by the test that needs it."""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("moto_server")
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        else:
            self.stop()
            pytest.skip("moto_server did not start")
        # the usual environment: clients (s3fs/botocore) read it; nothing of it is ever written by aromni
        self.env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing-secret-never-written",
                    "AWS_ENDPOINT_URL": self.url, "AWS_DEFAULT_REGION": "us-east-1"}

    def fs(self):
        import s3fs
        return s3fs.S3FileSystem(key="testing", secret=self.env["AWS_SECRET_ACCESS_KEY"],
                                 endpoint_url=self.url, skip_instance_cache=True)

    def bucket(self, name: str) -> str:
        fs = self.fs()
        fs.mkdir(name)
        return name

    def stop(self):
        self.proc.kill()
        self.proc.wait()


@pytest.fixture
def s3(monkeypatch):
    """A fresh server per test, with its credentials and endpoint in this process's environment."""
    srv = S3Server()
    for k, v in srv.env.items():
        monkeypatch.setenv(k, v)
    import s3fs
    s3fs.S3FileSystem.clear_instance_cache()  # s3fs caches clients, made with an earlier test's endpoint
    try:
        yield srv
    finally:
        srv.stop()
        s3fs.S3FileSystem.clear_instance_cache()
