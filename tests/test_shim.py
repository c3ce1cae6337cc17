"""The compiled hook shim (hooks/hookd-shim.c), run the way libvirt runs it.

Each test execs the sanitizer build (tests/harness/shim.py) with libvirt's environment
(only PATH, LC_ALL and HOME), the XML on stdin and its settings beside it, against a
stand-in hookd on a socket in the test's directory that speaks hookd.hookpath.shimwire. The
real daemon behind the real libvirtd is tests/integration's business.
"""

from __future__ import annotations

import os
import socket
import subprocess
import threading
import time

import pytest

from hookd.hookpath import shimwire
from hookd.hookpath.shimwire import HookReply
from tests.harness.shim import sanitized_shim

LIBVIRT_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/"}
XML = b"<domain type='qemu'><name>instance-1</name>\n</domain>\n"


class StandIn:
    """A listening socket whose connections `answer(conn, request_or_None)` serves, one thread each."""

    def __init__(self, path, answer, backlog: int = 16):
        self.path = str(path)
        self.answer = answer
        self.requests = []
        self.connections = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        self.sock.listen(backlog)
        self._threads = []
        self._accepting = threading.Event()
        self._stop = False
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._accepting.set()
        self._thread.start()
        return self

    def _loop(self):
        self.sock.settimeout(0.05)
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            t = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            t.start()
            self._threads.append(t)

    def _serve(self, conn):
        with conn:
            conn.settimeout(10)
            request = None
            try:
                data = b""
                while b"\n" not in data:
                    chunk = conn.recv(4096)
                    if not chunk:
                        break
                    data += chunk
                if b"\n" in data:
                    head = data[:data.index(b"\n") + 1]
                    n = sum(int(x) for x in head.split()[4:7])
                    while len(data) - len(head) < n:
                        chunk = conn.recv(1 << 20)
                        if not chunk:
                            break
                        data += chunk
                    request = shimwire.decode_request(data)
                    self.requests.append(request)
            except (OSError, shimwire.ShimWireError):
                pass
            try:
                self.answer(conn, request)
            except OSError:          # the shim gave up or a filler went away
                pass

    def close(self):
        self._stop = True
        for t in self._threads:
            t.join(15)
        self._thread.join(5) if self._thread.is_alive() else None
        self.sock.close()


def reply_with(reply: HookReply):
    return lambda conn, req: conn.sendall(shimwire.encode_reply(reply))


def raw(data: bytes):
    return lambda conn, req: conn.sendall(data)


def hang(event: threading.Event):
    return lambda conn, req: event.wait(30)


@pytest.fixture
def hook(tmp_path):
    """install(settings=...) -> path of the shim in tmp_path/qemu.d with those settings."""
    hooks = tmp_path / "qemu.d"
    hooks.mkdir()
    target = hooks / "50-hookd"
    target.write_bytes(sanitized_shim().read_bytes())
    target.chmod(0o755)

    def install(settings: str = None, **values):
        if settings is None:
            values.setdefault("socket", tmp_path / "hookd.sock")
            values.setdefault("timeout", 2)
            values.setdefault("on_unreachable", "allow")
            settings = "".join(f"{k} = {v}\n" for k, v in values.items())
        (hooks / "50-hookd.conf").write_text(settings)
        return target
    return install


@pytest.fixture
def stand_ins():
    made = []

    def make(*args, **kw):
        s = StandIn(*args, **kw)
        made.append(s)
        return s
    yield make
    for s in made:
        s.close()


def run(path, *args, xml=XML, timeout=30):
    t0 = time.monotonic()
    res = subprocess.run([str(path), *args], input=xml, capture_output=True, env=LIBVIRT_ENV, timeout=timeout)
    res.elapsed = time.monotonic() - t0
    res.err = res.stderr.decode()
    return res


@pytest.mark.parametrize("args", [("i", "start", "begin", "-"), ("i", "started", "begin", "-"),
                                  ("i", "stopped", "end", "-"), ("i", "release", "end", "destroyed"),
                                  ("i", "reconnect", "begin", "-"), ("i", "prepare", "end", "-"),
                                  ("i", "migrate", "end", "-"), ("i", "prepare"), ()])
def test_every_other_operation_exits_at_once_without_asking(hook, tmp_path, stand_ins, args):
    """reconnect in particular: a failing reconnect hook makes libvirt kill the guest."""
    s = stand_ins(tmp_path / "hookd.sock", reply_with(HookReply("deny", "no"))).start()
    res = run(hook(on_unreachable="deny", socket=tmp_path / "hookd.sock"), *args)
    assert (res.returncode, res.stdout, res.err) == (0, b"", "")
    assert s.connections == 0


@pytest.mark.parametrize("op", ["prepare", "migrate", "restore"])
def test_allow_exits_0_with_empty_stdout_and_sends_the_call(hook, tmp_path, stand_ins, op):
    s = stand_ins(tmp_path / "hookd.sock", reply_with(HookReply("allow"))).start()
    before = time.time()
    res = run(hook(timeout=2.5), "instance-1", op, "begin", "-")
    assert (res.returncode, res.stdout, res.err) == (0, b"", "")
    (req,) = s.requests
    assert (req.op, req.sub, req.domain, req.extra, req.xml) == (op, "begin", "instance-1", "-", XML)
    # The deadline is the shim's own: its start plus the timeout, on the wall clock.
    assert before + 2.5 - 0.5 <= req.deadline <= time.time() + 2.5


def test_deny_exits_1_with_the_reason_on_one_stderr_line(hook, tmp_path, stand_ins):
    reason = "hookd: instance x has serial 'a' but policy wants 'b'\r\x1b[31mred"
    stand_ins(tmp_path / "hookd.sock", raw(b"HOOKD1 deny %d\n%s" % (len(reason), reason.encode()))).start()
    res = run(hook(), "instance-1", "prepare", "begin", "-")
    assert res.returncode == 1 and res.stdout == b""
    assert res.err == "hookd: instance x has serial 'a' but policy wants 'b'  [31mred\n"


def test_deny_without_a_reason_names_the_domain(hook, tmp_path, stand_ins):
    stand_ins(tmp_path / "hookd.sock", raw(b"HOOKD1 deny 0\n")).start()
    res = run(hook(), "instance-7", "prepare", "begin", "-")
    assert (res.returncode, res.err) == (1, "hookd: start of instance-7 refused by policy\n")


@pytest.mark.parametrize("policy,code,word", [("allow", 0, "allowing instance-1 unchecked"),
                                             ("deny", 1, "refusing instance-1")])
def test_no_socket_applies_on_unreachable(hook, tmp_path, policy, code, word):
    res = run(hook(on_unreachable=policy), "instance-1", "prepare", "begin", "-")
    assert res.returncode == code and res.stdout == b""
    assert word in res.err and f"unreachable at {tmp_path}/hookd.sock (connect: No such file" in res.err
    assert res.err.count("\n") == 1


def test_refused_connection_is_unreachable(hook, tmp_path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(tmp_path / "hookd.sock"))       # bound, never listening
    try:
        res = run(hook(on_unreachable="deny"), "instance-1", "prepare", "begin", "-")
    finally:
        s.close()
    assert res.returncode == 1 and "(connect: Connection refused)" in res.err


def test_hung_hookd_is_bounded_by_the_timeout(hook, tmp_path, stand_ins):
    release = threading.Event()
    stand_ins(tmp_path / "hookd.sock", hang(release)).start()
    try:
        res = run(hook(timeout=0.5, on_unreachable="deny"), "instance-1", "prepare", "begin", "-")
    finally:
        release.set()
    assert res.returncode == 1 and "(no answer within 0.5s)" in res.err
    assert 0.4 <= res.elapsed < 5, res.elapsed


def test_full_backlog_is_retried_until_hookd_accepts(hook, tmp_path, stand_ins):
    """A boot storm fills the listen backlog; AF_UNIX connect then fails at once with EAGAIN."""
    s = stand_ins(tmp_path / "hookd.sock", reply_with(HookReply("allow")), backlog=0)
    fillers = []
    while True:                      # fill the backlog: nobody accepts yet
        c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        c.setblocking(False)
        try:
            c.connect(s.path)
        except BlockingIOError:
            c.close()
            break
        fillers.append(c)
        assert len(fillers) < 100
    proc = subprocess.Popen([str(hook(timeout=5)), "instance-1", "prepare", "begin", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=LIBVIRT_ENV)
    proc.stdin.write(XML)
    proc.stdin.close()
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(0.3)               # still retrying: the backlog is full
    s.start()                        # now hookd accepts: the fillers, then the shim
    for c in fillers:
        c.close()
    assert proc.wait(10) == 0 and proc.stderr.read() == b""
    assert len(s.requests) == 1 and s.requests[0].xml == XML


@pytest.mark.parametrize("answer,reason", [
    (raw(b""), "hookd closed the connection without an answer"),
    (raw(b"HTTP/1.1 200 OK\r\n\r\n"), "answer is not in hookd's shim format"),
    (raw(b"HOOKD1 allow 1\nx"), "answer is not in hookd's shim format"),
    (raw(b"HOOKD1 deny 4001\n" + b"x" * 4001), "answer is not in hookd's shim format"),
    (raw(b"HOOKD1 deny 9999\n" + b"x" * 200), "answer is not in hookd's shim format"),
    (raw(b"HOOKD1 deny 10\nabc"), "hookd closed the connection without an answer"),
    (raw(b"\x00\x00\x00\x10{\"action\":\"deny\"}"), "answer is not in hookd's shim format"),
])
def test_malformed_answers_are_unreachable_never_a_deny(hook, tmp_path, stand_ins, answer, reason):
    stand_ins(tmp_path / "hookd.sock", answer).start()
    res = run(hook(on_unreachable="allow"), "instance-1", "prepare", "begin", "-")
    assert res.returncode == 0 and f"({reason})" in res.err, res.err


def test_xml_is_read_to_one_byte_past_the_limit(hook, tmp_path, stand_ins):
    s = stand_ins(tmp_path / "hookd.sock", reply_with(HookReply("allow"))).start()
    big = b"<domain>" + b"x" * shimwire.MAX_XML
    res = run(hook(timeout=20), "instance-1", "prepare", "begin", "-", xml=big)
    assert res.returncode == 0, res.err
    (req,) = s.requests
    assert len(req.xml) == shimwire.MAX_XML + 1 and req.xml == big[:shimwire.MAX_XML + 1]


def test_no_stdin_is_an_empty_document(hook, tmp_path, stand_ins):
    s = stand_ins(tmp_path / "hookd.sock", reply_with(HookReply("allow"))).start()
    res = subprocess.run([str(hook()), "instance-1", "prepare", "begin", "-"], stdin=subprocess.DEVNULL,
                         capture_output=True, env=LIBVIRT_ENV, timeout=30)
    assert res.returncode == 0 and s.requests[0].xml == b""


@pytest.mark.parametrize("settings,fragment", [
    ("socket = relative.sock\n", "line 1: socket must be an absolute path"),
    ("socket = /" + "s" * 120 + "\n", "line 1: socket must be an absolute path of at most 107 bytes"),
    ("# comment\n\ntimeout = 0\n", "line 3: timeout must be 0.1 to 300 seconds"),
    ("timeout = 5s\n", "line 1: timeout must be 0.1 to 300 seconds"),
    ("on_unreachable = maybe\n", "line 1: on_unreachable must be allow or deny"),
    ("colour = blue\n", "line 1: unknown key"),
    ("just words\n", "line 1: expected key = value"),
    ("socket = /a\0b\n", "hold a NUL byte"),
    ("# x\n" * 2000, "are over 4096 bytes"),
])
def test_bad_settings_are_one_line_and_unreachable(hook, settings, fragment):
    res = run(hook(settings=settings), "instance-1", "prepare", "begin", "-")
    assert res.returncode == 0 and fragment in res.err and res.err.count("\n") == 1, res.err
    assert "50-hookd.conf" in res.err


def test_bad_settings_after_on_unreachable_deny_refuse(hook):
    res = run(hook(settings="on_unreachable = deny\ntimeout = never\n"), "instance-1", "prepare", "begin", "-")
    assert res.returncode == 1 and "refusing instance-1" in res.err and "line 2" in res.err


def test_settings_tolerate_blanks_comments_and_crlf(hook, tmp_path, stand_ins):
    stand_ins(tmp_path / "hookd.sock", reply_with(HookReply("deny", "no"))).start()
    settings = f"# hookd\r\n  socket =  {tmp_path}/hookd.sock  \r\n\ttimeout=1.5\r\non_unreachable = allow\r\n"
    res = run(hook(settings=settings), "instance-1", "prepare", "begin", "-")
    assert (res.returncode, res.err) == (1, "no\n")


def test_unreadable_settings_are_unreachable(hook, tmp_path):
    path = hook()
    os.unlink(str(path) + ".conf")
    os.mkdir(str(path) + ".conf")                 # read() fails with EISDIR
    res = run(path, "instance-1", "prepare", "begin", "-")
    assert res.returncode == 0 and "cannot read settings" in res.err and "Is a directory" in res.err
