#!/usr/bin/python3
"""access.py -- campaign 4: who may talk to nllmd, and which names it accepts.

  - the Unix socket is 0660 in a 0750 folder nllmd creates;
  - a client running as another uid (setpriv --reuid=65534 --regid=65534
    --clear-groups) cannot reach it through the folder, and when the folder
    and socket are opened up it is refused by SO_PEERCRED before anything it
    sends is parsed (no reply; nllmd logs a refusal, not a parse error);
    a member of the socket's group (primary or supplementary) is served;
  - TCP is off by default (no listening TCP socket of nllmd's);
    `--listen 0.0.0.0:PORT` without --token-file is refused with a clear
    message, a token shorter than 16 bytes too; with a token, every method but
    auth is answered `unauthorized` (and does nothing) before auth, a wrong
    token gets `unauthorized` and the connection closed, the right one is
    served (raw msgpack and `nllmctl --connect --token-file`); a malformed
    message before auth (bad types, bad msgpack, over the size limit, a
    notification or response) gets at most that same `unauthorized` reply,
    nothing the decoder found, and the connection closed;
  - the HTTP listener answers GET and HEAD, 405 for other methods, 421 for a
    foreign Host, 400 without one;
  - job and checkpoint names with "..", "/", NUL, 65 characters, a leading
    "." (and others) are refused through nllmctl and raw msgpack, and nothing
    is created outside STATE/jobs/<valid name>.

Usage: access.py --out DIR
"""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rlib  # noqa: E402
from rlib import Daemon, arg  # noqa: E402

NOBODY = ["--reuid=65534", "--regid=65534", "--clear-groups"]

PEER = r'''
import json, socket, sys
path, hexreq = sys.argv[1], sys.argv[2]
r = {"connected": False, "errno": None, "got": 0, "closed": False}
s = socket.socket(socket.AF_UNIX)
s.settimeout(3)
try:
    s.connect(path)
    r["connected"] = True
    try:
        s.sendall(bytes.fromhex(hexreq))
        while True:
            b = s.recv(65536)
            if not b:
                r["closed"] = True
                break
            r["got"] += len(b)
    except (ConnectionResetError, BrokenPipeError):
        r["closed"] = True
    except socket.timeout:
        pass
except OSError as e:
    r["errno"] = e.errno
print(json.dumps(r))
'''


def as_user(user, tmp, path, req):
    helper = os.path.join(tmp, "peer.py")
    r = subprocess.run(["setpriv"] + user + ["--", sys.executable, helper, path, req.hex()],
                       capture_output=True, text=True, timeout=30)
    try:
        return json.loads(r.stdout)
    except ValueError:
        return {"error": r.stderr.strip()}


def tcp_listening_inodes(pid):
    inodes = set()
    for fd in os.listdir("/proc/%d/fd" % pid):
        try:
            t = os.readlink("/proc/%d/fd/%s" % (pid, fd))
        except OSError:
            continue
        if t.startswith("socket:["):
            inodes.add(t[8:-1])
    found = []
    for f in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = open(f).read().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            p = line.split()
            if p[3] == "0A" and p[9] in inodes:
                found.append(p[1])
    return found


def socket_checks(R, tmp, data):
    run = os.path.join(tmp, "run")
    sock = os.path.join(run, "nllmd.sock")
    state = os.path.join(tmp, "state")
    d = Daemon(state, sock, os.path.join(tmp, "nllmd.log"))
    try:
        m_sock = os.stat(sock).st_mode & 0o777
        m_dir = os.stat(run).st_mode & 0o777
        R.check(m_sock == 0o660, "socket mode is 0660 (%o)" % m_sock)
        R.check(m_dir == 0o750, "socket folder mode is 0750 (%o)" % m_dir)
        R.fig("socket_mode", "%o in a %o folder" % (m_sock, m_dir))
        hello = rlib.request_bytes(1, "hello")
        r = as_user(NOBODY, tmp, sock, hello)
        R.check(not r.get("connected") and r.get("errno") == 13,
                "uid 65534: the 0750 folder keeps it out (EACCES): %s" % r)
        rc, _, err = rlib.ctl(sock, "hello", user=NOBODY)
        R.check(rc == 3, "nllmctl as uid 65534: exit 3 (%s)" % err.strip())
        # open the folder and the socket to everyone: SO_PEERCRED must refuse
        os.chmod(run, 0o755)
        os.chmod(sock, 0o666)
        before = d.log_text().count("refused a client")
        for what, req in (("hello", hello), ("garbage", b"\xc1\xc1\xc1" * 100),
                          ("a huge declared length", b"\xdb\xff\xff\xff\xff")):
            r = as_user(NOBODY, tmp, sock, req)
            R.check(r.get("connected") and r.get("got") == 0 and r.get("closed"),
                    "uid 65534 with the socket opened up, %s: no reply, closed (%s)" % (what, r))
        time.sleep(0.2)
        log = d.log_text()
        R.check(log.count("refused a client") - before == 3,
                "nllmd logged 3 refusals (%d)" % (log.count("refused a client") - before))
        R.check("closing a connection" not in log,
                "nothing a refused peer sent was parsed (no decoder error logged)")
        rc, _, err = rlib.ctl(sock, "hello", user=NOBODY)
        R.check(rc == 3, "nllmctl as uid 65534 through the opened socket: exit 3 (%s)" %
                err.strip().splitlines()[-1:])
        # a member of the socket's group is served
        os.chown(sock, 0, 65534)
        r = as_user(["--reuid=65534", "--regid=65534", "--clear-groups"], tmp, sock, hello)
        R.check(r.get("got", 0) > 0, "primary group = the socket's group: served (%s)" % r)
        r = as_user(["--reuid=65534", "--regid=1", "--groups=65534"], tmp, sock, hello)
        R.check(r.get("got", 0) > 0, "supplementary group = the socket's group: served (%s)" % r)
        r = as_user(["--reuid=65534", "--regid=1", "--clear-groups"], tmp, sock, hello)
        R.check(r.get("got", 1) == 0 and r.get("closed"),
                "no group in common: refused (%s)" % r)
        # TCP off by default
        found = tcp_listening_inodes(d.pid)
        R.check(not found, "no TCP listener by default (%s)" % found)
        e, h = d.call("hello")
        R.check(e is None and h["auth_required"] is False, "hello: auth_required false on the "
                "Unix socket")
    finally:
        d.shutdown()


def tcp_checks(R, tmp):
    state = os.path.join(tmp, "state2")
    port = rlib.free_port()
    log = os.path.join(tmp, "tcp.log")
    p = subprocess.run([rlib.NLLMD, "--state-dir", state, "--socket", os.path.join(tmp, "t.sock"),
                        "--devices", "cpu", "--metrics", "none", "--listen",
                        "0.0.0.0:%d" % port], capture_output=True, text=True, timeout=30)
    msg = (p.stderr + p.stdout).strip()
    R.check(p.returncode != 0 and "refusing to listen on 0.0.0.0:%d without a token" % port in msg,
            "--listen 0.0.0.0:PORT without --token-file: refused (exit %d): %s" % (
                p.returncode, msg.splitlines()[-1:]))
    R.fig("listen_refusal", msg.splitlines()[-1] if msg else "")
    short = os.path.join(tmp, "short.token")
    with open(short, "w") as f:
        f.write("tooshort\n")
    p = subprocess.run([rlib.NLLMD, "--state-dir", state, "--socket", os.path.join(tmp, "t.sock"),
                        "--devices", "cpu", "--metrics", "none", "--listen",
                        "127.0.0.1:%d" % port, "--token-file", short], capture_output=True,
                       text=True, timeout=30)
    R.check(p.returncode != 0 and "16..255 bytes" in p.stderr,
            "a token shorter than 16 bytes is refused (exit %d)" % p.returncode)
    token = os.path.join(tmp, "good.token")
    with open(token, "w") as f:
        f.write("k3Yb5mQ9zW2xR7pL4vN8cT1hJ6dF0sAe\n")
    wrong = os.path.join(tmp, "wrong.token")
    with open(wrong, "w") as f:
        f.write("k3Yb5mQ9zW2xR7pL4vN8cT1hJ6dF0sAX\n")
    d = Daemon(state, os.path.join(tmp, "t.sock"), log,
               extra=["--listen", "127.0.0.1:%d" % port, "--token-file", token])
    addr = ("127.0.0.1", port)
    try:
        methods = ["hello", "status", "list", "checkpoints", "history", "events", "verify",
                   "watch", "start", "pause", "resume", "stop", "extend", "remove", "generate",
                   "shutdown", "nosuch"]
        served = 0
        for m in methods:
            c = rlib.Conn(addr, timeout=5)
            params = {"name": "J"} if m not in ("hello", "list", "shutdown") else {}
            if m == "start":
                params = {"name": "pwn", "config": {"data": "/etc/hostname"}}
            try:
                e, r = c.call(m, params, timeout=5)
                closed = c.closed_by_peer(2)
            except EOFError:
                e, r, closed = {"code": "eof"}, None, True
            c.close()
            ok = e is not None and e.get("code") == "unauthorized" and r is None and closed
            served += not ok
            R.check(ok, "TCP before auth: %s -> unauthorized, connection closed (%s)" % (m, e))
        # malformed messages before auth: the only possible answer is the auth
        # error (nothing of what the decoder found), then the connection closes
        hostile = [("a request whose method is an int", rlib.packb([0, 5, 42, []])),
                   ("a request whose params are a string", rlib.packb([0, 5, "auth", "x"])),
                   ("a 5-element request", rlib.packb([0, 5, "auth", [], 1])),
                   ("a request with a byte that is not msgpack", b"\x94\x00\x05\xc1"),
                   ("a request over the size limit", b"\x94\x00\x05\xdb\x7f\xff\xff\xff"),
                   ("a notification", rlib.packb([2, "auth", [{"token": "x"}]])),
                   ("a response", rlib.packb([1, 5, None, None]))]
        leaked = 0
        for what, raw in hostile:
            c = rlib.Conn(addr, timeout=5)
            c.send_raw(raw)
            got, closed = [], False
            try:
                while True:
                    m = c.recv_msg(5)
                    if m is None:
                        closed = True
                        break
                    got.append(m)
            except (ConnectionResetError, BrokenPipeError):
                closed = True
            except socket.timeout:
                pass
            c.close()
            ok = closed and len(got) <= 1 and all(
                m[0] == 1 and m[1] == 5 and m[3] is None and isinstance(m[2], dict) and
                m[2].get("code") == "unauthorized" and
                m[2].get("message", "").startswith("authenticate first") for m in got)
            leaked += not ok
            R.check(ok, "TCP before auth, %s: %s, connection closed (%s)" % (
                what, "only the auth error" if got else "no reply", got))
        R.fig("tcp_malformed_answered_beyond_auth_error", leaked)
        R.check(d.alive(), "shutdown before auth did nothing: nllmd still up")
        R.check(not os.path.exists(os.path.join(state, "jobs", "pwn")) and
                d.call("list")[1]["jobs"] == [], "start before auth created nothing")
        R.fig("tcp_methods_served_before_auth", served)
        c = rlib.Conn(addr, timeout=5)
        e, r = c.call("auth", {"token": "k3Yb5mQ9zW2xR7pL4vN8cT1hJ6dF0sAX"})
        R.check(e and e["code"] == "unauthorized" and c.closed_by_peer(2),
                "wrong token: unauthorized, connection closed")
        c.close()
        for bad in ("", "k3Yb5mQ9zW2xR7pL4vN8cT1hJ6dF0sA", "k3Yb5mQ9zW2xR7pL4vN8cT1hJ6dF0sAe\x00"):
            c = rlib.Conn(addr, timeout=5)
            e, r = c.call("auth", {"token": bad})
            R.check(e and e["code"] == "unauthorized" and c.closed_by_peer(2),
                    "token %r: unauthorized, closed" % bad[-4:])
            c.close()
        c = rlib.Conn(addr, timeout=5)
        e, r = c.call("auth", {"token": "k3Yb5mQ9zW2xR7pL4vN8cT1hJ6dF0sAe"})
        R.check(e is None and r == {"ok": True}, "right token: ok")
        e, r = c.call("list", {})
        R.check(e is None and "jobs" in r, "after auth: list served")
        e, h = c.call("hello", {})
        R.check(e is None and h["auth_required"] is True, "hello over TCP: auth_required true")
        c.close()
        rc, out, err = rlib.ctl(None, "hello", connect="127.0.0.1:%d" % port, token_file=token)
        R.check(rc == 0, "nllmctl --connect --token-file: served (%s)" % err.strip())
        rc, out, err = rlib.ctl(None, "list", connect="127.0.0.1:%d" % port, token_file=wrong)
        R.check(rc == 1 and "token" in err, "nllmctl with a wrong token: exit 1 (%s)" %
                err.strip())
        rc, out, err = rlib.ctl(None, "list", connect="127.0.0.1:%d" % port)
        R.check(rc != 0, "nllmctl --connect without a token: refused (exit %d: %s)" % (
            rc, err.strip()))
        found = tcp_listening_inodes(d.pid)
        R.check(len(found) == 1 and found[0].startswith("0100007F:"),
                "the only TCP listener is the loopback one asked for (%s)" % found)
    finally:
        d.shutdown()


def http_raw(port, req):
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(req)
    b = b""
    try:
        while b"\r\n\r\n" not in b:
            x = s.recv(4096)
            if not x:
                break
            b += x
    except socket.timeout:
        pass
    s.close()
    line = b.split(b"\r\n", 1)[0].decode(errors="replace")
    try:
        return int(line.split()[1])
    except (IndexError, ValueError):
        return None


def http_checks(R, tmp):
    port = rlib.free_port()
    d = Daemon(os.path.join(tmp, "state3"), os.path.join(tmp, "h.sock"),
               os.path.join(tmp, "http.log"), metrics="127.0.0.1:%d" % port)
    try:
        host = "127.0.0.1:%d" % port
        cases = [("GET /metrics", host, 200), ("HEAD /metrics", host, 200),
                 ("GET /api/jobs", "localhost:%d" % port, 200), ("GET /", "127.0.0.1", 200)]
        for m in ("POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "CONNECT"):
            cases.append(("%s /metrics" % m, host, 405))
        for h in ("evil.example", "evil.example:%d" % port, "127.0.0.1.nip.io:%d" % port,
                  "localhost.evil.example", "10.0.0.1:%d" % port):
            cases.append(("GET /metrics", h, 421))
        bad = 0
        for line, h, want in cases:
            req = ("%s HTTP/1.1\r\nHost: %s\r\nContent-Length: 0\r\nConnection: close\r\n\r\n" % (
                line, h)).encode()
            got = http_raw(port, req)
            bad += got != want
            R.check(got == want, "HTTP %s Host %s -> %s (want %d)" % (line, h, got, want))
        got = http_raw(port, b"GET /metrics HTTP/1.1\r\nConnection: close\r\n\r\n")
        R.check(got == 400, "HTTP without Host -> %s (want 400)" % got)
        got = http_raw(port, ("GET http://evil.example/metrics HTTP/1.1\r\nHost: %s\r\n"
                              "Connection: close\r\n\r\n" % host).encode())
        R.check(got in (400, 421), "HTTP absolute-form target naming another host -> %s" % got)
        R.fig("http_cases", len(cases) + 2)
    finally:
        d.shutdown()


def snapshot(root):
    out = set()
    for dp, dn, fn in os.walk(root):
        for x in dn + fn:
            out.add(os.path.relpath(os.path.join(dp, x), root))
    return out


def names_checks(R, d, tmp, data):
    before = snapshot(tmp)
    ok64 = "n" * 64
    bad_ctl = ["..", "../x", "../../etc", "a/b", "/abs", ".hidden", ".", "x" * 65, "a b",
               "x\\y", "\u00fc", "a\tb"]
    bad_raw = bad_ctl + ["", "a\x00b", "\x00", "ok\x00/../../x"]
    refused = 0
    for n in bad_ctl:
        rc, out, err = d.ctl("start", n, "--data", data, "--epochs", "1", *rlib.MODEL)
        R.check(rc in (1, 2), "nllmctl start %r refused (exit %d): %s" % (
            n, rc, err.strip()[:100]))
        refused += rc in (1, 2)
        for cmd in (["status", n], ["rm", n, "--delete-files"], ["resume", n],
                    ["checkpoints", n], ["history", n]):
            rc, out, err = d.ctl(*cmd)
            R.check(rc in (1, 2), "nllmctl %s %r refused (exit %d)" % (cmd[0], n, rc))
    c = rlib.Conn(d.sock)
    for n in bad_raw:
        e, r = c.call("start", {"name": n, "config": {"data": data, "num_epochs": 1}})
        R.check(e is not None and e["code"] == "bad_request",
                "raw start %r: bad_request (%s)" % (n, e))
        refused += e is not None
        for m in ("status", "remove", "pause", "checkpoints", "events"):
            e, r = c.call(m, {"name": n, "delete_files": True})
            R.check(e is not None and e["code"] in ("bad_request", "not_found"),
                    "raw %s %r refused (%s)" % (m, n, e and e["code"]))
    # a valid job to aim checkpoint names at
    rc, out, err = d.ctl("start", ok64, "--data", data, "--epochs", "1", *rlib.MODEL)
    R.check(rc == 0, "a 64-character job name is accepted (%s)" % err.strip())
    st = d.wait_state(ok64, ["completed", "failed"], 120)
    R.check(st and st["state"] == "completed", "that job trains (%s)" % (st and st["state"]))
    bad_ck = ["../../etc/passwd", "/etc/passwd", ".hidden", "epoch_1/../../x", "..", "x" * 65,
              "best/", "paused\\..", "a b"]
    for ck in bad_ck:
        rc, out, err = d.ctl("resume", ok64, ck)
        R.check(rc in (1, 2), "nllmctl resume %s %r refused (exit %d)" % (ok64[:4], ck, rc))
        rc, out, err = d.ctl("generate", ok64, "--checkpoint", ck, "--tokens", "2")
        R.check(rc in (1, 2), "nllmctl generate --checkpoint %r refused (exit %d)" % (ck, rc))
        rc, out, err = d.ctl("start", "ft", "--data", data, "--init-from", "%s:%s" % (ok64, ck),
                             *rlib.MODEL)
        R.check(rc in (1, 2), "nllmctl start --init-from JOB:%r refused (exit %d)" % (ck, rc))
    for ck in bad_ck + ["a\x00b", "best\x00/../x"]:
        e, r = c.call("resume", {"name": ok64, "checkpoint": ck})
        R.check(e is not None and e["code"] in ("bad_request", "not_found"),
                "raw resume checkpoint %r refused (%s)" % (ck, e and e["code"]))
        e, r = c.call("generate", {"name": ok64, "checkpoint": ck, "tokens": 2})
        R.check(e is not None and e["code"] in ("bad_request", "not_found"),
                "raw generate checkpoint %r refused (%s)" % (ck, e and e["code"]))
    # an absolute path as init_from is a documented feature (a safetensors
    # file); a file that is not one must not leak its content in the error
    e, r = c.call("start", {"name": "leak", "config": {"data": data, "num_epochs": 1},
                            "init_from": "/etc/passwd"})
    if e is None:
        st = d.wait_state("leak", ["failed", "completed"], 60)
        msg = (st or {}).get("error") or ""
    else:
        msg = e["message"]
    R.check("root:" not in msg, "init_from /etc/passwd: refused without leaking it: %s" % msg[:120])
    c.close()
    after = snapshot(tmp)
    new = sorted(x for x in after - before if not x.startswith(("state/", "nllmd.log")))
    R.check(not new, "nothing created outside the state folder: %s" % new)
    jobs = sorted(os.listdir(os.path.join(d.state, "jobs")))
    R.check(set(jobs) <= {ok64, "leak"}, "STATE/jobs holds only valid names: %s" % jobs)
    R.fig("bad_names_refused", refused)
    R.fig("bad_names_tried", len(bad_ctl) + len(bad_raw))


def main():
    out = arg("--out", ".")
    R = rlib.Results("access", out)
    tmp = tempfile.mkdtemp(prefix="nllm-rel-access-", dir=arg("--tmp"))
    os.chmod(tmp, 0o755)
    with open(os.path.join(tmp, "peer.py"), "w") as f:
        f.write(PEER)
    data = os.path.join(tmp, "train.txt")
    rlib.corpus(data, 200, 3)

    def body():
        if os.geteuid() != 0 or not shutil.which("setpriv"):
            R.note("uid checks skipped: needs root and setpriv")
            R.fig("uid_checks", "skipped")
        else:
            socket_checks(R, tmp, data)
        d = Daemon(os.path.join(tmp, "state"), os.path.join(tmp, "n.sock"),
                   os.path.join(tmp, "nllmd.log"))
        try:
            names_checks(R, d, tmp, data)
        finally:
            d.shutdown()
        tcp_checks(R, tmp)
        http_checks(R, tmp)

    return rlib.run_campaign(R, tmp, body)


if __name__ == "__main__":
    sys.exit(main())
