"""S3: objects as sources (one streamed GET, resumed with a ranged GET) and as targets (multipart).

Choices measured in ``shared/PERFORMANCE-NOTES.md``: a single ``get_object`` stream reads at ~790 MB/s
where boto3's ranged, parallel ``download_file`` reads at 50 MB/s on moto (each ranged GET costs moto
the whole object), so a download is one stream and a range is used only to resume. Uploads above one
part go multipart, several parts in flight.

Integrity: every part is sent with its Content-MD5 (S3 rejects a part that arrives different) and its
SHA-256 checksum; after completion the object's size and its SHA-256 checksum (or, where the server
keeps no checksums, as moto does, its MD5-based ETag) are compared with what was sent.

Connections to the endpoint are address-checked like HTTP sources (see :mod:`hpc.staging.addresses`):
the client's urllib3 pool classes are replaced by guarded ones, so botocore never connects to an
address the policy refuses. Addressing is path-style, so the bucket name never becomes a host name
that escapes the check. botocore's own loggers are kept at INFO or above: at DEBUG they print request
headers, which carry the access key id.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import re
import threading
from dataclasses import dataclass
from typing import Any
from collections.abc import Iterator

import boto3
import botocore
import botocore.awsrequest
from botocore.config import Config as BotoConfig
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError, ReadTimeoutError

from hpc import __version__
from hpc.staging.addresses import AddressPolicy, check_url, default_port
from hpc.staging.errors import (
    SinkError,
    SourceChanged,
    SourceError,
    StagingError,
    UnsafeAddress,
    VerificationFailed,
)
from hpc.staging.http import guarded_pool_classes
from hpc.staging.sources import CHUNK

for _name in ("botocore", "boto3", "s3transfer"):
    # Set, not inherited: the root logger may be lowered to DEBUG after this import.
    if logging.getLogger(_name).level < logging.INFO:
        logging.getLogger(_name).setLevel(logging.INFO)

_ACCESS_CODES = frozenset({
    "AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken", "InvalidToken",
    "AllAccessDisabled", "AccountProblem", "InvalidSecurity", "403",
})
_RETRY_CODES = frozenset({
    "InternalError", "ServiceUnavailable", "SlowDown", "RequestTimeout", "RequestTimeTooSkewed",
    "500", "502", "503", "504",
})
# One boto3 session for every client: a session loads botocore's S3 model (about 80 ms of CPU) once,
# not once per transfer.
_SESSION = boto3.session.Session()
_SESSION_LOCK = threading.Lock()
_MD5_ETAG = re.compile(r'^"?([0-9a-f]{32})(?:-(\d+))?"?$')
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+)$")


def endpoint_url(endpoint: str) -> str:
    """The endpoint as a URL; ``host:port`` without a scheme means https (as the MinIO client assumes)."""
    return check_url(endpoint, default_scheme="https").geturl()


def make_client(endpoint: str, access_key: str, secret_key: str, region: str | None, policy: AddressPolicy,
                pool_size: int = 10, connect_timeout: float = 10.0, read_timeout: float = 60.0):
    """A boto3 S3 client for a user-given endpoint whose connections are address-checked.

    Raises:
        UnsafeAddress: The endpoint resolves to a refused address.
        SourceError: The endpoint is malformed or does not resolve.
    """
    try:
        parts = check_url(endpoint, default_scheme="https")
    except ValueError as exc:
        raise SourceError(f"S3 endpoint: {exc}") from None
    policy.resolve(parts.hostname, default_port(parts))  # fail before the first request
    config = BotoConfig(
        s3={"addressing_style": "path"},
        signature_version="s3v4",
        retries={"max_attempts": 3, "mode": "standard"},
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        max_pool_connections=pool_size,
        # The checksums are computed here (SHA-256, MD5), not by botocore's default CRC32.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
        user_agent_extra=f"hpc-gateway/{__version__}",
    )
    with _SESSION_LOCK:  # a boto3 Session is not thread-safe; the clients it makes are
        client = _SESSION.client(
            "s3",
            endpoint_url=parts.geturl(),
            aws_access_key_id=access_key,
            aws_secret_access_key=secret_key,
            region_name=region or "us-east-1",
            config=config,
        )
    install_address_guard(client, policy)
    for operation in ("UploadPart", "PutObject"):
        client.meta.events.register(f"before-call.s3.{operation}", _payload_hash_from_checksum)
    return client


def _payload_hash_from_checksum(params: dict, **_: Any) -> None:
    """Gives SigV4 the body's SHA-256, already computed with the part's checksum.

    Over plain HTTP botocore signs the payload and, without an ``X-Amz-Content-SHA256`` header, reads the
    whole body once more to hash it (botocore ``S3SigV4Auth.payload``). The header is SigV4's own; the
    server checks the body against it.
    """
    headers = params.get("headers", {})
    checksum = headers.get("x-amz-checksum-sha256")
    if checksum and "X-Amz-Content-SHA256" not in headers:
        headers["X-Amz-Content-SHA256"] = base64.b64decode(checksum).hex()


def install_address_guard(client, policy: AddressPolicy) -> None:
    """Makes every connection of a boto3 client check its address with ``policy`` at connect time.

    botocore offers no public hook at connect time (its ``before-send`` event sees a URL, not the address
    the socket will connect to, so a DNS answer changed in between would pass), so this replaces the
    urllib3 pool classes of the client's HTTP session: botocore 1.44's ``URLLib3Session`` keeps them in
    ``_pool_classes_by_scheme`` and hands them to its pool manager. If a botocore upgrade renames either
    attribute, this raises instead of leaving the client unguarded; ``test_s3_address_guard.py`` also
    proves the guard refuses a connection.

    Raises:
        RuntimeError: botocore's internals changed: the guard cannot be installed.
    """
    classes = guarded_pool_classes(
        policy,
        botocore.awsrequest.AWSHTTPConnection,
        botocore.awsrequest.AWSHTTPSConnection,
        botocore.awsrequest.AWSHTTPConnectionPool,
        botocore.awsrequest.AWSHTTPSConnectionPool,
    )
    session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    manager = getattr(session, "_manager", None)
    if (not isinstance(getattr(session, "_pool_classes_by_scheme", None), dict)
            or not isinstance(getattr(manager, "pool_classes_by_scheme", None), dict)):
        raise RuntimeError("botocore's HTTP session changed: the S3 address guard cannot be installed "
                           f"(botocore {botocore.__version__})")
    session._pool_classes_by_scheme = classes
    manager.pool_classes_by_scheme = classes


def s3_failure(exc: BaseException, bucket: str, key: str, action: str, error=SourceError) -> StagingError:
    """The staging error for a boto3 exception, naming what failed in words (never a key)."""
    if isinstance(exc, StagingError):
        return exc
    if isinstance(exc, HTTPClientError) and isinstance(exc.kwargs.get("error"), UnsafeAddress):
        return exc.kwargs["error"]
    if isinstance(exc, ClientError):
        info = exc.response.get("Error", {})
        code = str(info.get("Code") or exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", ""))
        if code in _ACCESS_CODES:
            return error(f"access denied ({code}) {action} s3://{bucket}/{key}")
        if code == "NoSuchBucket":
            return error(f"bucket {bucket!r} does not exist")
        if code in ("NoSuchKey", "404", "NotFound"):
            return error(f"object {key!r} does not exist in bucket {bucket!r}")
        if code in ("PreconditionFailed", "412", "InvalidRange", "416"):
            return SourceChanged(f"s3://{bucket}/{key} changed while it was being read")
        message = str(info.get("Message") or "")[:200]
        return error(f"S3 error {code} {action} s3://{bucket}/{key}: {message}".rstrip(": "),
                     retryable=code in _RETRY_CODES)
    if isinstance(exc, ReadTimeoutError):
        return error(f"stalled: s3://{bucket}/{key} sent no data for the read timeout while {action}",
                     retryable=True)
    if isinstance(exc, (BotoCoreError, OSError)):
        return error(f"S3 endpoint failed {action} s3://{bucket}/{key}: {str(exc)[:200]}", retryable=True)
    return error(f"{action} s3://{bucket}/{key} failed: {type(exc).__name__}: {str(exc)[:200]}")


class _S3Stream:
    def __init__(self, body, start: int, total: int, validator: dict[str, Any], bucket: str, key: str):
        self._body = body
        self.start = start
        self.total = total
        self.validator = validator
        self._bucket = bucket
        self._key = key

    def chunks(self) -> Iterator[bytes]:
        try:
            while True:
                data = self._body.read(CHUNK)
                if not data:
                    return
                yield data
        except Exception as exc:  # botocore raises several unrelated classes mid-stream
            raise s3_failure(exc, self._bucket, self._key, "reading") from None

    def close(self) -> None:
        try:
            self._body.close()
        except Exception:  # closing a broken stream must not hide the original fault
            pass


class S3Source:
    """An S3 object, read in one stream from an offset."""

    def __init__(self, client, bucket: str, key: str):
        self._client = client
        self.bucket = bucket
        self.key = key
        self.description = f"s3://{bucket}/{key}"

    def open(self, offset: int, validator: dict[str, Any] | None) -> _S3Stream:
        validator = validator or {}
        request: dict[str, Any] = {"Bucket": self.bucket, "Key": self.key}
        if offset > 0:
            request["Range"] = f"bytes={offset}-"
            if validator.get("etag"):
                request["IfMatch"] = validator["etag"]
        try:
            response = self._client.get_object(**request)
        except Exception as exc:
            raise s3_failure(exc, self.bucket, self.key, "reading") from None
        if offset > 0:
            match = _CONTENT_RANGE.match(response.get("ContentRange", ""))
            if not match or int(match.group(1)) != offset:
                response["Body"].close()
                raise SourceChanged(f"{self.description} answered a ranged read with {response.get('ContentRange')!r}")
            total = int(match.group(3))
        else:
            total = int(response["ContentLength"])
        found = {"etag": response.get("ETag"), "size": total}
        if validator.get("size") is not None and validator["size"] != total:
            response["Body"].close()
            raise SourceChanged(f"{self.description} changed size from {validator['size']} to {total} bytes")
        return _S3Stream(response["Body"], offset, total, found if offset == 0 else validator, self.bucket, self.key)


@dataclass
class PartDigest:
    """What was sent as one part (or one whole object): its size and digests."""

    number: int
    size: int
    md5: str  # hex
    sha256: str  # base64, as S3 checksums are written

    @classmethod
    def of(cls, number: int, data: bytes) -> PartDigest:
        return cls(number, len(data), hashlib.md5(data, usedforsecurity=False).hexdigest(),
                   base64.b64encode(hashlib.sha256(data).digest()).decode())

    @classmethod
    def of_stream(cls, number: int, body) -> PartDigest:
        """Digests of a readable, seekable body (read to its end, then rewound)."""
        md5, sha, size = hashlib.md5(usedforsecurity=False), hashlib.sha256(), 0
        body.seek(0)
        while chunk := body.read(CHUNK):
            md5.update(chunk)
            sha.update(chunk)
            size += len(chunk)
        body.seek(0)
        return cls(number, size, md5.hexdigest(), base64.b64encode(sha.digest()).decode())


def expected_etag(parts: list[PartDigest], multipart: bool) -> str:
    """The MD5-based ETag S3 gives an unencrypted object made of ``parts``."""
    if not multipart:
        return parts[0].md5
    joined = b"".join(bytes.fromhex(p.md5) for p in parts)
    return f"{hashlib.md5(joined, usedforsecurity=False).hexdigest()}-{len(parts)}"


def expected_checksum(parts: list[PartDigest], multipart: bool) -> str:
    """The SHA-256 checksum S3 reports: the object's, or for multipart the checksum of the part checksums."""
    if not multipart:
        return parts[0].sha256
    joined = b"".join(base64.b64decode(p.sha256) for p in parts)
    return base64.b64encode(hashlib.sha256(joined).digest()).decode()


class S3Target:
    """An object to write, whole or in parts."""

    def __init__(self, client, bucket: str, key: str):
        self._client = client
        self.bucket = bucket
        self.key = key
        self.description = f"s3://{bucket}/{key}"

    def _fail(self, exc: BaseException, action: str) -> StagingError:
        return s3_failure(exc, self.bucket, self.key, action, error=SinkError)

    def put(self, data: bytes, digest: PartDigest | None = None, verify: bool = False) -> PartDigest:
        """Writes the whole object (``digest``: its checksums, when already computed).

        Args:
            verify: Compare what the server answered (its SHA-256 checksum, else its MD5 ETag) with what was
                sent, without another request; :meth:`verify` is the check by a HEAD.

        Raises:
            VerificationFailed: ``verify`` and the answer differs from what was sent.
        """
        digest = digest or PartDigest.of(1, data)
        try:
            response = self._client.put_object(
                Bucket=self.bucket, Key=self.key, Body=data,
                ContentMD5=base64.b64encode(bytes.fromhex(digest.md5)).decode(),
                ChecksumSHA256=digest.sha256,
            )
        except Exception as exc:
            raise self._fail(exc, "writing") from None
        if verify:
            checksum = response.get("ChecksumSHA256")
            etag = (response.get("ETag") or "").strip('"')
            if checksum:
                if checksum != digest.sha256:
                    raise VerificationFailed(f"the SHA-256 checksum of {self.description} differs from what was sent")
            elif _MD5_ETAG.match(etag):
                if etag != digest.md5:
                    raise VerificationFailed(f"the ETag of {self.description} differs from what was sent")
            else:
                self.verify([digest], multipart=False)
        return digest

    def start_multipart(self) -> str:
        try:
            return self._client.create_multipart_upload(
                Bucket=self.bucket, Key=self.key, ChecksumAlgorithm="SHA256"
            )["UploadId"]
        except Exception as exc:
            raise self._fail(exc, "starting a multipart upload to") from None

    def upload_part(self, upload_id: str, number: int, body, digest: PartDigest) -> str:
        """Sends one part from a seekable file-like ``body`` (no copy of the part in memory); its ETag."""
        body.seek(0)
        try:
            response = self._client.upload_part(
                Bucket=self.bucket, Key=self.key, UploadId=upload_id, PartNumber=number, Body=body,
                ContentMD5=base64.b64encode(bytes.fromhex(digest.md5)).decode(),
                ChecksumSHA256=digest.sha256,
            )
        except Exception as exc:
            raise self._fail(exc, f"uploading part {number} of") from None
        return response["ETag"]

    def uploaded_parts(self, upload_id: str) -> set[int] | None:
        """Part numbers the server holds for ``upload_id``; None when the upload no longer exists."""
        numbers: set[int] = set()
        marker = 0
        try:
            while True:
                response = self._client.list_parts(Bucket=self.bucket, Key=self.key, UploadId=upload_id,
                                                   PartNumberMarker=marker)
                numbers.update(p["PartNumber"] for p in response.get("Parts", []))
                if not response.get("IsTruncated"):
                    return numbers
                marker = response["NextPartNumberMarker"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("NoSuchUpload", "404"):
                return None
            raise self._fail(exc, "listing the parts of") from None
        except Exception as exc:
            raise self._fail(exc, "listing the parts of") from None

    def complete(self, upload_id: str, parts: list[tuple[PartDigest, str]]) -> None:
        try:
            self._client.complete_multipart_upload(
                Bucket=self.bucket, Key=self.key, UploadId=upload_id,
                MultipartUpload={"Parts": [
                    {"PartNumber": d.number, "ETag": etag, "ChecksumSHA256": d.sha256} for d, etag in parts
                ]},
            )
        except Exception as exc:
            raise self._fail(exc, "completing the multipart upload of") from None

    def abort(self, upload_id: str) -> None:
        try:
            self._client.abort_multipart_upload(Bucket=self.bucket, Key=self.key, UploadId=upload_id)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchUpload":
                raise self._fail(exc, "aborting the multipart upload of") from None
        except Exception as exc:
            raise self._fail(exc, "aborting the multipart upload of") from None

    def verify(self, parts: list[PartDigest], multipart: bool) -> None:
        """Checks the stored object's size and checksum (or MD5 ETag) against what was sent.

        Raises:
            VerificationFailed (as SinkError): They differ, or the server offers neither to compare.
        """
        try:
            head = self._client.head_object(Bucket=self.bucket, Key=self.key, ChecksumMode="ENABLED")
        except Exception as exc:
            raise self._fail(exc, "checking") from None
        size = sum(p.size for p in parts)
        if int(head["ContentLength"]) != size:
            raise VerificationFailed(f"{self.description} holds {head['ContentLength']} bytes, {size} were sent")
        checksum = head.get("ChecksumSHA256")
        if checksum:
            if checksum.split("-", 1)[0] != expected_checksum(parts, multipart):
                raise VerificationFailed(f"the SHA-256 checksum of {self.description} differs from what was sent")
            return
        etag = (head.get("ETag") or "").strip('"')
        if _MD5_ETAG.match(etag):
            if etag != expected_etag(parts, multipart):
                raise VerificationFailed(f"the ETag of {self.description} differs from what was sent")
            return
        raise VerificationFailed(f"{self.description} offers neither a SHA-256 checksum nor an MD5 ETag to verify")
