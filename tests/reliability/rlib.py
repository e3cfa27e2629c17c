"""rlib.py -- shared helpers of the reliability campaigns (Python 3 stdlib only).

A minimal msgpack codec and msgpack-RPC client (proto/PROTOCOL.md), an nllmd
process wrapper (temp state folder, socket, log, fd/RSS probes), an nllmctl
wrapper, a corpus generator and the result file every campaign writes
(JSON, read by report.py). Callers: kill.py, faults.py, access.py, load.py.
"""
import json
import os
import random
import signal
import shutil
import socket
import sqlite3
import struct
import subprocess
import sys
import time

# ---------------------------------------------------------------- msgpack


def packb(o):
    out = bytearray()
    _pack(o, out)
    return bytes(out)


def _pack(o, out):
    if o is None:
        out.append(0xc0)
    elif o is True:
        out.append(0xc3)
    elif o is False:
        out.append(0xc2)
    elif isinstance(o, int):
        if 0 <= o < 128:
            out.append(o)
        elif -32 <= o < 0:
            out.append(o & 0xff)
        elif 0 <= o < 1 << 8:
            out += b"\xcc" + struct.pack(">B", o)
        elif 0 <= o < 1 << 16:
            out += b"\xcd" + struct.pack(">H", o)
        elif 0 <= o < 1 << 32:
            out += b"\xce" + struct.pack(">I", o)
        elif o >= 0:
            out += b"\xcf" + struct.pack(">Q", o)
        elif o >= -(1 << 7):
            out += b"\xd0" + struct.pack(">b", o)
        elif o >= -(1 << 15):
            out += b"\xd1" + struct.pack(">h", o)
        elif o >= -(1 << 31):
            out += b"\xd2" + struct.pack(">i", o)
        else:
            out += b"\xd3" + struct.pack(">q", o)
    elif isinstance(o, float):
        out += b"\xcb" + struct.pack(">d", o)
    elif isinstance(o, str):
        _pack_raw(o.encode(), out, 0xa0, 0xd9)
    elif isinstance(o, (bytes, bytearray)):
        n = len(o)
        if n < 256:
            out += b"\xc4" + struct.pack(">B", n)
        elif n < 65536:
            out += b"\xc5" + struct.pack(">H", n)
        else:
            out += b"\xc6" + struct.pack(">I", n)
        out += o
    elif isinstance(o, (list, tuple)):
        n = len(o)
        if n < 16:
            out.append(0x90 | n)
        elif n < 65536:
            out += b"\xdc" + struct.pack(">H", n)
        else:
            out += b"\xdd" + struct.pack(">I", n)
        for x in o:
            _pack(x, out)
    elif isinstance(o, dict):
        n = len(o)
        if n < 16:
            out.append(0x80 | n)
        elif n < 65536:
            out += b"\xde" + struct.pack(">H", n)
        else:
            out += b"\xdf" + struct.pack(">I", n)
        for k, v in o.items():
            _pack(k, out)
            _pack(v, out)
    else:
        raise TypeError("cannot pack %r" % type(o))


def _pack_raw(b, out, fix, s8):
    n = len(b)
    if n < 32:
        out.append(fix | n)
    elif n < 256:
        out += bytes([s8]) + struct.pack(">B", n)
    elif n < 65536:
        out += bytes([s8 + 1]) + struct.pack(">H", n)
    else:
        out += bytes([s8 + 2]) + struct.pack(">I", n)
    out += b


class NeedMore(Exception):
    pass


def _unpack(b, i):
    if i >= len(b):
        raise NeedMore()
    t = b[i]
    i += 1

    def take(n):
        if i + n > len(b):
            raise NeedMore()
        return b[i:i + n]

    if t < 0x80:
        return t, i
    if t >= 0xe0:
        return t - 256, i
    if 0x80 <= t <= 0x8f or t in (0xde, 0xdf):
        if t <= 0x8f:
            n = t & 0x0f
        else:
            w = 2 if t == 0xde else 4
            n = int.from_bytes(take(w), "big")
            i += w
        d = {}
        for _ in range(n):
            k, i = _unpack(b, i)
            v, i = _unpack(b, i)
            d[k] = v
        return d, i
    if 0x90 <= t <= 0x9f or t in (0xdc, 0xdd):
        if t <= 0x9f:
            n = t & 0x0f
        else:
            w = 2 if t == 0xdc else 4
            n = int.from_bytes(take(w), "big")
            i += w
        a = []
        for _ in range(n):
            v, i = _unpack(b, i)
            a.append(v)
        return a, i
    if 0xa0 <= t <= 0xbf or t in (0xd9, 0xda, 0xdb, 0xc4, 0xc5, 0xc6):
        if t <= 0xbf:
            n = t & 0x1f
        else:
            w = {0xd9: 1, 0xda: 2, 0xdb: 4, 0xc4: 1, 0xc5: 2, 0xc6: 4}[t]
            n = int.from_bytes(take(w), "big")
            i += w
        raw = take(n)
        i += n
        if t in (0xc4, 0xc5, 0xc6):
            return bytes(raw), i
        return bytes(raw).decode("utf-8", "replace"), i
    if t == 0xc0:
        return None, i
    if t == 0xc2:
        return False, i
    if t == 0xc3:
        return True, i
    fmt = {0xcc: ">B", 0xcd: ">H", 0xce: ">I", 0xcf: ">Q", 0xd0: ">b", 0xd1: ">h",
           0xd2: ">i", 0xd3: ">q", 0xca: ">f", 0xcb: ">d"}
    if t in fmt:
        n = struct.calcsize(fmt[t])
        v = struct.unpack(fmt[t], take(n))[0]
        return v, i + n
    ext = {0xd4: 1, 0xd5: 2, 0xd6: 4, 0xd7: 8, 0xd8: 16}
    if t in ext:
        return None, i + 1 + ext[t]
    raise ValueError("msgpack: unsupported type byte 0x%02x" % t)


class Unpacker:
    def __init__(self):
        self.buf = bytearray()

    def feed(self, data):
        self.buf += data

    def __iter__(self):
        return self

    def __next__(self):
        try:
            o, i = _unpack(self.buf, 0)
        except NeedMore:
            raise StopIteration
        del self.buf[:i]
        return o


# ---------------------------------------------------------------- RPC


class RpcError(Exception):
    pass


def request_bytes(msgid, method, params=None):
    return packb([0, msgid, method, [params] if params is not None else []])


class Conn:
    """One msgpack-RPC connection (Unix socket path, or (host, port) for TCP)."""

    def __init__(self, addr, timeout=30.0):
        if isinstance(addr, tuple):
            self.s = socket.create_connection(addr, timeout=timeout)
        else:
            self.s = socket.socket(socket.AF_UNIX)
            self.s.settimeout(timeout)
            self.s.connect(addr)
        self.u = Unpacker()
        self.msgid = 0
        self.notes = []

    def send_raw(self, b):
        self.s.sendall(b)

    def recv_msg(self, timeout=None):
        """Next message, or None when the peer closed the connection."""
        if timeout is not None:
            self.s.settimeout(timeout)
        while True:
            for m in self.u:
                return m
            b = self.s.recv(65536)
            if not b:
                return None
            self.u.feed(b)

    def call(self, method, params=None, timeout=30.0):
        """Returns (error map or None, result); raises EOFError if the daemon closed."""
        self.msgid = (self.msgid + 1) & 0xffffffff
        mid = self.msgid
        self.send_raw(request_bytes(mid, method, params))
        while True:
            m = self.recv_msg(timeout)
            if m is None:
                raise EOFError("connection closed by nllmd")
            if m[0] == 2:
                self.notes.append(m)
                continue
            if m[0] == 1 and m[1] == mid:
                return m[2], m[3]

    def closed_by_peer(self, timeout=2.0):
        """True when the peer closes (EOF or reset) within timeout, reading anything."""
        self.s.settimeout(timeout)
        try:
            while True:
                b = self.s.recv(65536)
                if not b:
                    return True
        except (ConnectionResetError, BrokenPipeError):
            return True
        except socket.timeout:
            return False

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


# ---------------------------------------------------------------- processes

BUILD = os.environ.get("NLLM_BUILD", "build")
NLLMD = os.path.join(BUILD, "nllmd")
NLLMCTL = os.path.join(BUILD, "nllmctl")

# the model of the campaigns: small, but a checkpoint takes a few ms to write
MODEL = ["--vocab", "200", "--embed-dim", "32", "--hidden-dim", "128", "--context-dim", "64",
         "--layers", "3", "--seq-len", "32", "--batch", "8", "--lr", "0.003",
         "--dropout", "0.1", "--threads", "1", "--patience", "0"]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


_STARTED = []  # every nllmd started here: killed at exit if still running


def _kill_started():
    for d in _STARTED:
        if d.p.poll() is None:
            try:
                d.p.kill()
                d.p.wait(10)
            except (OSError, subprocess.TimeoutExpired):
                pass


import atexit  # noqa: E402
atexit.register(_kill_started)


class Daemon:
    def __init__(self, state, sock, log, extra=(), env=None, metrics="none", wait=True):
        self.state, self.sock, self.logpath = state, sock, log
        self.metrics = metrics
        e = dict(os.environ)
        e.pop("NLLM_FS_FAULT", None)
        e.pop("NLLM_CATALOG_FAULT", None)
        if env:
            e.update(env)
        self.logf = open(log, "a")
        self.logf.write("==== nllmd start %s %s\n" % (time.strftime("%H:%M:%S"),
                                                     " ".join("%s=%s" % kv for kv in (env or {}).items())))
        self.logf.flush()
        self.p = subprocess.Popen([NLLMD, "--state-dir", state, "--socket", sock, "--devices",
                                   "cpu", "--threads", "1", "--metrics", metrics] + list(extra),
                                  stdout=self.logf, stderr=self.logf, env=e)
        self.pid = self.p.pid
        _STARTED.append(self)
        if wait and not self.wait_up():
            raise RuntimeError("nllmd did not come up (exit %s); see %s" % (self.p.poll(), log))

    def wait_up(self, timeout=30):
        t = time.time()
        while time.time() - t < timeout:
            if self.p.poll() is not None:
                return False
            if os.path.exists(self.sock):
                try:
                    c = Conn(self.sock, timeout=5)
                    e, r = c.call("hello")
                    c.close()
                    if e is None:
                        return True
                except OSError:
                    pass
                except EOFError:
                    pass
            time.sleep(0.02)
        return False

    def alive(self):
        return self.p.poll() is None

    def kill(self):
        try:
            self.p.send_signal(signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.p.wait()
        self.logf.close()

    def shutdown(self, timeout=60):
        try:
            c = Conn(self.sock, timeout=10)
            c.call("shutdown")
            c.close()
        except (OSError, EOFError):
            self.p.send_signal(signal.SIGTERM)
        try:
            rc = self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            rc = self.p.wait()
        self.logf.close()
        return rc

    def ctl(self, *args, timeout=120):
        return ctl(self.sock, *args, timeout=timeout)

    def call(self, method, params=None, timeout=30):
        c = Conn(self.sock, timeout=timeout)
        try:
            return c.call(method, params, timeout)
        finally:
            c.close()

    def status(self, name):
        e, r = self.call("status", {"name": name})
        return r if e is None else None

    def wait_state(self, name, states, timeout=120):
        t = time.time()
        st = None
        while time.time() - t < timeout:
            st = self.status(name)
            if st and st["state"] in states:
                return st
            time.sleep(0.02)
        return st

    def nfds(self):
        return len(os.listdir("/proc/%d/fd" % self.pid))

    def rss_kb(self):
        with open("/proc/%d/status" % self.pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
        return 0

    def log_text(self):
        with open(self.logpath, errors="replace") as f:
            return f.read()


def ctl(sock, *args, timeout=120, env=None, user=None, connect=None, token_file=None):
    """Runs nllmctl --json; returns (exit code, parsed JSON or text, stderr)."""
    head = [NLLMCTL]
    if connect:
        head += ["--connect", connect]
        if token_file:
            head += ["--token-file", token_file]
    else:
        head += ["--socket", sock]
    cmd = head + ["--json"] + list(args)
    if user:
        cmd = ["setpriv"] + user + ["--"] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    out = None
    if r.stdout.strip():
        try:
            out = json.loads(r.stdout)
        except ValueError:
            out = r.stdout
    return r.returncode, out, r.stderr


def corpus(path, lines, seed=1, nwords=400):
    rnd = random.Random(seed)
    base = ("the king queen lord lady sword crown castle river night day sun moon speak love "
            "war peace heart mind fair foul good ill").split()
    words = base + ["w%03d" % i for i in range(nwords - len(base))]
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(" ".join(rnd.choice(words[:rnd.choice((30, 120, nwords))])
                             for _ in range(rnd.randint(6, 16))) + "\n")


def copy_state(src, dst):
    """Copies a state folder whose nllmd is stopped or idle (the -shm file left
    out) and rewrites the catalog's checkpoint paths, which are absolute, to the
    copy's files."""
    import shutil
    shutil.rmtree(dst, ignore_errors=True)
    os.makedirs(dst)
    for f in os.listdir(src):
        if f.endswith("-shm"):
            continue
        s, t = os.path.join(src, f), os.path.join(dst, f)
        if os.path.isdir(s):
            shutil.copytree(s, t, symlinks=True)
        else:
            shutil.copy2(s, t)
    src_a, dst_a = os.path.abspath(src), os.path.abspath(dst)
    con = sqlite3.connect(os.path.join(dst, "catalog.db"), timeout=10)
    con.execute("UPDATE checkpoints SET path = ? || substr(path, ?) WHERE substr(path, 1, ?) = ?",
                (dst_a, len(src_a) + 1, len(src_a) + 1, src_a + "/"))
    con.commit()
    con.close()


def integrity(db):
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
    try:
        return con.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        con.close()


def temp_files(root):
    """Leftover temp files anywhere under root (nllm's ".NAME.tmp.PID.N" and the
    token cache's "tokens.cache.tmp.PID.N")."""
    out = []
    for dp, dn, fn in os.walk(root):
        for f in fn:
            if ".tmp." in f:
                out.append(os.path.join(dp, f))
    return out


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


# ---------------------------------------------------------------- results


class Results:
    """Collects checks and figures of one campaign into OUT/NAME.json."""

    def __init__(self, name, outdir):
        self.name = name
        self.path = os.path.join(outdir, name + ".json")
        self.checks = 0
        self.failures = []
        self.figures = {}
        self.notes = []
        self.t0 = time.time()

    def check(self, cond, what):
        self.checks += 1
        if not cond:
            self.failures.append(what)
            print("FAIL %s: %s" % (self.name, what), flush=True)
        return cond

    def fig(self, key, value):
        self.figures[key] = value

    def note(self, s):
        self.notes.append(s)
        print("     %s" % s, flush=True)

    def save(self):
        d = {"name": self.name, "checks": self.checks, "failures": self.failures,
             "figures": self.figures, "notes": self.notes,
             "seconds": round(time.time() - self.t0, 1)}
        with open(self.path, "w") as f:
            json.dump(d, f, indent=1)
        print("%s: %d checks, %d failed, %.0f s" % (self.name, self.checks, len(self.failures),
                                                     d["seconds"]), flush=True)
        return 1 if self.failures else 0


def run_campaign(R, tmp, body):
    """Runs body(); a crash of the harness is a failed check, with its state
    kept. Saves R; removes tmp when every check passed (and no --keep).
    Returns the exit status."""
    try:
        body()
    except Exception as e:
        import traceback
        traceback.print_exc()
        R.check(False, "campaign aborted: %r (state kept in %s)" % (e, tmp))
    rc = R.save()
    if rc == 0 and "--keep" not in sys.argv:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print("kept " + tmp)
    return rc


def arg(name, default=None):
    if name in sys.argv:
        return sys.argv[sys.argv.index(name) + 1]
    return default
