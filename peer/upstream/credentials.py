"""A node's own registry credentials: a docker `config.json` or containers `auth.json` file
(`--auth-file`), the format `docker login`, `podman login` and Kubernetes' dockerconfigjson
secrets write:

    {"auths": {"registry.example.com": {"auth": "<base64 of user:password>"},
               "ghcr.io/team": {"username": "u", "password": "p"}}}

A key may name a registry, or a registry and a repository prefix (containers' auth.json): the
longest key that covers a repository wins. Docker Hub's legacy key
(`https://index.docker.io/v1/`) counts as `docker.io`. Identity tokens and credential helpers
are not supported: such entries are refused with a message at start-up, not skipped in
silence.

Secrets never appear in a repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from peer.upstream.client import DOCKER_HUB

log = logging.getLogger("pollen.credentials")

DOCKER_HUB_NAMES = {"index.docker.io", "registry-1.docker.io", DOCKER_HUB}
FILE_LIMIT = 1024 * 1024


class BadAuthFile(ValueError):
    """The file cannot be used (the message names the file and the entry, never a secret)."""


@dataclass(frozen=True, slots=True)
class Login:
    username: str
    password: str = field(repr=False)

    def basic(self) -> str:
        """The Authorization header value for HTTP Basic."""
        pair = f"{self.username}:{self.password}".encode()
        return "Basic " + base64.b64encode(pair).decode("ascii")


@dataclass(frozen=True)
class Credentials:
    """Logins by key: `registry` or `registry/repository-prefix`."""

    logins: dict[str, Login] = field(default_factory=dict, repr=False)

    def for_repository(self, registry: str, repository: str) -> Login | None:
        """The login for `registry/repository` (the longest covering key), or None."""
        path = f"{registry}/{repository}"
        covering = [
            (len(key), login)
            for key, login in self.logins.items()
            if key == registry or path == key or path.startswith(key + "/")
        ]
        return max(covering, key=lambda c: c[0])[1] if covering else None

    def registries(self) -> set[str]:
        return {key.partition("/")[0] for key in self.logins}


def load_auth_file(path: Path) -> Credentials:
    """Read an auth file.

    Raises:
        BadAuthFile: unreadable, not the format, or an entry we cannot use.
    """
    try:
        st = path.stat()
        if st.st_size > FILE_LIMIT:
            raise BadAuthFile(f"{path}: over {FILE_LIMIT} bytes")
        raw = path.read_bytes()
    except OSError as exc:
        raise BadAuthFile(f"cannot read {path}: {exc.strerror}") from None
    if stat.S_IMODE(st.st_mode) & 0o077 and os.getuid() == st.st_uid:
        # Not refused (a mounted secret's mode is not always ours to choose), but said.
        log.warning(
            "%s can be read by others than its owner (mode %o): it holds registry passwords",
            path,
            stat.S_IMODE(st.st_mode),
        )
    try:
        document = json.loads(raw)
    except (ValueError, RecursionError):
        raise BadAuthFile(f"{path} is not JSON") from None
    if not isinstance(document, dict):
        raise BadAuthFile(f"{path}: not a JSON object")
    if document.get("credHelpers") or document.get("credsStore"):
        raise BadAuthFile(
            f"{path}: credential helpers (credHelpers, credsStore) are not supported: write "
            "the logins into the file (`docker login` with no helper, or `podman login "
            "--authfile`)"
        )
    auths = document.get("auths", {})
    if not isinstance(auths, dict):
        raise BadAuthFile(f'{path}: "auths" is not an object')
    logins = {}
    for key, entry in auths.items():
        logins[_normal_key(key, path)] = _login(key, entry, path)
    return Credentials(logins)


def _normal_key(key: object, path: Path) -> str:
    if not isinstance(key, str) or not key:
        raise BadAuthFile(f"{path}: an empty or non-string registry key")
    text = key.removeprefix("https://").removeprefix("http://").rstrip("/")
    host, slash, rest = text.partition("/")
    if host in DOCKER_HUB_NAMES:
        host = DOCKER_HUB
        if rest in ("v1", "v2"):
            rest = ""
    return f"{host}/{rest}" if slash and rest else host


def _login(key: str, entry: object, path: Path) -> Login:
    if not isinstance(entry, dict):
        raise BadAuthFile(f"{path}: the entry for {key[:100]!r} is not an object")
    if entry.get("identitytoken"):
        raise BadAuthFile(
            f"{path}: the entry for {key[:100]!r} has an identity token (OAuth refresh token): "
            "not supported; log in with a user name and password or an access token"
        )
    username, password = entry.get("username"), entry.get("password")
    if isinstance(username, str) and isinstance(password, str) and username:
        return Login(username, password)
    auth = entry.get("auth")
    if isinstance(auth, str) and auth:
        try:
            user, sep, secret = base64.b64decode(auth, validate=True).decode("utf-8").partition(":")
        except (binascii.Error, UnicodeDecodeError):
            raise BadAuthFile(
                f"{path}: the auth of {key[:100]!r} is not base64 of user:password"
            ) from None
        if sep and user:
            return Login(user, secret)
    raise BadAuthFile(f"{path}: the entry for {key[:100]!r} has no user name and password")
