"""The real S3-compatible server (scripts/minio.sh) for tests, and reading what landed."""

from __future__ import annotations

from contextlib import AbstractContextManager
from pathlib import Path

import orjson

from tests.kafka_helpers import service_running, start_service

ROOT = Path(__file__).resolve().parents[1]
MINIO_SH = ROOT / "scripts" / "minio.sh"


#: MinIO's start installs it if needed and waits until it answers
MINIO_STEPS = ("start",)


def ensure_minio() -> dict[str, str]:
    """Install/start MinIO if needed (idempotent) and return its ``env`` settings."""
    return start_service(MINIO_SH, MINIO_STEPS)


def minio_running() -> AbstractContextManager[dict[str, str]]:
    """MinIO for a with-block, stopped after it if the block started it (``service_running``)."""
    return service_running(MINIO_SH, MINIO_STEPS)


def s3_args(env: dict[str, str]) -> list[str]:
    """Beam's S3 filesystem options (S3Options) pointing at the local server."""
    return [f"--s3_endpoint_url={env['FLEXPRICE_S3_ENDPOINT']}",
            f"--s3_access_key_id={env['FLEXPRICE_S3_ACCESS_KEY']}",
            f"--s3_secret_access_key={env['FLEXPRICE_S3_SECRET_KEY']}",
            "--s3_region_name=us-east-1"]


def s3_client(env: dict[str, str]):
    import boto3

    return boto3.client("s3", endpoint_url=env["FLEXPRICE_S3_ENDPOINT"],
                        aws_access_key_id=env["FLEXPRICE_S3_ACCESS_KEY"],
                        aws_secret_access_key=env["FLEXPRICE_S3_SECRET_KEY"],
                        region_name="us-east-1")


def s3_objects(env: dict[str, str], prefix: str) -> dict[str, bytes]:
    """Every object under ``prefix`` of the bucket, key → body (temporary ones included)."""
    s3 = s3_client(env)
    bucket = env["FLEXPRICE_S3_BUCKET"]
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Contents", []):
            out[obj["Key"]] = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
    return out


def letters_in(objects: dict[str, bytes]) -> list[dict]:
    """The letters of the committed files (``*.jsonl`` outside ``.tmp/``); every line whole."""
    out = []
    for key, body in sorted(objects.items()):
        if "/.tmp/" in key or not key.endswith(".jsonl"):
            continue
        assert body.endswith(b"\n"), f"{key} does not end with a whole line"
        out.extend(orjson.loads(line) for line in body.splitlines())
    return out
