"""control.py: the JSON-lines socket under bad clients. Every bad request gets an error reply
and the server keeps answering `status`."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import resource
import select
import selectors
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fakes.control_loop import ControlLoop, exchange, read_to_end, reply_of, wait_for

from blocker.control import (
    MAX_REQUEST,
    ControlError,
    ControlServer,
    Handler,
    RequestError,
    Streamed,
    dispatch,
    request,
)
from blocker.refusals import RefusalLog

NOBODY = 65534


def _ban(message: dict[str, Any]) -> object:
    target = message.get("target")
    if not isinstance(target, str):
        raise RequestError("ban needs a target")
    return f"banned {target}"


def handlers() -> dict[str, Handler]:
    return {"status": lambda _m: {"alive": True}, "ban": _ban, "echo": lambda m: m}


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A directory under /tmp: short enough for AF_UNIX paths, traversable by other uids."""
    path = Path(tempfile.mkdtemp(prefix="blk-", dir="/tmp"))
    path.chmod(0o711)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def loop(short_dir: Path) -> Iterator[ControlLoop]:
    running = ControlLoop(str(short_dir / "ctl.sock"), handlers)
    yield running
    running.stop()
    assert running.errors == [], "the control loop died"


def path_of(loop: ControlLoop) -> str:
    return loop.server.path


def assert_still_serving(loop: ControlLoop) -> None:
    assert request(path_of(loop), {"cmd": "status"}) == {"ok": True, "result": {"alive": True}}


def error_of(loop: ControlLoop, data: bytes) -> str:
    reply = reply_of(exchange(path_of(loop), data))
    assert reply["ok"] is False
    assert set(reply) == {"ok", "error"}
    error = reply["error"]
    assert isinstance(error, str)
    return error


# -- answers ------------------------------------------------------------------------------


def test_a_valid_request_is_answered(loop: ControlLoop) -> None:
    assert request(path_of(loop), {"cmd": "ban", "target": "203.0.113.7"}) == {
        "ok": True,
        "result": "banned 203.0.113.7",
    }
    assert loop.server.served == 1


@pytest.mark.parametrize(
    ("data", "error"),
    [
        (b'{"cmd": \n', "request is not valid JSON"),
        (b"{'cmd': 'status'}\n", "request is not valid JSON"),
        (b"\n", "request is not valid JSON"),
        (b"status\n", "request is not valid JSON"),
        (b'{"cmd": "status"} trailing\n', "request is not valid JSON"),
        (b"\xff\xfe{}\n", "request is not valid JSON"),
        (b'{"cmd": "st\xc3atus"}\n', "request is not valid JSON"),
        (b"[1, 2]\n", "request must be a JSON object"),
        (b'"status"\n', "request must be a JSON object"),
        (b"42\n", "request must be a JSON object"),
        (b"null\n", "request must be a JSON object"),
        (b'{"cmd": "shutdown"}\n', "unknown command 'shutdown' (known: ban, echo, status)"),
        (b'{"cmd": 5}\n', "unknown command 5"),
        (b'{"cmd": ["status"]}\n', "unknown command ['status']"),
        (b"{}\n", "unknown command None"),
        (b'{"target": "203.0.113.7"}\n', "unknown command None"),
        (b'{"cmd": "ban"}\n', "ban needs a target"),
        (b'{"cmd": "ban", "target": null}\n', "ban needs a target"),
    ],
)
def test_bad_requests_get_an_error_reply(loop: ControlLoop, data: bytes, error: str) -> None:
    assert error in error_of(loop, data)
    assert_still_serving(loop)


def test_binary_garbage(loop: ControlLoop) -> None:
    rng = random.Random(7)
    for size in (1, 100, 5000):
        garbage = rng.randbytes(size).replace(b"\n", b"") + b"\n"
        assert error_of(loop, garbage) == "request is not valid JSON"
    assert error_of(loop, b"\0" * 1000 + b"\n") == "request is not valid JSON"
    assert_still_serving(loop)


def test_only_the_first_line_of_a_connection_is_answered(loop: ControlLoop) -> None:
    reply = reply_of(exchange(path_of(loop), b'{"cmd": "status"}\n{"cmd": "ban"}\n'))
    assert reply == {"ok": True, "result": {"alive": True}}


def test_a_request_at_the_size_limit_is_served(loop: ControlLoop) -> None:
    head = b'{"cmd": "echo", "pad": "'
    tail = b'"}'
    line = head + b"x" * (MAX_REQUEST - len(head) - len(tail)) + tail
    assert len(line) == MAX_REQUEST
    reply = reply_of(exchange(path_of(loop), line + b"\n"))
    assert reply["ok"] is True
    assert reply["result"]["pad"] == "x" * (MAX_REQUEST - len(head) - len(tail))


def test_a_line_one_byte_over_the_limit_is_refused(loop: ControlLoop) -> None:
    line = b'{"cmd": "echo", "pad": "' + b"x" * MAX_REQUEST + b'"}'
    assert error_of(loop, line + b"\n") == f"request too large (max {MAX_REQUEST} bytes)"
    assert_still_serving(loop)


def test_a_huge_request_is_cut_off_with_an_error(loop: ControlLoop) -> None:
    """16 MiB without a newline: the server answers once it holds > 64 KiB and hangs up, so
    the client cannot push more than socket buffers' worth past the limit."""
    total = 16 * 1024 * 1024
    chunk = b"x" * 65536
    sent = 0
    received = b""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.connect(path_of(loop))
        sock.setblocking(False)
        hung_up = False
        while sent < total and not hung_up:
            readable, writable, _ = select.select([sock], [sock], [], 10)
            assert readable or writable, "the server neither read nor answered"
            if readable:
                break
            try:
                sent += sock.send(chunk)
            except (BrokenPipeError, ConnectionResetError):
                hung_up = True
        sock.settimeout(10)
        received = read_to_end(sock)
    assert sent < 4 * 1024 * 1024
    assert reply_of(received) == {
        "ok": False,
        "error": f"request too large (max {MAX_REQUEST} bytes)",
    }
    assert_still_serving(loop)


def test_a_silent_client_that_leaves(loop: ControlLoop) -> None:
    for _ in range(20):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.connect(path_of(loop))
    assert_still_serving(loop)


def test_a_request_without_newline_then_eof_is_answered(loop: ControlLoop) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(path_of(loop))
        sock.sendall(b'{"cmd": "status"}')
        sock.shutdown(socket.SHUT_WR)
        assert reply_of(read_to_end(sock))["ok"] is True
    assert_still_serving(loop)


def test_a_half_request_does_not_stall_others(loop: ControlLoop) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as slow:
        slow.settimeout(5)
        slow.connect(path_of(loop))
        slow.sendall(b'{"cmd": "ban", "tar')
        for _ in range(5):
            assert_still_serving(loop)
        slow.sendall(b'get": "203.0.113.9"}\n')
        assert reply_of(read_to_end(slow)) == {"ok": True, "result": "banned 203.0.113.9"}


def test_many_concurrent_clients(loop: ControlLoop) -> None:
    # More than MAX_CONNECTIONS: the rest wait in the listen queue and are served in turn.
    clients = []
    try:
        for i in range(100):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            clients.append(sock)
            sock.connect(path_of(loop))  # blocking: waits while the listen backlog is full
            sock.settimeout(10)
            sock.sendall(json.dumps({"cmd": "ban", "target": f"203.0.113.{i}"}).encode() + b"\n")
        replies = [reply_of(read_to_end(sock)) for sock in clients]
    finally:
        for sock in clients:
            sock.close()
    assert replies == [{"ok": True, "result": f"banned 203.0.113.{i}"} for i in range(100)]
    assert_still_serving(loop)


@pytest.mark.parametrize(
    ("answer", "error"),
    [
        (b"not json\n", "unreadable reply"),
        (b"[1]\n", "unexpected reply"),
        (b"", "unreadable reply"),
    ],
)
def test_request_reports_a_bad_reply(short_dir: Path, answer: bytes, error: str) -> None:
    path = str(short_dir / "fake.sock")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(path)
        listener.listen(1)

        def answer_once() -> None:
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                conn.sendall(answer)

        server = threading.Thread(target=answer_once)
        server.start()
        try:
            with pytest.raises(ControlError, match=error):
                request(path, {"cmd": "status"}, timeout=5)
        finally:
            server.join(timeout=10)


def test_request_without_a_daemon(short_dir: Path) -> None:
    with pytest.raises(ControlError, match=r"no such socket \(is blockerd running\?\)"):
        request(str(short_dir / "none.sock"), {"cmd": "status"})


# -- dispatch: the promise "never raises" -------------------------------------------------


@pytest.mark.parametrize("raw", [b"[" * 3000 + b"]" * 3000, b'{"a":' * 3000 + b"1" + b"}" * 3000])
def test_dispatch_survives_deeply_nested_json(raw: bytes) -> None:
    assert len(raw) < MAX_REQUEST
    assert dispatch(handlers(), raw)["ok"] is False


def test_dispatch_survives_a_failing_handler() -> None:
    def broken(_message: dict[str, Any]) -> object:
        raise KeyError("bug")

    assert dispatch({"status": broken}, b'{"cmd": "status"}')["ok"] is False


# -- the socket file ----------------------------------------------------------------------


def test_socket_file_is_0600_and_removed_on_close(short_dir: Path) -> None:
    path = short_dir / "sub" / "ctl.sock"
    running = ControlLoop(str(path), handlers)
    try:
        mode = os.lstat(path).st_mode
        assert stat.S_ISSOCK(mode)
        assert stat.S_IMODE(mode) == 0o600
        assert stat.S_IMODE(os.stat(path.parent).st_mode) == 0o700
    finally:
        running.stop()
    assert not path.exists()


def test_a_stale_socket_file_is_replaced(short_dir: Path) -> None:
    path = short_dir / "ctl.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as dead:
        dead.bind(str(path))  # a daemon killed with -9 leaves this behind
    assert stat.S_ISSOCK(os.lstat(path).st_mode)
    running = ControlLoop(str(path), handlers)
    try:
        assert_still_serving(running)
    finally:
        running.stop()


def test_a_live_socket_makes_a_second_server_refuse(loop: ControlLoop) -> None:
    with pytest.raises(OSError, match="another blockerd is already listening"):
        ControlLoop(path_of(loop), handlers)
    assert_still_serving(loop)


def test_a_file_that_is_not_a_socket_is_left_alone(short_dir: Path) -> None:
    path = short_dir / "ctl.sock"
    path.write_text("precious", encoding="utf-8")
    with pytest.raises(OSError, match="exists and is not a socket"):
        ControlLoop(str(path), handlers)
    assert path.read_text(encoding="utf-8") == "precious"


# -- who may talk -------------------------------------------------------------------------


def test_a_peer_outside_allowed_uids_is_refused(short_dir: Path) -> None:
    running = ControlLoop(
        str(short_dir / "ctl.sock"), handlers, allowed_uids=frozenset({os.geteuid() + 4242})
    )
    try:
        reply = request(path_of(running), {"cmd": "status"})
        assert reply == {"ok": False, "error": f"permission denied for uid {os.geteuid()}"}
        assert (running.server.refused, running.server.served) == (1, 0)
    finally:
        running.stop()
    assert running.errors == []


def test_allowed_uids_admits_the_listed_uid(short_dir: Path) -> None:
    running = ControlLoop(
        str(short_dir / "ctl.sock"), handlers, allowed_uids=frozenset({os.geteuid()})
    )
    try:
        assert_still_serving(running)
    finally:
        running.stop()


# A client run as another uid: plain stdlib, so it needs nothing the venv holds.
PEER = """
import json, socket, sys
try:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(5)
        sock.connect(sys.argv[1])
        try:
            sock.sendall(b'{"cmd": "status"}\\n')
        except BrokenPipeError:
            pass  # a refused peer is answered and hung up on before it writes
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass  # unread request bytes at the server's close: the reply came before it
    print(data.decode(), end="")
except OSError as exc:
    print(json.dumps({"errno": exc.errno}))
"""


def run_as_nobody(path: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-I", "-S", "-c", PEER, path],
        user=NOBODY,
        group=NOBODY,
        extra_groups=[],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
        cwd="/",
    )
    decoded = json.loads(done.stdout)
    assert isinstance(decoded, dict)
    return decoded


@pytest.mark.root("connect as another uid (nobody)")
def test_a_non_root_peer_gets_permission_denied(loop: ControlLoop) -> None:
    path = path_of(loop)
    # With the socket's own mode 0600 the kernel stops the peer at connect().
    assert run_as_nobody(path) == {"errno": 13}
    # Opened up, the filesystem lets it through: SO_PEERCRED still refuses it.
    os.chmod(path, 0o666)
    assert run_as_nobody(path) == {"ok": False, "error": f"permission denied for uid {NOBODY}"}
    assert wait_for(lambda: loop.server.refused == 1)
    assert loop.server.served == 0
    assert_still_serving(loop)


@pytest.mark.root("connect as another uid (nobody)")
def test_a_non_root_peer_listed_in_allowed_uids_is_served(short_dir: Path) -> None:
    running = ControlLoop(
        str(short_dir / "ctl.sock"), handlers, allowed_uids=frozenset({0, NOBODY})
    )
    try:
        os.chmod(path_of(running), 0o666)
        assert run_as_nobody(path_of(running)) == {"ok": True, "result": {"alive": True}}
    finally:
        running.stop()
    assert running.errors == []


def test_running_out_of_descriptors_pauses_accepting_instead_of_spinning(short_dir: Path) -> None:
    # accept() failing with EMFILE leaves the connection queued and the socket readable: a
    # server that kept watching it would spin. It stops watching until the pause runs out.
    selector = selectors.DefaultSelector()
    server = ControlServer(str(short_dir / "ctl.sock"), selector, handlers)
    client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    fillers: list[int] = []
    try:
        client.connect(server.path)
        client.sendall(b'{"cmd": "status"}\n')
        highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 1, hard))
        with contextlib.suppress(OSError):
            while True:
                fillers.append(os.open("/dev/null", os.O_RDONLY))
        for key, _ in selector.select(1.0):
            key.data()
        assert server.paused_until is not None
        assert server.sock not in {key.fileobj for key in selector.get_map().values()}
        assert selector.select(0.05) == []  # nothing left to spin on
        for fd in fillers:
            os.close(fd)
        fillers.clear()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        server.resume(server.paused_until - 0.5)  # too early: still paused
        assert server.paused_until is not None
        server.resume(server.paused_until)
        assert server.paused_until is None
        for _ in range(20):  # accept, read, answer
            for key, _ in selector.select(0.1):
                key.data()
            if not server._buffers and server.served:
                break
        assert reply_of(read_to_end(client)) == {"ok": True, "result": {"alive": True}}
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        client.close()
        server.close()
        selector.close()


# -- what a client can cost the loop (issue 10, part 4) ------------------------------------


def test_refused_peers_cost_the_loop_no_waiting(short_dir: Path) -> None:
    """A refused peer that sends nothing is answered without the loop waiting on it (it used
    to wait 50 ms for each): 100 of them, whose waits would add up to 5 s, are answered well
    within that, and every one gets its answer."""
    selector = selectors.DefaultSelector()
    server = ControlServer(
        str(short_dir / "ctl.sock"),
        selector,
        handlers,
        allowed_uids=frozenset({os.geteuid() + 4242}),
    )
    peers = []
    try:
        started = time.monotonic()
        for _ in range(100):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(server.path)  # silent: sends nothing
            peers.append(sock)
            for key, _ in selector.select(0):
                key.data()
        while server.refused < 100 and time.monotonic() - started < 10:
            for key, _ in selector.select(0.01):
                key.data()
        spent = time.monotonic() - started
        assert server.refused == 100
        # Half of what 100 waits of 50 ms took: generous for a loaded VM (~20 ms here).
        assert spent < 2.5
        for sock in peers:
            sock.settimeout(5)
            assert reply_of(read_to_end(sock))["error"].startswith("permission denied")
    finally:
        for sock in peers:
            sock.close()
        server.close()
        selector.close()


def test_refusals_are_logged_once_per_cause_and_window(caplog: pytest.LogCaptureFixture) -> None:
    refusals = RefusalLog(logging.getLogger("blocker.control"), "control: ", window=60)
    with caplog.at_level("WARNING", logger="blocker.control"):
        for i in range(5):
            refusals.note("uid 1000", "refused a peer with uid 1000", now=100.0 + i)
        refusals.note("idle", "closed a connection idle for 10s", now=101.0)
        refusals.flush(now=130.0)  # the window is still open: nothing yet
        refusals.flush(now=160.0)
        refusals.note("uid 1000", "refused a peer with uid 1000", now=170.0)
    assert [r.getMessage() for r in caplog.records] == [
        "control: refused a peer with uid 1000",
        "control: closed a connection idle for 10s",
        "control: 4 more refusal(s) (uid 1000) in the last 60s",
        "control: refused a peer with uid 1000",
    ]


def test_an_idle_connection_is_closed_and_counted(short_dir: Path) -> None:
    running = ControlLoop(str(short_dir / "ctl.sock"), handlers, idle_timeout=0.3)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as silent:
            silent.settimeout(10)
            silent.connect(path_of(running))
            assert read_to_end(silent) == b""  # closed by the server, not by the timeout
        assert running.server.timed_out == 1
        assert running.server.connections == 0
        assert_still_serving(running)
    finally:
        running.stop()
    assert running.errors == []


def test_connections_over_the_cap_wait_in_the_listen_queue(short_dir: Path) -> None:
    running = ControlLoop(
        str(short_dir / "ctl.sock"), handlers, max_connections=2, idle_timeout=1.0
    )
    idle = [socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) for _ in range(2)]
    try:
        for sock in idle:
            sock.connect(path_of(running))
        assert wait_for(lambda: running.server.connections == 2)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as third:
            third.settimeout(10)
            third.connect(path_of(running))  # queued by the kernel, not accepted yet
            third.sendall(b'{"cmd": "status"}\n')
            # Served only once an idle connection was closed to make room.
            assert reply_of(read_to_end(third)) == {"ok": True, "result": {"alive": True}}
            assert running.server.timed_out >= 1
            assert running.server.served == 1
    finally:
        for sock in idle:
            sock.close()
        running.stop()
    assert running.errors == []


def streamed_handlers(batches: int, progress: list[int]) -> dict[str, Handler]:
    def rows() -> Iterator[list[object]]:
        for i in range(batches):
            progress.append(i)
            yield [{"target": f"203.0.113.{i % 256}", "n": i * 100 + j} for j in range(100)]

    return {**handlers(), "list": lambda _m: Streamed(rows())}


def test_a_streamed_reply_is_one_json_line_and_others_are_served_meanwhile(short_dir: Path) -> None:
    progress: list[int] = []
    running = ControlLoop(str(short_dir / "ctl.sock"), lambda: streamed_handlers(2000, progress))
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as reader:
            reader.settimeout(10)
            reader.connect(path_of(running))
            reader.sendall(b'{"cmd": "list"}\n')
            head = reader.recv(65536)
            assert head.startswith(b'{"ok": true, "result": [{"target": "203.0.113.0"')
            # The reader pauses: the stream waits for it, the loop serves others.
            assert_still_serving(running)
            assert len(progress) < 2000, "the whole reply was built before it was read"
            reply = reply_of(head + read_to_end(reader))
        assert reply["ok"] is True
        assert [row["n"] for row in reply["result"]] == list(range(200_000))
        assert request(path_of(running), {"cmd": "list"})["result"][-1]["n"] == 199_999
    finally:
        running.stop()
    assert running.errors == []


def test_a_client_that_stops_reading_a_streamed_reply_is_dropped(short_dir: Path) -> None:
    progress: list[int] = []
    running = ControlLoop(
        str(short_dir / "ctl.sock"), lambda: streamed_handlers(10**6, progress), idle_timeout=0.5
    )
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as stuck:
            stuck.connect(path_of(running))
            stuck.sendall(b'{"cmd": "list"}\n')  # and never reads
            assert wait_for(lambda: running.server.timed_out == 1)
            assert running.server.connections == 0
            assert len(progress) < 1000  # made only as far as the socket buffers took it
        assert_still_serving(running)
    finally:
        running.stop()
    assert running.errors == []


def test_a_streamed_reply_that_fails_midway_is_cut_short(short_dir: Path) -> None:
    def rows() -> Iterator[list[object]]:
        yield [1, 2]
        raise OSError("netlink went away")

    running = ControlLoop(
        str(short_dir / "ctl.sock"), lambda: {**handlers(), "list": lambda _m: Streamed(rows())}
    )
    try:
        with pytest.raises(ControlError, match="cut short"):
            request(path_of(running), {"cmd": "list"})
        assert_still_serving(running)
    finally:
        running.stop()
    assert running.errors == []
