"""A small client of the CRI ImageService: PullImage, RemoveImage and ImageStatus, the calls
`crictl pull` and `crictl rmi` make, which is how the kubelet pulls (containerd's CRI plugin:
three downloads at a time, the snapshotter unpacks).

gRPC itself (HTTP/2 over the runtime's unix socket) is grpcio's. The few protobuf messages are
written here from the published CRI API (k8s.io/cri-api, pkg/apis/runtime/v1/api.proto):

    service ImageService (package runtime.v1)
    message ImageSpec            { string image = 1; ... }
    message PullImageRequest     { ImageSpec image = 1; AuthConfig auth = 2; ... }
    message PullImageResponse    { string image_ref = 1; }
    message RemoveImageRequest   { ImageSpec image = 1; }
    message ImageStatusRequest   { ImageSpec image = 1; bool verbose = 2; }
    message ImageStatusResponse  { Image image = 1; map<string, string> info = 2; }
    message Image                { string id = 1; repeated string repo_tags = 2;
                                   repeated string repo_digests = 3; uint64 size = 4; ... }

A field this client does not know is skipped, as protobuf readers do.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import grpc

SERVICE = "/runtime.v1.ImageService/"
_VARINT, _FIXED64, _BYTES, _FIXED32 = 0, 1, 2, 5


class CriError(Exception):
    """The runtime refused a call (its gRPC status and message)."""


@dataclass(frozen=True)
class Image:
    id: str
    repo_tags: list[str]
    repo_digests: list[str]
    size: int


class ImageService:
    """The ImageService of the CRI runtime listening on `socket` (a unix socket path)."""

    def __init__(self, socket: Path, timeout: float = 3600.0) -> None:
        self.timeout = timeout
        self._channel = grpc.insecure_channel(f"unix://{socket.resolve()}")  # absolute

    def pull(self, image: str) -> str:
        """Pull `image` (a reference); returns the image's id (its config digest)."""
        answer = self._call("PullImage", _message(1, _image_spec(image)))
        return _string(_fields(answer).get(1, [b""])[0])

    def remove(self, image: str) -> None:
        """Remove `image` (a reference or id). Removing an image that is not there is no
        error (as in the CRI's contract)."""
        self._call("RemoveImage", _message(1, _image_spec(image)))

    def status(self, image: str) -> Image | None:
        """The image, or None when the runtime does not have it."""
        answer = _fields(self._call("ImageStatus", _message(1, _image_spec(image))))
        if 1 not in answer:
            return None
        fields = _fields(_bytes(answer[1][0]))
        return Image(
            id=_string(fields.get(1, [b""])[0]),
            repo_tags=[_string(v) for v in fields.get(2, [])],
            repo_digests=[_string(v) for v in fields.get(3, [])],
            size=int(fields.get(4, [0])[0]),
        )

    def close(self) -> None:
        self._channel.close()

    def _call(self, method: str, request: bytes) -> bytes:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(
            SERVICE + method  # no serializers: bytes in, bytes out
        )
        try:
            answer: bytes = call(request, timeout=self.timeout)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            raise CriError(f"{method}: {code}: {details}") from exc
        return answer


# ---- the protobuf wire format, as much as these messages need -----------------------------


def _image_spec(image: str) -> bytes:
    return _message(1, image.encode())


def _message(number: int, payload: bytes) -> bytes:
    """A length-delimited field (a string, bytes, or an embedded message)."""
    return _varint(number << 3 | _BYTES) + _varint(len(payload)) + payload


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _read_varint(data: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(data) or shift > 63:
            raise CriError("a malformed protobuf varint in the runtime's answer")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, pos


def _fields(data: bytes) -> dict[int, list[int | bytes]]:
    """Every field of one message: number -> values in order (varints as ints, the rest as
    bytes)."""
    fields: dict[int, list[int | bytes]] = {}
    pos = 0
    while pos < len(data):
        key, pos = _read_varint(data, pos)
        number, kind = key >> 3, key & 7
        value: int | bytes
        if kind == _VARINT:
            value, pos = _read_varint(data, pos)
        elif kind == _BYTES:
            length, pos = _read_varint(data, pos)
            if pos + length > len(data):
                raise CriError("a protobuf field runs past the runtime's answer")
            value, pos = data[pos : pos + length], pos + length
        elif kind in (_FIXED64, _FIXED32):
            width = 8 if kind == _FIXED64 else 4
            value, pos = data[pos : pos + width], pos + width
        else:
            raise CriError(f"protobuf wire type {kind} in the runtime's answer")
        fields.setdefault(number, []).append(value)
    return fields


def _bytes(value: int | bytes) -> bytes:
    if not isinstance(value, bytes):
        raise CriError("a number where the CRI API has a message or a string")
    return value


def _string(value: int | bytes) -> str:
    return _bytes(value).decode("utf-8", "replace")
