"""How the upstream registry failed us, or refused our client."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class UpstreamRefusal:
    """A 4xx answer from the upstream, passed to the client as it came (401 + WWW-Authenticate)."""

    status: int
    headers: dict[str, str]
    body: bytes


class UpstreamError(Exception):
    """The upstream could not be reached or broke off; the message names it. `status`: the
    HTTP status of an answer that was the failure (a 5xx, say), None for any other failure."""

    def __init__(self, upstream: str, reason: str, status: int | None = None) -> None:
        super().__init__(f"{upstream}: {reason}")
        self.upstream = upstream
        self.reason = reason
        self.status = status


class RegistriesBusy(UpstreamError):
    """The registries clients name hold their share of the node's registry connections: this
    one is not asked now (an upstream failure to the code that asks; 503 to a client)."""
