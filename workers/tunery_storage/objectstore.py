"""Folders ("trees") of files in an S3-compatible bucket, each visible only when complete.

A tree is written object by object and then its manifest, ``.tunery-manifest.json`` (every
object's size and sha256), last; the manifest of a tree being replaced is deleted first. A reader
trusts a tree only through its manifest and checks each downloaded object against it, so a writer
killed mid-upload leaves nothing that a resume or a cache would use.

Errors are :class:`StorageError` with a code that names the cause. An outage (connection refused,
timeouts, 5xx, throttling) is retried with exponential backoff for ``retry_seconds``; wrong
credentials, a missing bucket or a full bucket are reported at once (retrying cannot fix them).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Written last; a tree without it does not exist for readers.
TREE_MANIFEST = ".tunery-manifest.json"
MANIFEST_FORMAT = 1
#: Files above this are sent as a multipart upload, one retried part at a time.
PART_BYTES = 64 * 1024 * 1024
_BLOCK = 1024 * 1024

_CREDENTIALS = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AuthorizationHeaderMalformed",
    "ExpiredToken",
    "InvalidToken",
    "InvalidClientTokenId",
    "403",
}
_NO_BUCKET = {"NoSuchBucket"}
_FULL = {
    "QuotaExceeded",
    "XMinioStorageFull",
    "XMinioAdminBucketQuotaExceeded",
    "StorageFull",
    "InsufficientStorage",
    "EntityTooLarge",
    "507",
}
_OUTAGE = {
    "SlowDown",
    "RequestTimeout",
    "InternalError",
    "ServiceUnavailable",
    "Throttling",
    "RequestLimitExceeded",
    "XMinioServerNotInitialized",
    "500",
    "502",
    "503",
    "504",
}


class StorageError(Exception):
    """Object storage failed. ``code``: storage_unreachable, storage_credentials,
    storage_bucket_missing, storage_full, storage_error, artifact_missing, artifact_corrupt."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.message = message
        self.code = code

    @property
    def summary(self) -> str:
        """The cause without keys, endpoints or bucket names (for a tenant's job error)."""
        return _SUMMARY.get(self.code, "object storage failed")


@dataclass(frozen=True)
class S3Settings:
    """Where the bucket is and how to sign in: the ``TUNERY_S3_*`` variables, shared by the
    control plane's uploads (django-storages) and the model storage here."""

    bucket: str
    endpoint_url: str | None = None
    region: str | None = None
    access_key_id: str | None = None
    secret_access_key: str | None = None

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> S3Settings | None:
        bucket = environ.get("TUNERY_S3_BUCKET", "")
        if not bucket:
            return None
        return cls(
            bucket=bucket,
            endpoint_url=environ.get("TUNERY_S3_ENDPOINT_URL") or None,
            region=environ.get("TUNERY_S3_REGION") or None,
            access_key_id=environ.get("TUNERY_S3_ACCESS_KEY_ID") or None,
            secret_access_key=environ.get("TUNERY_S3_SECRET_ACCESS_KEY") or None,
        )

    def django_storage_options(self) -> dict[str, Any]:
        """The same bucket and credentials as django-storages' ``S3Storage`` options (uploads)."""
        return {
            "bucket_name": self.bucket,
            "endpoint_url": self.endpoint_url,
            "region_name": self.region,
            "access_key": self.access_key_id,
            "secret_key": self.secret_access_key,
        }

    def client(self, *, connect_timeout: float = 5, read_timeout: float = 60) -> Any:
        """A boto3 S3 client for this bucket (retries are the caller's: see ObjectStore)."""
        import boto3
        from botocore.config import Config

        config = Config(
            connect_timeout=connect_timeout,
            read_timeout=read_timeout,
            retries={"total_max_attempts": 1},
            s3={"addressing_style": "path"} if self.endpoint_url else {},
        )
        return boto3.session.Session().client(
            "s3",
            endpoint_url=self.endpoint_url,
            region_name=self.region or "us-east-1",
            aws_access_key_id=self.access_key_id,
            aws_secret_access_key=self.secret_access_key,
            config=config,
        )


def artifact_store_from_env(environ: Mapping[str, str] = os.environ) -> ObjectStore | None:
    """The model store the environment configures, or None when artifacts stay in the local folder.

    ``TUNERY_ARTIFACT_STORAGE``: ``s3`` or ``local``; unset means ``s3`` when ``TUNERY_S3_BUCKET``
    is set. Keys start with ``TUNERY_S3_ARTIFACTS_PREFIX`` (default ``artifacts/``)."""
    mode = (environ.get("TUNERY_ARTIFACT_STORAGE") or "").strip().lower()
    settings = S3Settings.from_env(environ)
    if mode not in ("", "s3", "local"):
        raise ValueError(f"TUNERY_ARTIFACT_STORAGE must be 's3' or 'local', not {mode!r}")
    if mode == "local" or (mode == "" and settings is None):
        return None
    if settings is None:
        raise ValueError("TUNERY_ARTIFACT_STORAGE=s3 needs TUNERY_S3_BUCKET")
    retry = float(environ.get("TUNERY_S3_RETRY_SECONDS") or 300)
    return ObjectStore(settings, prefix=environ.get("TUNERY_S3_ARTIFACTS_PREFIX", "artifacts/"), retry_seconds=retry)


def _classify(exc: BaseException) -> tuple[str, bool]:
    """(error code, whether waiting can help) for a boto3/botocore exception."""
    from botocore.exceptions import BotoCoreError, ClientError, ConnectionError, HTTPClientError

    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = str(exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _CREDENTIALS or (not code and status == "403"):
            return "storage_credentials", False
        if code in _NO_BUCKET:
            return "storage_bucket_missing", False
        if code in _FULL or status == "507":
            return "storage_full", False
        if code in _OUTAGE or status.startswith("5"):
            return "storage_unreachable", True
        return "storage_error", False
    if isinstance(exc, (ConnectionError, HTTPClientError)):
        return "storage_unreachable", True
    if isinstance(exc, BotoCoreError):  # e.g. no credentials found
        return "storage_credentials", False
    return "storage_error", False


_EXPLAIN = {
    "storage_unreachable": "object storage is unreachable",
    "storage_credentials": "object storage refused the credentials (check TUNERY_S3_ACCESS_KEY_ID and "
    "TUNERY_S3_SECRET_ACCESS_KEY and the key's rights on the bucket)",
    "storage_bucket_missing": "the object storage bucket does not exist (check TUNERY_S3_BUCKET)",
    "storage_full": "the object storage bucket is full or over its quota",
    "storage_error": "object storage refused the request",
}


_SUMMARY = {
    "storage_unreachable": "object storage is unreachable",
    "storage_credentials": "object storage refused the server's credentials",
    "storage_bucket_missing": "the object storage bucket does not exist",
    "storage_full": "the object storage bucket is full",
    "storage_error": "object storage refused a request",
    "artifact_missing": "the files are missing or incomplete in object storage",
    "artifact_corrupt": "the files in object storage do not match their manifest",
}


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()


class ObjectStore:
    """Trees of files under ``prefix`` in one bucket. Keys given to its methods are relative to
    the prefix, "/"-separated (``acme/ftjob-1/final``); a part that is empty, "." or ".." is refused."""

    def __init__(
        self,
        settings: S3Settings,
        *,
        prefix: str = "artifacts/",
        retry_seconds: float = 300,
        client: Any | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.settings = settings
        self.bucket = settings.bucket
        self.prefix = prefix.strip("/") + "/" if prefix.strip("/") else ""
        self.retry_seconds = retry_seconds
        self._client = client
        self._sleep = sleep

    @property
    def client(self) -> Any:
        if self._client is None:
            self._client = self.settings.client()
        return self._client

    def describe(self, key: str = "") -> str:
        return f"s3://{self.bucket}/{self.key(key) if key else self.prefix}"

    def key(self, relative: str) -> str:
        parts = relative.strip("/").split("/")
        if any(part in ("", ".", "..") or "\\" in part for part in parts):
            raise ValueError(f"not a valid object key: {relative!r}")
        return self.prefix + "/".join(parts)

    # -- one request, retried through an outage ---------------------------------------------------

    def _call(self, what: str, request: Callable[[], T]) -> T:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.5
        while True:
            try:
                return request()
            except StorageError:
                raise
            except Exception as exc:
                code, waiting_helps = _classify(exc)
                if code == "storage_error" and not _is_boto(exc):
                    raise
                remaining = deadline - time.monotonic()
                if waiting_helps and remaining > 0:
                    pause = min(delay, remaining)
                    log.warning("%s: %s; retrying in %.1f s", what, exc, pause)
                    self._sleep(pause)
                    delay = min(delay * 2, 30.0)
                    continue
                waited = f" (retried for {self.retry_seconds:.0f} s)" if waiting_helps else ""
                raise StorageError(f"{what}: {_EXPLAIN[code]}{waited}: {exc}", code=code) from exc

    # -- objects ----------------------------------------------------------------------------------

    def _put_file(self, path: Path, key: str) -> str:
        """Upload one file; returns the sha256 of the bytes sent."""
        size = path.stat().st_size
        digest = hashlib.sha256()
        if size <= PART_BYTES:
            data = path.read_bytes()
            digest.update(data)
            self._call(f"uploading {key}", lambda: self.client.put_object(Bucket=self.bucket, Key=key, Body=data))
            return digest.hexdigest()
        upload = self._call(
            f"uploading {key}", lambda: self.client.create_multipart_upload(Bucket=self.bucket, Key=key)
        )
        upload_id = upload["UploadId"]
        parts = []
        try:
            with path.open("rb") as f:
                number = 1
                while chunk := f.read(PART_BYTES):
                    digest.update(chunk)
                    sent = self._call(
                        f"uploading {key} part {number}",
                        lambda c=chunk, n=number: self.client.upload_part(  # type: ignore[misc]
                            Bucket=self.bucket, Key=key, UploadId=upload_id, PartNumber=n, Body=c
                        ),
                    )
                    parts.append({"PartNumber": number, "ETag": sent["ETag"]})
                    number += 1
            self._call(
                f"uploading {key}",
                lambda: self.client.complete_multipart_upload(
                    Bucket=self.bucket, Key=key, UploadId=upload_id, MultipartUpload={"Parts": parts}
                ),
            )
            return digest.hexdigest()
        except BaseException:
            try:  # the parts would otherwise take space until the bucket's lifecycle rules run
                self.client.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=upload_id)
            except Exception as exc:
                log.warning("could not abort the multipart upload of %s: %s", key, exc)
            raise

    def _get_file(self, key: str, target: Path) -> None:
        def download() -> None:
            body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"]
            with target.open("wb") as sink:
                for chunk in body.iter_chunks(_BLOCK):
                    sink.write(chunk)

        self._call(f"downloading {key}", download)

    def _keys(self, key_prefix: str) -> Iterator[str]:
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": self.bucket, "Prefix": key_prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(f"listing {key_prefix}", lambda k=kwargs: self.client.list_objects_v2(**k))  # type: ignore[misc]
            for item in page.get("Contents", []):
                yield item["Key"]
            if not page.get("IsTruncated"):
                return
            token = page.get("NextContinuationToken")

    def _delete_keys(self, keys: list[str]) -> None:
        for start in range(0, len(keys), 1000):
            batch = {"Objects": [{"Key": k} for k in keys[start : start + 1000]], "Quiet": True}
            self._call("deleting objects", lambda b=batch: self.client.delete_objects(Bucket=self.bucket, Delete=b))  # type: ignore[misc]

    def check(self) -> None:
        """Reach the bucket with these credentials (a HEAD of the bucket); StorageError if not."""
        from botocore.exceptions import ClientError

        def head() -> None:
            try:
                self.client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:  # a HEAD has no error body: a 404 is the bucket's absence
                if str(exc.response.get("Error", {}).get("Code")) == "404":
                    raise StorageError(
                        f"reaching {self.describe()}: {_EXPLAIN['storage_bucket_missing']}",
                        code="storage_bucket_missing",
                    ) from exc
                raise

        self._call(f"reaching {self.describe()}", head)

    # -- trees ------------------------------------------------------------------------------------

    def put_tree(self, local_dir: Path, relative: str) -> dict[str, Any]:
        """Upload every file under ``local_dir`` to ``relative/...``, then the manifest. Returns it."""
        root = self.key(relative)
        files = sorted(p for p in Path(local_dir).rglob("*") if p.is_file() and not p.is_symlink())
        manifest_key = f"{root}/{TREE_MANIFEST}"
        # a tree replaced in place must not look complete while its objects are a mix
        self._call(f"deleting {manifest_key}", lambda: self.client.delete_object(Bucket=self.bucket, Key=manifest_key))
        listed: dict[str, dict[str, Any]] = {}
        for path in files:
            name = path.relative_to(local_dir).as_posix()
            if name == TREE_MANIFEST:
                continue
            sha256 = self._put_file(path, f"{root}/{name}")
            listed[name] = {"size": path.stat().st_size, "sha256": sha256}
        manifest = {"format": MANIFEST_FORMAT, "files": listed, "total_bytes": sum(f["size"] for f in listed.values())}
        body = json.dumps(manifest, indent=1, sort_keys=True).encode()
        self._call(
            f"uploading {manifest_key}",
            lambda: self.client.put_object(Bucket=self.bucket, Key=manifest_key, Body=body),
        )
        return manifest

    def read_manifest(self, relative: str) -> dict[str, Any] | None:
        """The tree's manifest, or None when the tree is absent or incomplete."""
        from botocore.exceptions import ClientError

        key = f"{self.key(relative)}/{TREE_MANIFEST}"

        def get() -> dict[str, Any] | None:
            try:
                body = self.client.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                    return None
                raise
            try:
                manifest = json.loads(body)
                files = manifest["files"]
                assert isinstance(files, dict)
                return manifest  # type: ignore[no-any-return]
            except (ValueError, KeyError, TypeError, AssertionError) as exc:
                raise StorageError(f"{key} is not a manifest: {exc}", code="artifact_corrupt") from exc

        return self._call(f"reading {key}", get)

    def get_tree(
        self, relative: str, target: Path, *, on_object: Callable[[str], None] | None = None
    ) -> dict[str, Any]:
        """Download a complete tree into ``target`` (created whole: built beside it and renamed in),
        every object checked against the manifest; ``on_object`` is called before each object (a
        long download can renew a lease). StorageError artifact_missing when the tree is absent or
        incomplete, artifact_corrupt when an object does not match."""
        manifest = self.read_manifest(relative)
        if manifest is None:
            raise StorageError(f"{self.describe(relative)} is missing or incomplete", code="artifact_missing")
        partial = target.with_name(f".{target.name}.part-{os.getpid()}")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        try:
            root = self.key(relative)
            for name, entry in sorted(manifest["files"].items()):
                local = partial / name
                if not local.resolve().is_relative_to(partial.resolve()):
                    raise StorageError(
                        f"{root}: manifest names a file outside the tree: {name!r}", code="artifact_corrupt"
                    )
                local.parent.mkdir(parents=True, exist_ok=True)
                if on_object is not None:
                    on_object(name)
                self._get_file(f"{root}/{name}", local)
                if local.stat().st_size != entry["size"] or _sha256_file(local) != entry["sha256"]:
                    raise StorageError(f"{root}/{name} does not match its manifest", code="artifact_corrupt")
            (partial / TREE_MANIFEST).write_text(json.dumps(manifest, sort_keys=True), encoding="utf-8")
            if target.exists():
                shutil.rmtree(target)
            os.replace(partial, target)
        finally:
            shutil.rmtree(partial, ignore_errors=True)
        return manifest

    def complete_children(self, relative: str) -> list[str]:
        """Names of the complete trees directly under ``relative`` (sorted)."""
        root = self.key(relative) + "/"
        found = set()
        for key in self._keys(root):
            child, _, rest = key[len(root) :].partition("/")
            if rest == TREE_MANIFEST:
                found.add(child)
        return sorted(found)

    def children(self, relative: str) -> list[str]:
        """Names directly under ``relative``, complete or not (sorted)."""
        root = self.key(relative) + "/"
        return sorted({key[len(root) :].split("/", 1)[0] for key in self._keys(root)})

    def delete_tree(self, relative: str) -> int:
        """Delete everything under ``relative`` (its manifest first). Returns how many objects."""
        root = self.key(relative) + "/"
        keys = list(self._keys(root))
        manifests = [k for k in keys if k.endswith("/" + TREE_MANIFEST)]
        self._delete_keys(manifests)
        self._delete_keys([k for k in keys if k not in set(manifests)])
        return len(keys)

    def pull_children(
        self, relative: str, local_root: Path, *, on_object: Callable[[str], None] | None = None
    ) -> list[str]:
        """Download the complete trees under ``relative`` that ``local_root`` lacks (a resume on a
        new host). Returns their names; ``on_object`` is called before each object (to renew a lease)."""
        pulled = []
        for name in self.complete_children(relative):
            target = Path(local_root) / name
            if target.exists():
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            self.get_tree(f"{relative}/{name}", target, on_object=on_object)
            pulled.append(name)
        return pulled


def _is_boto(exc: BaseException) -> bool:
    module = type(exc).__module__
    return module.startswith(("botocore", "boto3", "urllib3"))
