"""S3 access for datasets: `s3://bucket/key` through boto3, endpoint from MLFLOW_S3_ENDPOINT_URL or
AWS_ENDPOINT_URL (MinIO, moto), credentials only from the environment or the AWS config files (never
from params, tags or logs), retries with backoff, and a local content-addressed cache so a dataset is
downloaded once per content (ETag + size), not once per run."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from urllib.parse import urlparse

from biosig.data.atomic import atomic_path
from biosig.errors import DataError

RETRIES = 5  # botocore "standard" mode: exponential backoff with jitter on throttling and 5xx


def cache_root() -> Path | None:
    """biosig's local cache ($BIOSIG_CACHE_DIR, default ~/.cache/biosig); None when set to `off`."""
    value = os.environ.get("BIOSIG_CACHE_DIR", "")
    if value.lower() == "off":
        return None
    return Path(value) if value else Path.home() / ".cache" / "biosig"


def cache_dir() -> Path:
    """Downloaded S3 objects (needed to read them at all, so kept under ~/.cache/biosig when caching is off)."""
    return (cache_root() or Path.home() / ".cache" / "biosig") / "s3"


def s3_client():
    import boto3
    from botocore.config import Config

    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL") or None
    return boto3.client("s3", endpoint_url=endpoint,
                        config=Config(retries={"max_attempts": RETRIES, "mode": "standard"}))


def split_s3_uri(uri: str) -> tuple[str, str]:
    parsed = urlparse(uri)
    if parsed.scheme != "s3" or not parsed.netloc or not parsed.path.strip("/"):
        raise DataError(f"not an s3://bucket/key URI: {uri}")
    return parsed.netloc, parsed.path.lstrip("/")


def fetch(uri: str) -> Path:
    """A local copy of an S3 object, from the cache when its content (ETag, size) is already there."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(uri)
    client = s3_client()
    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("404", "NoSuchKey", "NotFound"):
            raise DataError(f"{uri} does not exist") from None
        if code in ("403", "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch"):
            raise DataError(f"access to {uri} was refused ({code}): check AWS credentials in the environment") \
                from None
        raise DataError(f"cannot read {uri}: {code or exc}") from None
    except BotoCoreError as exc:
        raise DataError(f"cannot reach S3 for {uri}: {exc}") from None
    identity = f"{bucket}/{key}:{head.get('ETag', '')}:{head['ContentLength']}"
    target = cache_dir() / hashlib.sha256(identity.encode()).hexdigest()[:32] / Path(key).name
    if target.is_file() and target.stat().st_size == head["ContentLength"]:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:  # a failed download leaves no partial file in the cache
        try:
            client.download_file(bucket, key, str(tmp))
        except (ClientError, BotoCoreError) as exc:
            raise DataError(f"download of {uri} failed: {exc}") from None
    return target


def upload(path: str | Path, uri: str) -> None:
    bucket, key = split_s3_uri(uri)
    s3_client().upload_file(str(path), bucket, key)


def list_objects(prefix: str) -> list[str]:
    """Every `s3://bucket/key` under `prefix`, sorted."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, key = split_s3_uri(prefix.rstrip("/") + "/x")
    key = key[:-1]
    try:
        pages = s3_client().get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=key)
        return sorted(f"s3://{bucket}/{o['Key']}" for page in pages for o in page.get("Contents", []))
    except ClientError as exc:
        raise DataError(f"cannot list {prefix}: {exc.response.get('Error', {}).get('Code', exc)}") from None
    except BotoCoreError as exc:
        raise DataError(f"cannot reach S3 for {prefix}: {exc}") from None


def mirror_prefix(prefix: str) -> Path:
    """A local folder with every object under `prefix` at its relative path (files come from the content
    cache; readers such as wfdb need real files side by side)."""
    import shutil

    objects = list_objects(prefix)
    if not objects:
        raise DataError(f"no objects under {prefix}: check the bucket and prefix")
    base = prefix.rstrip("/") + "/"
    root = cache_dir() / "mirrors" / hashlib.sha256(base.encode()).hexdigest()[:32]
    for uri in objects:
        target = root / uri[len(base):]
        local = fetch(uri)
        if not (target.is_file() and target.stat().st_size == local.stat().st_size):
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(local, target)
    return root


def arrow_filesystem(uri: str):
    """(pyarrow FileSystem, path) for a local path or an `s3://bucket/key` URI: S3 is read in ranges (a
    parquet row group at a time), never downloaded whole. Endpoint and region as for boto3 above;
    credentials from the environment or the AWS config files."""
    import pyarrow.fs as pafs

    if not uri.startswith("s3://"):
        return pafs.LocalFileSystem(), str(Path(uri).resolve())
    bucket, key = split_s3_uri(uri.rstrip("/") + "/x")
    kwargs: dict = {"retry_strategy": pafs.AwsStandardS3RetryStrategy(max_attempts=RETRIES)}
    endpoint = os.environ.get("MLFLOW_S3_ENDPOINT_URL") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        parsed = urlparse(endpoint)
        kwargs.update(endpoint_override=parsed.netloc or parsed.path, scheme=parsed.scheme or "https")
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        kwargs["region"] = region
    return pafs.S3FileSystem(**kwargs), f"{bucket}/{key[:-1]}".rstrip("/")
