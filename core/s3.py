"""The boto3 S3 client every layer uses, configured the standard AWS way.

Credentials, region and endpoint come from boto3's own chain: environment variables
(``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``, ``AWS_REGION``/``AWS_DEFAULT_REGION``,
``AWS_ENDPOINT_URL`` or ``AWS_ENDPOINT_URL_S3``), the shared files and ``AWS_PROFILE``, then
instance or task roles. Nothing S3-specific appears in a job's configuration: a job names
``s3://bucket/key`` and this module finds the rest. The local stack (moto's server) is reached
through ``AWS_ENDPOINT_URL=http://127.0.0.1:P``.

`beam_s3_options` gives Beam's S3 filesystem the same endpoint and region as pipeline options
(never credentials: those would show in the job's options; Beam's client finds them through the
same chain).

>>> import os
>>> env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "AWS_DEFAULT_REGION": "eu-west-1"}
>>> sorted(beam_s3_options(env).items())
[('s3_endpoint_url', 'http://127.0.0.1:9'), ('s3_region_name', 'eu-west-1')]
"""

from __future__ import annotations

import os
import threading
from typing import Mapping

_CLIENT_SETTINGS = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION",
                    "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")  # fmt: skip
_clients: dict[tuple, object] = {}
_lock = threading.Lock()
CONNECT_TIMEOUT_S = 5
READ_TIMEOUT_S = 60


def s3_client():
    """A boto3 S3 client from the standard AWS configuration (one per process and configuration).

    Timeouts are bounded so that an unreachable endpoint fails in seconds; retries follow
    boto3's own settings (``AWS_RETRY_MODE``, ``AWS_MAX_ATTEMPTS``).
    """
    key = tuple(os.environ.get(name) for name in _CLIENT_SETTINGS)
    with _lock:
        client = _clients.get(key)
        if client is None:
            import boto3
            from botocore.config import Config

            session = boto3.session.Session()
            client = session.client("s3", config=Config(connect_timeout=CONNECT_TIMEOUT_S, read_timeout=READ_TIMEOUT_S))
            _clients[key] = client
        return client


def beam_s3_options(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """Beam ``S3Options`` (``s3_endpoint_url``, ``s3_region_name``) from the standard AWS
    environment variables; empty when none is set (Beam's client then uses boto3's defaults)."""
    environ = os.environ if environ is None else environ
    options = {}
    endpoint = environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        options["s3_endpoint_url"] = endpoint
    region = environ.get("AWS_REGION") or environ.get("AWS_DEFAULT_REGION")
    if region:
        options["s3_region_name"] = region
    return options
