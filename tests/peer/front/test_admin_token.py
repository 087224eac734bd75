"""The admin token file: made (mode 0600, a random token) when missing, at the default place
or at the one --admin-token-file names (systemd's StateDirectory holds it from the first
start on); an empty file is refused."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import click
import pytest

from peer.cli import run
from peer.front.admin import load_admin_token


@pytest.mark.parametrize("given", [False, True])
def test_a_missing_token_file_is_made_private(tmp_path: Path, given: bool) -> None:
    path = tmp_path / "state" / "admin.token"
    token, where = load_admin_token(path if given else None, tmp_path / "state")
    assert where == path and len(token) >= 32
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_admin_token(path if given else None, tmp_path / "state")[0] == token


def test_an_empty_token_file_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "admin.token"
    path.write_text("\n")
    with pytest.raises(ValueError, match="empty"):
        load_admin_token(path, tmp_path)


def test_the_option_accepts_a_file_that_does_not_exist_yet(tmp_path: Path) -> None:
    args = ["--admin-token-file", str(tmp_path / "state" / "admin.token")]
    try:
        with run.make_context("run", args) as ctx:
            assert ctx.params["admin_token_file"] == tmp_path / "state" / "admin.token"
    except click.BadParameter as exc:  # the unit's first start failed exactly so
        pytest.fail(str(exc))


def test_a_directory_made_for_the_token_file_is_the_node_users_alone(tmp_path: Path) -> None:
    """Its own directory: the missing ones above it get the umask's mode, as `mkdir -p`."""
    old = os.umask(0o022)
    try:
        load_admin_token(tmp_path / "made" / "state" / "admin.token", tmp_path / "data")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "made" / "state").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "made").stat().st_mode) == 0o755


@pytest.mark.parametrize("given", [False, True])
@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_an_existing_token_file_others_may_read_is_warned_of_and_left_as_it_is(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, given: bool, mode: int
) -> None:
    """The operator's file (a mounted secret, say): not the node's to chmod."""
    path = tmp_path / "preheat.token"
    path.write_text("operators-token\n")
    os.chmod(path, mode)
    with caplog.at_level(logging.WARNING, logger="pollen.admin"):
        token, _ = load_admin_token(path if given else None, tmp_path, "preheat.token")
    assert token == b"operators-token"
    assert stat.S_IMODE(path.stat().st_mode) == mode
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(said) == 1 and f"{path} is mode {mode:04o}" in said[0]


def test_a_token_file_of_the_node_users_alone_is_not_warned_of(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "admin.token"
    path.write_text("operators-token\n")
    for mode in (0o600, 0o400):
        os.chmod(path, mode)
        with caplog.at_level(logging.WARNING, logger="pollen.admin"):
            load_admin_token(path, tmp_path)
    load_admin_token(None, tmp_path / "new")  # made by the node
    with caplog.at_level(logging.WARNING, logger="pollen.admin"):
        load_admin_token(None, tmp_path / "new")
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


OTHER = 54321  # a uid that is neither root nor the node's (the tests run as root)


def test_a_token_file_another_user_made_is_refused(tmp_path: Path) -> None:
    """A data directory others may add to (sticky, as /tmp): another user who puts an
    admin.token there first knows the token the node would take."""
    os.chmod(tmp_path, 0o1777)
    planted = tmp_path / "admin.token"
    planted.write_text("known-to-them\n")
    os.chown(planted, OTHER, OTHER)
    with pytest.raises(ValueError, match=f"{planted} is owned by uid {OTHER}, neither"):
        load_admin_token(None, tmp_path)


def test_a_token_link_another_user_made_is_refused(tmp_path: Path) -> None:
    """To a file of root's they can read (its content is the token)."""
    known = tmp_path / "hostname"
    known.write_text("node-1\n")
    planted = tmp_path / "admin.token"
    planted.symlink_to(known)
    os.lchown(planted, OTHER, OTHER)
    with pytest.raises(ValueError, match=f"{planted} is a symbolic link owned by uid {OTHER}"):
        load_admin_token(None, tmp_path)


def test_a_token_link_of_root_to_a_file_of_root_is_taken(tmp_path: Path) -> None:
    """A Kubernetes Secret's volume: token -> ..data/token, root's."""
    (tmp_path / "..data").mkdir()
    (tmp_path / "..data" / "token").write_text("from-the-secret\n")
    os.chmod(tmp_path / "..data" / "token", 0o400)
    (tmp_path / "token").symlink_to("..data/token")
    assert load_admin_token(tmp_path / "token", tmp_path)[0] == b"from-the-secret"
