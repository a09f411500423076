"""The explorer answers only requests that name its own address (against DNS rebinding: a page of
another site that resolves its name to 127.0.0.1 must not read the widgets): jupyter_server's Host
check (``allow_remote_access=False``, ``local_hostnames``) and its same-origin rule for the kernel's
websocket, set through Voila's ``tornado_settings`` (``explore.local_only``)."""
from __future__ import annotations

import base64
import http.client
import os
import re
import socket
import subprocess

import pytest

from test_phase import write_study

from ltnb.analysis import explore


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _request(port: int, host: str, path: str = "/", headers: dict | None = None) -> tuple[int, bytes]:
    """(status, body) of one GET to 127.0.0.1:port sending exactly this Host header; for a websocket
    upgrade (``headers``), the status and the response's head only."""
    if headers:
        with socket.create_connection(("127.0.0.1", port), timeout=120) as c:
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            c.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\n{extra}\r\n".encode())
            data = b""
            while b"\r\n\r\n" not in data:
                chunk = c.recv(1 << 16)
                if not chunk:
                    break
                data += chunk
        return int(data.split(b" ", 2)[1]), data
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        c.putrequest("GET", path, skip_host=True)
        c.putheader("Host", host)
        c.endheaders()
        r = c.getresponse()
        return r.status, r.read()
    finally:
        c.close()


def _websocket(origin: str | None) -> dict:
    key = base64.b64encode(os.urandom(16)).decode()
    return {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": key, **({"Origin": origin} if origin else {})}


def test_the_explorer_answers_only_its_own_host_and_origin(tmp_path):
    study = write_study(tmp_path / "study")
    port = _free_port()
    nb = explore.notebook_path()
    env = {k: v for k, v in os.environ.items() if k not in (explore.STUDY_ENV, explore.OUTPUTS_ENV, "QUERY_STRING")}
    env[explore.STUDY_ENV] = str(study)
    log = open(tmp_path / "voila.log", "w")
    # serve()'s own command line, its output kept to read what the server says
    proc = subprocess.Popen(explore.voila_command(nb, port=port), env=env, cwd=str(nb.parent), stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True)
    me = f"127.0.0.1:{port}"
    try:
        explore.wait_for_http(f"http://{me}/api/kernels", proc=proc, timeout=90)
        for host in ("evil.example", f"evil.example:{port}", f"127.0.0.2.evil.example:{port}"):
            status, data = _request(port, host)
            assert status == 403, (host, data[:300])
            assert b"403" in data and b"Traceback" not in data and b"07_phase_transition" not in data
        status, page = _request(port, me)
        assert status == 200 and b"07_phase_transition" in page
        for host in (f"localhost:{port}", f"[::1]:{port}", "127.0.0.1"):  # its other names (a page costs a kernel)
            assert _request(port, host, "/api/kernels")[0] != 403, host
        kernel = re.search(rb'"kernelId":\s*"([0-9a-f-]{36})"', page) or re.search(
            rb"([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})", page)
        channels = f"/api/kernels/{kernel.group(1).decode()}/channels"
        # the kernel's websocket: refused from another origin or another Host, opened from its own page
        assert _request(port, me, channels, _websocket("http://evil.example"))[0] == 403
        assert _request(port, me, channels, _websocket(f"http://evil.example:{port}"))[0] == 403
        assert _request(port, "evil.example", channels, _websocket("http://evil.example"))[0] == 403
        assert _request(port, me, channels, _websocket(f"http://{me}"))[0] == 101
    finally:
        explore.stop_server(proc)
        log.close()
    said = (tmp_path / "voila.log").read_text()
    assert "Blocking request with non-local 'Host' evil.example" in said
    assert "Blocking Cross Origin WebSocket Attempt.  Origin: http://evil.example" in said
    assert "Traceback" not in said and "Deprecat" not in said, said[-3000:]


def test_the_explorer_serves_this_machine_only():
    assert explore.local_only("127.0.0.1")["allow_remote_access"] is False
    assert explore.local_only("myhost")["local_hostnames"] == ["localhost", "myhost"]
    assert "--Voila.tornado_settings=" + repr(explore.local_only("127.0.0.1")) in explore.voila_command("nb", port=1)
    for ip in ("0.0.0.0", "192.168.1.5", "::"):
        with pytest.raises(ValueError, match=rf"ip='{re.escape(ip)}': the explorer serves this machine only"):
            explore.voila_command("nb", port=1, ip=ip)
