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
    def __init__(self, enforce_iam_after: int | None = None):
        """``enforce_iam_after``: moto checks IAM policies after this many requests (before: anything goes), so a
        test can make users with narrow policies and then meet real AccessDenied answers."""
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("moto_server")
        env = dict(os.environ)
        if enforce_iam_after is not None:
            env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(enforce_iam_after)
        self.proc = subprocess.Popen([str(exe), "-H", "127.0.0.1", "-p", str(self.port)], env=env,
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

    def read_only_user(self, bucket: str) -> dict:
        """Make ``bucket`` and a user who may list and read, never write (4 requests: start the server with
        ``enforce_iam_after=4``); returns that user's environment (the usual AWS_* variables)."""
        import json

        import boto3
        kw = dict(endpoint_url=self.url, region_name="us-east-1", aws_access_key_id="testing",
                  aws_secret_access_key="testing-secret-never-written")
        iam = boto3.client("iam", **kw)
        iam.create_user(UserName="reader")
        key = iam.create_access_key(UserName="reader")["AccessKey"]
        iam.put_user_policy(UserName="reader", PolicyName="read-only", PolicyDocument=json.dumps({
            "Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Resource": "*", "Action": [
                "s3:GetObject", "s3:ListBucket", "s3:ListAllMyBuckets", "s3:GetBucketLocation"]}]}))
        boto3.client("s3", **kw).create_bucket(Bucket=bucket)
        return dict(self.env, AWS_ACCESS_KEY_ID=key["AccessKeyId"], AWS_SECRET_ACCESS_KEY=key["SecretAccessKey"])

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
