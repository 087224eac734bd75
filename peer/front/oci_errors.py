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


def unsupported_route(path: str) -> OciError:
    """404 for a path the registry API does not have here (`/v2/_catalog`, say)."""
    return OciError(404, "UNSUPPORTED", f"no such API route on this mirror: {path[:200]}")


# The spec's code for an upstream's refusal whose body is not in the spec's form, by status
# and by what was asked (a 404 says which kind of thing is unknown).
_CODE_OF_STATUS = {
    400: "UNSUPPORTED",
    401: "UNAUTHORIZED",
    403: "DENIED",
    405: "UNSUPPORTED",
    429: "TOOMANYREQUESTS",
}
_UNKNOWN_OF_KIND = {"manifests": "MANIFEST_UNKNOWN", "blobs": "BLOB_UNKNOWN"}


def in_spec_form(status: int, body: bytes, kind: str | None) -> bytes | None:
    """None when `body` already is an OCI error document; else one for `status`, for a
    request about `kind` ("manifests", "blobs", "tags", "referrers", None: the API root)."""
    try:
        errors = json.loads(body).get("errors")
        if (
            isinstance(errors, list)
            and errors
            and all(isinstance(e, dict) and isinstance(e.get("code"), str) for e in errors)
        ):
            return None
    except (ValueError, AttributeError, RecursionError):
        pass
    if status == 404:
        code = _UNKNOWN_OF_KIND.get(kind or "", "NAME_UNKNOWN")
    else:
        code = _CODE_OF_STATUS.get(status, "UNKNOWN")
    message = f"the upstream registry answered {status}"
    return json.dumps({"errors": [{"code": code, "message": message}]}).encode()
