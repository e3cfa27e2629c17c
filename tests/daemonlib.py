"""daemonlib.py -- the harness the Python tests share (standard library only).

Checks and their count (check, report), skips (skip, need), a temporary
folder kept when a check failed (tmpdir), the usual main (main), the
build's programs (programs), free TCP ports, a word corpus and a small
model to train (corpus, SMALL), polling (poll), HTTP requests to
nllmd's monitoring listener (http_get, http_json) and its /metrics text
(parse_metrics, sample), nllmctl runs (nllmctl), and a Daemon: nllmd on a
temporary state folder and socket, driven with `nllmctl --json`.

    import daemonlib as dl
    BUILD, NLLMD, NLLMCTL = dl.programs()        # BUILD from argv[1]

    def run(tmp):                                # tmp is kept when a check failed
        data = os.path.join(tmp, "train.txt")
        dl.corpus(data, 1500, 1)
        port = dl.free_port()
        with dl.Daemon(NLLMD, NLLMCTL, tmp, "d", ["--metrics", "127.0.0.1:%d" % port]) as d:
            rc, st, err = d.ctl("start", "j", "--data", data, "--epochs", "2", *dl.SMALL)
            st = d.wait_state("j", ["completed", "failed"])
            dl.check(st["state"] == "completed", "j completed")
            dl.check(d.shutdown() == 0, "shutdown: exit 0")

    # SKIP (exit 77) unless both are built; "N passed, M failed"; exit 0 or 1
    sys.exit(dl.main(run, "nllm-x-test-", NLLMD, NLLMCTL))

A test with special needs passes args and env, or subclasses Daemon.
"""
import collections
import contextlib
import http.client
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

PASSED = FAILED = 0  # read them as dl.PASSED, dl.FAILED


def check(ok, what, detail=""):
    """Prints "ok   WHAT" or "FAIL WHAT[: DETAIL]"; counts it; returns ok."""
    global PASSED, FAILED
    if ok:
        PASSED += 1
        print("ok   " + what, flush=True)
    else:
        FAILED += 1
        print("FAIL " + what + (": " + detail if detail else ""), flush=True)
    return ok


def report():
    """Prints "N passed, M failed"; returns the exit status (0 or 1)."""
    print("%d passed, %d failed" % (PASSED, FAILED))
    return 1 if FAILED else 0


def skip(why):
    """Prints "SKIP: WHY" and exits 77 (meson's skip)."""
    print("SKIP: " + why, flush=True)
    sys.exit(77)


def programs(build=None):
    """(BUILD, BUILD/nllmd, BUILD/nllmctl), BUILD absolute; by default
    argv[1] (meson passes the build folder) or "build"."""
    if build is None:
        build = sys.argv[1] if len(sys.argv) > 1 else "build"
    build = os.path.abspath(build)
    return build, os.path.join(build, "nllmd"), os.path.join(build, "nllmctl")


def need(*progs):
    """Skips (exit 77) unless every one of progs is an executable file."""
    if not all(os.access(p, os.X_OK) for p in progs):
        skip("%s is not built" % " or ".join(progs))


def main(body, prefix, *progs):
    """The usual main: skips unless progs are built, runs body(tmp) in a
    tmpdir(prefix), returns report()'s exit status."""
    need(*progs)
    with tmpdir(prefix) as tmp:
        body(tmp)
    return report()


@contextlib.contextmanager
def tmpdir(prefix, dir=None):
    """A new temporary folder; removed afterwards unless a check failed
    (then "kept PATH" is printed)."""
    tmp = tempfile.mkdtemp(prefix=prefix, dir=dir)
    try:
        yield tmp
    finally:
        if FAILED == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept " + tmp)


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on (now)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


WORDS = ("the king queen lord lady sword crown castle river night day sun moon "
         "speak love war peace heart mind fair foul good ill").split()


# the daemon tests' small model (a 30-word vocabulary): an epoch of a
# 1500-line corpus is 337 steps, a few hundred milliseconds
SMALL = ["--vocab", "30", "--embed-dim", "8", "--hidden-dim", "24", "--context-dim", "8",
         "--layers", "2", "--seq-len", "16", "--batch", "4", "--lr", "0.003",
         "--dropout", "0.1", "--threads", "1"]


def corpus(path, lines, seed=1):
    """Writes LINES lines of 5 to 14 random WORDS (the same file for the
    same seed)."""
    rnd = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(5, 14))) + "\n")


def poll(fetch, cond=bool, timeout=120, interval=0.05):
    """Calls fetch() every interval seconds until cond(value) holds or
    timeout seconds have passed; returns the last value."""
    t = time.time()
    while True:
        v = fetch()
        if cond(v) or time.time() - t >= timeout:
            return v
        time.sleep(interval)


# ---- HTTP (the monitoring listener, --metrics HOST:PORT) ----------------------

def http_get(port, path, method="GET", headers=None, body=None, timeout=30):
    """One request to 127.0.0.1:port: (status, {lowercase header: value}, body bytes)."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        data = r.read()
        return r.status, dict((k.lower(), v) for k, v in r.getheaders()), data
    finally:
        c.close()


def http_json(port, path):
    """GET path; its body parsed as JSON."""
    return json.loads(http_get(port, path)[2])


def parse_metrics(text):
    """Prometheus text format: ({family: {"help": ..., "type": ...}},
    [(name, {label: value}, float value)]); a line that does not parse is
    (None, {}, line)."""
    fams, samples = {}, []
    for line in text.splitlines():
        if line.startswith("# HELP "):
            name, _, h = line[7:].partition(" ")
            fams.setdefault(name, {})["help"] = h
        elif line.startswith("# TYPE "):
            name, _, t = line[7:].partition(" ")
            fams.setdefault(name, {})["type"] = t
        elif line and not line.startswith("#"):
            m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
            if not m:
                samples.append((None, {}, line))
                continue
            labels = dict(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"',
                                     m.group(3) or ""))
            samples.append((m.group(1), labels, float(m.group(4))))
    return fams, samples


def sample(samples, name, **labels):
    """The value of the first sample of that name with those labels, or None."""
    for n, l, v in samples:
        if n == name and all(l.get(k) == w for k, w in labels.items()):
            return v
    return None


def sanitizer_clean(log):
    """True when a daemon log has no AddressSanitizer, LeakSanitizer or
    UBSan (runtime error) report."""
    return not any(s in log for s in ("AddressSanitizer", "LeakSanitizer", "runtime error"))


# ---- nllmctl and nllmd --------------------------------------------------------

Reply = collections.namedtuple("Reply", "rc out err")


def nllmctl(exe, via, *args, json_out=True, ok=True, timeout=120, env=None):
    """Runs EXE VIA [--json] ARGS (VIA: how to reach nllmd, such as
    ["--socket", PATH] or ["--host", URL]); returns Reply(rc, out, err).
    With json_out, out is the parsed JSON, None for no output, or the text
    when it is not one JSON document (`watch` streams lines: always text);
    otherwise out is the text. ok=True: a non-zero exit prints the command
    and its stderr (pass ok=False where a failure is expected)."""
    r = subprocess.run([exe] + list(via) + (["--json"] if json_out else []) + list(args),
                       capture_output=True, text=True, timeout=timeout, env=env,
                       stdin=subprocess.DEVNULL)
    out = r.stdout
    if json_out and args and args[0] != "watch":
        try:
            out = json.loads(r.stdout) if r.stdout.strip() else None
        except ValueError:
            pass
    if ok and r.returncode != 0:
        print("  nllmctl %s -> %d: %s" % (" ".join(args), r.returncode, r.stderr.strip()))
    return Reply(r.returncode, out, r.stderr)


class Daemon:
    """nllmd on TMP/NAME-state and TMP/NAME.sock (CPU device, 1 thread, then
    args), its output appended to TMP/NAME.log, the environment plus env;
    up when `nllmctl hello` answers (without nllmctl: when the socket
    accepts a connection). Starting it again on the same TMP and NAME
    reopens the same state. As a context manager it kills nllmd on exit if
    it still runs."""

    def __init__(self, nllmd, nllmctl, tmp, name="d", args=(), env=None):
        self.nllmctl = nllmctl
        self.sock = os.path.join(tmp, name + ".sock")
        self.state = os.path.join(tmp, name + "-state")
        self.logpath = os.path.join(tmp, name + ".log")
        self.log = open(self.logpath, "a")
        self.p = subprocess.Popen([nllmd, "--state-dir", self.state, "--socket", self.sock,
                                   "--devices", "cpu", "--threads", "1"] + list(args),
                                  stdout=self.log, stderr=self.log, stdin=subprocess.DEVNULL,
                                  env=dict(os.environ, **(env or {})))
        for _ in range(400):
            if self.p.poll() is not None:
                raise RuntimeError("nllmd exited (%s); see %s" % (self.p.returncode,
                                                                   self.logpath))
            if os.path.exists(self.sock) and self._answers():
                return
            time.sleep(0.05)
        raise RuntimeError("nllmd did not come up; see " + self.logpath)

    def _answers(self):
        if self.nllmctl:
            return self.ctl("hello", ok=False).rc == 0
        c = socket.socket(socket.AF_UNIX)
        try:
            c.connect(self.sock)
            return True
        except OSError:
            return False
        finally:
            c.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def ctl(self, *args, **kw):
        """nllmctl --socket SOCK [--json] ARGS: Reply(rc, out, err); see nllmctl()."""
        return nllmctl(self.nllmctl, ["--socket", self.sock], *args, **kw)

    def status(self, job):
        """`status JOB`'s JSON; for a job nllmd does not know, a stand-in in
        state "missing"."""
        return self.ctl("status", job, ok=False).out or {
            "state": "missing", "epoch": -1, "step": 0, "steps_per_epoch": 1, "global_step": 0,
            "error": None, "attempt": 0}

    def wait_for(self, job, cond, timeout=120):
        """The job's status once cond(status) holds, or the last one after timeout s."""
        return poll(lambda: self.status(job), cond, timeout)

    def wait_state(self, job, states, timeout=120):
        """The job's status once its state is one of states, or the last one."""
        return self.wait_for(job, lambda st: st["state"] in states, timeout)

    def events(self, job, kind):
        """The messages of the job's events of that kind, oldest first."""
        return [e["message"] for e in self.ctl("events", job).out["events"]
                if e["kind"] == kind]

    def final_hash(self, job):
        """The weights hash of the job's final checkpoint, or None."""
        for c in self.ctl("checkpoints", job).out["checkpoints"]:
            if c["name"] == "final":
                return c["weights_hash"]
        return None

    def shutdown(self, timeout=120):
        """`nllmctl shutdown`; nllmd's exit status (None: killed after timeout s)."""
        self.ctl("shutdown", ok=False)
        return self._wait(timeout)

    def stop(self, sig=signal.SIGTERM, timeout=60):
        """Sends sig; nllmd's exit status (None: killed after timeout s)."""
        self.p.send_signal(sig)
        return self._wait(timeout)

    def _wait(self, timeout):
        try:
            return self.p.wait(timeout)
        except subprocess.TimeoutExpired:
            self.p.kill()
            self.p.wait()
            return None

    def close(self):
        """Kills nllmd if it still runs; closes the log."""
        if self.p.poll() is None:
            self.p.kill()
            self.p.wait()
        self.log.close()

    def log_text(self):
        """All nllmd wrote to its log so far."""
        with open(self.logpath, errors="replace") as f:
            return f.read()
