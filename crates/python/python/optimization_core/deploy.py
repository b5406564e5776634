"""``model.deploy``'s handle: the engine's OpenAI-compatible server on a background thread."""

from __future__ import annotations

import shutil
import tempfile
from typing import Optional
from urllib.parse import urlsplit

from . import _native


def parse_endpoint(endpoint: str) -> str:
    """The public base URL to advertise, checked: ``http(s)://host[:port][/path]``."""
    try:
        parts = urlsplit(endpoint)
        parts.port  # raises ValueError on a bad port
    except ValueError as error:
        raise ValueError(f"endpoint {endpoint!r}: {error}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"endpoint {endpoint!r}: expected http://host[:port] or https://host[:port]")
    return endpoint.rstrip("/")


class Deployment:
    """A running server. ``url`` is the address to give clients (``endpoint`` if one was given,
    else ``local_url``); the OpenAI API is under ``url + "/v1"``. ``stop()``, or leaving a
    ``with`` block, shuts it down and removes the snapshot of the model it serves."""

    def __init__(self, server: "_native.Server", snapshot: str, endpoint: Optional[str]) -> None:
        self._server = server
        self._snapshot = snapshot
        self.local_url: str = server.address
        self.url: str = endpoint or server.address

    @property
    def running(self) -> bool:
        return self._server.running

    def stop(self) -> None:
        """Stops the server (in-flight requests get up to 5 s) and waits for it."""
        self._server.stop()
        shutil.rmtree(self._snapshot, ignore_errors=True)

    def __enter__(self) -> "Deployment":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Deployment({self.url!r}, local {self.local_url!r}, {state})"


def start(model: "_native.Model", host: str, port: int, api_key: Optional[str],
          endpoint: Optional[str]) -> Deployment:
    public = parse_endpoint(endpoint) if endpoint is not None else None
    snapshot = tempfile.mkdtemp(prefix="truthgpt-deploy-")
    try:
        # The server loads a model directory, as `truthgpt serve` does; its name is the model id.
        model.save(f"{snapshot}/truthgpt")
        server = _native.Server.start(f"{snapshot}/truthgpt", host=host, port=port,
                                      api_keys=[api_key] if api_key else [])
    except BaseException:
        shutil.rmtree(snapshot, ignore_errors=True)
        raise
    return Deployment(server, snapshot, public)
