"""Error answers in the OCI distribution error JSON form."""

from __future__ import annotations

import json


class OciError(Exception):
    """An error to send to the client as `{"errors": [{"code", "message", "detail"}]}`."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        detail: object = None,
        headers: tuple[tuple[str, str], ...] = (),
    ) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message
        self.detail = detail
        self.headers = headers

    def body(self) -> bytes:
        entry: dict[str, object] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return json.dumps({"errors": [entry]}).encode()


def upstream_unavailable(upstream: str, reason: str) -> OciError:
    """502: the upstream registry failed; containerd then tries its next host."""
    return OciError(502, "UNAVAILABLE", f"upstream registry {upstream} failed: {reason}")


def digest_invalid(digest: str, reason: str) -> OciError:
    return OciError(400, "DIGEST_INVALID", reason, {"digest": digest[:200]})


def name_unknown(path: str) -> OciError:
    return OciError(404, "NAME_UNKNOWN", f"no such route: {path[:200]}")
