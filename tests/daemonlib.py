"""daemonlib.py -- what the Python daemon tests share: a Daemon started on a
temporary state folder and socket (driven with nllmctl --json), free TCP
ports, and the ok/FAIL counter.

    import daemonlib as dl
    d = dl.Daemon(nllmd, nllmctl, tmp, "d", ["--metrics", "127.0.0.1:%d" % dl.free_port()])
    rc, out = d.ctl("hello")
    d.shutdown()
    dl.check(rc == 0, "hello answers")
    sys.exit(dl.report())
"""
import json
import os
import socket
import subprocess
import time

PASSED = FAILED = 0


def check(ok, what):
    """Prints ok/FAIL and what; counts it."""
    global PASSED, FAILED
    if ok:
        PASSED += 1
    else:
        FAILED += 1
    print("%s  %s" % ("ok  " if ok else "FAIL", what), flush=True)
    return ok


def report():
    """Prints "N passed, M failed"; returns the exit status (0 or 1)."""
    print("%d passed, %d failed" % (PASSED, FAILED))
    return 1 if FAILED else 0


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class Daemon:
    """nllmd on TMP/NAME-state and TMP/NAME.sock (CPU device, 1 thread unless
    args say otherwise), its output in TMP/NAME.log; up when hello answers."""

    def __init__(self, nllmd, nllmctl, tmp, name, args=(), env=None):
        self.nllmctl = nllmctl
        self.sock = os.path.join(tmp, name + ".sock")
        self.state = os.path.join(tmp, name + "-state")
        self.logpath = os.path.join(tmp, name + ".log")
        self.log = open(self.logpath, "a")
        self.p = subprocess.Popen([nllmd, "--state-dir", self.state, "--socket", self.sock,
                                   "--devices", "cpu", "--threads", "1"] + list(args),
                                  stdout=self.log, stderr=self.log,
                                  env=dict(os.environ, **(env or {})))
        for _ in range(400):
            if self.p.poll() is not None:
                raise RuntimeError("nllmd exited; see " + self.logpath)
            if os.path.exists(self.sock) and self.ctl("hello")[0] == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("nllmd did not come up; see " + self.logpath)

    def ctl(self, *args, timeout=120, json_out=True):
        """Runs nllmctl; returns (exit status, parsed JSON or the text)."""
        r = subprocess.run([self.nllmctl, "--socket", self.sock] +
                           (["--json"] if json_out else []) + list(args),
                           capture_output=True, text=True, timeout=timeout)
        try:
            out = json.loads(r.stdout) if json_out and r.stdout.strip() else r.stdout
        except ValueError:
            out = r.stdout
        return r.returncode, out

    def shutdown(self):
        self.ctl("shutdown")
        try:
            return self.p.wait(120)
        except subprocess.TimeoutExpired:
            self.p.kill()
            return None

    def log_text(self):
        self.log.flush()
        with open(self.logpath, errors="replace") as f:
            return f.read()
