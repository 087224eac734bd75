"""The CPU floor benchmark: every step on real bytes through another process, failures of
that process reported (and the process reaped), the command's report and JSON."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from click.testing import CliRunner

from bench.cpu_floor import (
    _peer,
    _receive_all,
    main,
    measure,
    receive_seconds,
    serve_seconds,
    write_random_file,
)

SIZE = 4 * 1024 * 1024
STEPS = ("verify", "receive", "serve", "store_reused_pages", "store_new_pages")


def test_every_step_is_measured_and_nothing_is_left_behind(tmp_path: Path) -> None:
    result = measure(tmp_path, SIZE, pause=0.0)
    for step in STEPS:
        assert result[step] > 0, step
    assert result["cold_floor_least"] < result["cold_floor"]  # it leaves out one copy
    assert list(tmp_path.iterdir()) == []


def test_the_transfers_move_the_whole_file_through_another_process(tmp_path: Path) -> None:
    source = tmp_path / "source.bin"
    write_random_file(source, SIZE + 12345)  # not a multiple of any buffer
    assert receive_seconds(source) > 0  # raises unless every byte arrived
    assert serve_seconds(source) > 0  # raises unless the reader counted every byte


def test_a_peer_that_ends_without_connecting_fails_at_once() -> None:
    with pytest.raises(RuntimeError, match="exit 3"), _peer("import sys; sys.exit(3)"):
        pass


def test_a_short_transfer_fails_and_the_peer_is_reaped(tmp_path: Path) -> None:
    short = (
        "import socket, sys\n"
        "with socket.create_connection(('127.0.0.1', int(sys.argv[1]))) as s:\n"
        "    s.sendall(b'x' * 10)\n"
    )
    children: list[subprocess.Popen[bytes]] = []
    with (
        pytest.raises(RuntimeError, match="received 10 of 100 bytes"),
        _peer(short) as (sock, child),
    ):
        children.append(child)
        _receive_all(sock, 100)
    assert children[0].returncode is not None


def test_a_reader_that_gets_too_few_bytes_fails_the_serve(tmp_path: Path) -> None:
    # The reader expects one byte more than the file has: it exits 1, and the serve says so.
    source = tmp_path / "source.bin"
    write_random_file(source, 1024)
    reader = (
        "import socket, sys\n"
        "with socket.create_connection(('127.0.0.1', int(sys.argv[1]))) as s:\n"
        "    n = 0\n"
        "    while chunk := s.recv(65536):\n"
        "        n += len(chunk)\n"
        "sys.exit(0 if n == 1025 else 1)\n"
    )
    with pytest.raises(RuntimeError, match=r"failed \(exit 1\)"), _peer(reader) as (sock, _):
        sock.sendall(source.read_bytes())
        sock.shutdown(2)


def test_the_command_reports_each_step_and_writes_json(tmp_path: Path) -> None:
    out = tmp_path / "floor.json"
    args = ["--size", "2MiB", "--repeat", "2", "--pause", "0", "--dir", str(tmp_path)]
    result = CliRunner().invoke(main, [*args, "--json", str(out)])
    assert result.exit_code == 0, result.output
    for label in ("verify (sha256)", "least of what was measured", "targets: cold path 1.0"):
        assert label in result.output
    written = json.loads(out.read_text())
    assert written["size"] == 2 * 1024 * 1024
    assert len(written["runs"]) == 2
    for step in STEPS:
        assert written["lowest"][step] == min(run[step] for run in written["runs"])


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--size", "1KiB"], "--size"),
        (["--repeat", "0"], "--repeat"),
        (["--pause", "-1"], "--pause"),
    ],
)
def test_bad_options_are_refused_before_any_work(args: list[str], option: str) -> None:
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2
    assert option in result.output
