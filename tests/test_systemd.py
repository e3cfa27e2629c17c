#!/usr/bin/python3
"""test_systemd.py -- nllmd as a systemd service, checked without systemd
running: the units meson generates pass `systemd-analyze verify`, and the
daemon speaks the service manager's protocols (sd_notify, the watchdog,
socket activation) to sockets this script owns. Standard library only; the
one RPC it makes (`hello`) goes through the msgpack-RPC client of
tests/reliability/rlib.py (standard library too).

Usage (meson passes the arguments; suite 'systemd'):
  test_systemd.py units  NLLMD NLLMD_SERVICE NLLMD_SOCKET SYSUSERS_CONF
      `systemd-analyze verify` of the generated units, ExecStart= pointed at
      the built nllmd; any complaint fails. `systemd-sysusers --dry-run` of
      the sysusers.d entry. Exit 77 without systemd-analyze.
  test_systemd.py daemon NLLMD NLLMD_CONF
      Type=notify: READY=1 only once the control socket answers, STATUS=,
      WATCHDOG=1 about every WATCHDOG_USEC/2, STOPPING=1 and exit 0 on
      SIGTERM. Socket activation: nllmd adopts fd 3 (LISTEN_FDS/LISTEN_PID),
      answers `hello` on it, leaves the socket file alone, and a connection
      queued while no daemon runs is answered by the next one. The default
      config file parses, commented and uncommented.
Prints ok/FAIL lines, then "N passed, M failed".
"""
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "reliability"))
import daemonlib as dl  # noqa: E402
import rlib  # noqa: E402  (msgpack-RPC: Conn, request_bytes)

check = dl.check
# variables the service manager sets; none may leak in from the caller
SD_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "LISTEN_FDS", "LISTEN_PID",
          "LISTEN_FDNAMES", "RUNTIME_DIRECTORY", "STATE_DIRECTORY", "NLLM_SOCKET")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in SD_ENV}
    env.update(extra)
    return env


# ---- units ------------------------------------------------------------------

# Lines systemd-analyze may print about the account, which need not exist on
# the build machine (systemd-sysusers makes it at install time).
ACCOUNT_NOISE = re.compile(r"\b(user|group)\b.*\bnllm\b.*(not found|does not exist|unknown)",
                           re.I)


def units(nllmd, service, socket_unit, sysusers):
    sa = shutil.which("systemd-analyze")
    if not sa:
        print("SKIP: systemd-analyze not found (Debian package systemd)")
        return 77
    text = open(service).read()
    check("@" not in re.sub(r"^#.*$", "", text, flags=re.M),
          "nllmd.service: every @VAR@ substituted")
    m = re.search(r"^ExecStart=(\S+)/nllmd (.*)$", text, re.M)
    check(m is not None and os.path.isabs(m.group(1)) and
          "--config " in m.group(2) and m.group(2).endswith("/nllm/nllmd.conf"),
          "nllmd.service: ExecStart= runs the installed nllmd with the config file",
          m.group(0) if m else "no ExecStart=")
    for key in ("Type=notify", "WatchdogSec=", "User=nllm", "Group=nllm", "StateDirectory=nllm",
                "RuntimeDirectory=nllm", "RuntimeDirectoryPreserve=yes", "DevicePolicy=closed",
                "KillMode=mixed", "TimeoutStopSec=", "Restart=on-failure"):
        check(re.search(r"^" + re.escape(key), text, re.M) is not None,
              "nllmd.service has " + key)
    check(not re.search(r"^MemoryDenyWriteExecute=yes", text, re.M),
          "nllmd.service leaves MemoryDenyWriteExecute= off (CUDA)")
    stext = open(socket_unit).read()
    for key in ("ListenStream=/run/nllm/nllmd.sock", "SocketMode=0660", "SocketUser=nllm",
                "SocketGroup=nllm", "Service=nllmd.service"):
        check(re.search(r"^" + re.escape(key) + r"\s*$", stext, re.M) is not None,
              "nllmd.socket has " + key)

    # verify needs ExecStart='s binary to exist: the built one stands in for
    # the installed one; nothing else in the units changes.
    tmp = tempfile.mkdtemp(prefix="nllm-units-")
    try:
        with open(os.path.join(tmp, "nllmd.service"), "w") as f:
            f.write(re.sub(r"^ExecStart=\S+", "ExecStart=" + os.path.abspath(nllmd), text,
                           flags=re.M))
        shutil.copy(socket_unit, os.path.join(tmp, "nllmd.socket"))
        # --man=no: the man pages are not installed while testing
        r = subprocess.run([sa, "verify", "--man=no", os.path.join(tmp, "nllmd.service"),
                            os.path.join(tmp, "nllmd.socket")],
                           capture_output=True, text=True, timeout=60)
        lines = [ln for ln in (r.stdout + r.stderr).splitlines() if ln.strip()]
        complaints = [ln for ln in lines if not ACCOUNT_NOISE.search(ln)]
        # verify exits 0 even for unknown keys, so any output is a failure
        check(r.returncode == 0 and not complaints, "systemd-analyze verify: units are clean",
              "rc %d: %s" % (r.returncode, " | ".join(complaints)))
        for ln in lines:
            if ln not in complaints:
                print("  (accepted: %s)" % ln)
        # how exposed the service is (systemd >= 250); informative, plus a
        # bound so a hardening line cannot vanish unnoticed
        r = subprocess.run([sa, "security", "--offline=yes", "--no-pager",
                            os.path.join(tmp, "nllmd.service")],
                           capture_output=True, text=True, timeout=60)
        m = re.search(r"Overall exposure level for nllmd\.service: ([0-9.]+)", r.stdout)
        if m:
            check(float(m.group(1)) <= 4.5,
                  "systemd-analyze security: exposure %s <= 4.5" % m.group(1))
        else:
            print("  (systemd-analyze security --offline not supported here: not checked)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    # the account the units name: systemd-sysusers would make it (nothing is
    # written with --dry-run, systemd >= 250)
    su = shutil.which("systemd-sysusers")
    r = subprocess.run([su, "--dry-run", os.path.abspath(sysusers)], capture_output=True, text=True,
                       timeout=60) if su else None
    if r is None or "unrecognized option" in r.stderr:
        print("  (systemd-sysusers --dry-run not available: sysusers.d entry not checked)")
    else:
        out = r.stdout + r.stderr
        bad = [ln for ln in out.splitlines() if re.search(r"fail|error|invalid|ignor", ln, re.I)]
        made = re.search(r"user 'nllm'", out) or getent_has("passwd", "nllm")
        check(r.returncode == 0 and not bad and made,
              "systemd-sysusers --dry-run: the sysusers.d entry makes user nllm",
              "rc %d: %s" % (r.returncode, out.strip()[-300:]))
    return 0


def getent_has(db, name):
    """Whether the account already exists (then sysusers has nothing to do)."""
    import grp
    import pwd
    try:
        (pwd.getpwnam if db == "passwd" else grp.getgrnam)(name)
        return True
    except KeyError:
        return False


# ---- hello over msgpack-RPC --------------------------------------------------


def reply(conn, msgid, timeout):
    """The response to msgid on an rlib.Conn: (error, result); notifications
    are skipped."""
    while True:
        m = conn.recv_msg(timeout)
        if m is None:
            raise ConnectionError("nllmd closed the connection")
        if m[0] == 1 and m[1] == msgid:
            return m[2], m[3]


def hello_over(path, timeout=20.0):
    c = rlib.Conn(path, timeout)
    try:
        return c.call("hello", None, timeout)
    finally:
        c.close()


def good_hello(r):
    err, res = r
    return (err is None and isinstance(res, dict) and res.get("protocol") == 1 and
            str(res.get("daemon", "")).startswith("nllmd "))


# ---- sd_notify --------------------------------------------------------------


class Notify:
    """A datagram socket standing in for systemd's $NOTIFY_SOCKET."""

    def __init__(self, path):
        self.path = path
        self.s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.s.bind(path)
        self.msgs = []  # (monotonic time, one assignment such as READY=1)

    def poll(self, until, stop=None):
        """Collects messages until time `until` or until stop(msgs) holds."""
        while True:
            if stop and stop(self.msgs):
                return True
            left = until - time.monotonic()
            if left <= 0:
                return False
            self.s.settimeout(min(left, 0.2))
            try:
                data = self.s.recv(4096)
            except socket.timeout:
                continue
            now = time.monotonic()
            for line in data.decode("utf-8", "replace").split("\n"):
                if line:
                    self.msgs.append((now, line))

    def times(self, what):
        return [t for t, m in self.msgs if m == what or m.startswith(what)]

    def close(self):
        self.s.close()


def is_socket(path):
    try:
        return stat.S_ISSOCK(os.lstat(path).st_mode)
    except FileNotFoundError:
        return False


def answers(path):
    c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        c.settimeout(2)
        c.connect(path)
        return True
    except OSError:
        return False
    finally:
        c.close()


def stop(p, timeout=60, signalled=False):
    """SIGTERM (unless already sent: one signal, as systemd sends) and the
    exit status; SIGKILL after timeout seconds."""
    if p.poll() is None and not signalled:
        p.send_signal(signal.SIGTERM)
    try:
        return p.wait(timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
        return None


def log_text(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def quiet_flags(nllmd):
    """--metrics none where nllmd has it: its HTTP listener would otherwise
    take 127.0.0.1:9477 from tests running beside this one."""
    usage = subprocess.run([nllmd, "--help"], capture_output=True, text=True).stdout
    return ["--metrics", "none"] if re.search(r"^  --metrics ", usage, re.M) else []


def notify_checks(nllmd, conf, tmp):
    """Type=notify and the watchdog, on a daemon that binds its own socket."""
    sock = os.path.join(tmp, "run", "nllmd.sock")
    n = Notify(os.path.join(tmp, "notify.sock"))
    logp = os.path.join(tmp, "notify.log")
    with open(logp, "w") as log:
        p = subprocess.Popen([nllmd, "--config", conf, "--state-dir", os.path.join(tmp, "state"),
                              "--socket", sock, "--devices", "cpu", "--threads", "1"] +
                             quiet_flags(nllmd),
                             stdout=log, stderr=log,
                             env=clean_env(NOTIFY_SOCKET=n.path, WATCHDOG_USEC="2000000"))
    try:
        t0 = time.monotonic()
        got = n.poll(t0 + 30, lambda ms: any(m == "READY=1" for _, m in ms) or
                     p.poll() is not None)
        ready = got and bool(n.times("READY=1"))
        # the socket must already answer when READY=1 is read
        up = ready and is_socket(sock) and answers(sock)
        check(ready, "READY=1 arrives (the shipped nllmd.conf parses)",
              "exit %s; log: %s" % (p.poll(), log_text(logp)[-400:]))
        check(up, "READY=1 comes after the control socket answers")
        if not ready:
            return
        t_ready = n.times("READY=1")[0]
        n.poll(t_ready + 4.6)
        check(n.times("STATUS=") and n.times("STATUS=")[0] >= t_ready - 0.001,
              "STATUS= lines arrive (%s)" % (n.times("STATUS=") and
                                             [m for _, m in n.msgs if m.startswith("STATUS=")][0]))
        st = [m for _, m in n.msgs if m.startswith("STATUS=")]
        check(bool(st) and re.match(r"STATUS=\d+ job\(s\) running, \d+ queued, \d+ client\(s\)$",
                                    st[0]) is not None, "STATUS= says jobs and clients", str(st))
        check(len(n.times("READY=1")) == 1, "READY=1 is sent once")
        wd = [t for t in n.times("WATCHDOG=1") if t >= t_ready]
        gaps = [b - a for a, b in zip(wd, wd[1:])]
        check(len(wd) >= 3 and all(0.5 <= g <= 1.6 for g in gaps),
              "WATCHDOG=1 about every second with WATCHDOG_USEC=2000000 (%d in 4.6 s)" % len(wd),
              "gaps %s" % ["%.2f" % g for g in gaps])
        r = hello_over(sock)
        check(good_hello(r), "hello over the socket it bound", str(r))
        p.send_signal(signal.SIGTERM)
        t_term = time.monotonic()
        n.poll(t_term + 30, lambda ms: any(m == "STOPPING=1" for _, m in ms))
        check(bool(n.times("STOPPING=1")), "STOPPING=1 after SIGTERM")
        rc = stop(p, signalled=True)
        check(rc == 0, "exit 0 after SIGTERM", "exit %s" % rc)
        check(not os.path.exists(sock), "the socket it bound itself is removed on exit")
    finally:
        stop(p)
        n.close()


def uncommented_conf(conf, tmp, state, sock):
    """The shipped config with its settings uncommented (paths moved here,
    no TCP listeners, cpu only): every documented key must parse."""
    out = []
    keys = set()
    for line in open(conf):
        m = re.match(r"^#([a-z-]+) = (.*)$", line.rstrip("\n"))
        if not m:
            out.append(line)
            continue
        k, v = m.groups()
        keys.add(k)
        v = {"state-dir": state, "socket": sock, "devices": "cpu", "threads": "1",
             "auto-resume": "yes", "metrics": "none"}.get(k, v)
        if k in ("listen", "token-file"):
            out.append(line)  # a port and a token file would be needed
        else:
            out.append("%s = %s\n" % (k, v))
    path = os.path.join(tmp, "nllmd-uncommented.conf")
    with open(path, "w") as f:
        f.writelines(out)
    return path, keys


def activation_checks(nllmd, conf, tmp):
    """Socket activation the way nllmd.socket + nllmd.service do it: the
    listening socket is fd 3, LISTEN_FDS=1, LISTEN_PID is nllmd's pid, and
    the paths come from $RUNTIME_DIRECTORY and $STATE_DIRECTORY."""
    rundir = os.path.join(tmp, "act-run")
    state = os.path.join(tmp, "act-state")
    os.mkdir(rundir)
    path = os.path.join(rundir, "nllmd.sock")
    cfg, keys = uncommented_conf(conf, tmp, state, path)
    # the settings are the long flags of `nllmd --help` but these three
    usage = subprocess.run([nllmd, "--help"], capture_output=True, text=True).stdout
    want = set(re.findall(r"^  --([a-z-]+)", usage, re.M)) - {"config", "version", "help"}
    check(keys == want, "nllmd.conf lists every setting of nllmd --help",
          "missing %s, extra %s" % (sorted(want - keys), sorted(keys - want)))
    ls = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    ls.bind(path)
    os.chmod(path, 0o660)
    ls.listen(16)
    ino = os.lstat(path).st_ino
    # A wrapper puts the socket on fd 3 and execs nllmd in the same process,
    # so LISTEN_PID (set before the exec) is nllmd's pid, as systemd does it.
    wrapper = ("import os, sys\n"
               "fd = int(sys.argv[1])\n"
               "if fd != 3:\n"
               "    os.dup2(fd, 3)\n"
               "    os.close(fd)\n"
               "os.environ['LISTEN_FDS'] = '1'\n"
               "os.environ['LISTEN_PID'] = str(os.getpid())\n"
               "os.execv(sys.argv[2], sys.argv[2:])\n")

    def start(n, logp):
        log = open(logp, "a")
        p = subprocess.Popen([sys.executable, "-c", wrapper, str(ls.fileno()), nllmd,
                              "--config", cfg], pass_fds=(ls.fileno(),), stdout=log, stderr=log,
                             env=clean_env(NOTIFY_SOCKET=n.path, RUNTIME_DIRECTORY=rundir,
                                           STATE_DIRECTORY=state))
        log.close()
        return p

    n = Notify(os.path.join(tmp, "act-notify.sock"))
    logp = os.path.join(tmp, "act.log")
    p = start(n, logp)
    p2 = None
    try:
        t0 = time.monotonic()
        n.poll(t0 + 30, lambda ms: any(m == "READY=1" for _, m in ms) or p.poll() is not None)
        check(bool(n.times("READY=1")), "socket activation: READY=1 (uncommented nllmd.conf parses)",
              "exit %s; log: %s" % (p.poll(), log_text(logp)[-400:]))
        if not n.times("READY=1"):
            return
        check("using the socket passed by the service manager" in log_text(logp),
              "socket activation: nllmd says it adopted fd 3")
        r = hello_over(path)
        check(good_hello(r), "socket activation: hello over the passed socket", str(r))
        check(good_hello(r) and r[1].get("max_jobs") == 1,
              "socket activation: settings from the config file apply (max-jobs = 1)", str(r))
        check(os.path.isdir(os.path.join(state, "jobs")) and
              os.path.exists(os.path.join(state, "catalog.db")),
              "state in $STATE_DIRECTORY")
        check(not n.times("WATCHDOG=1"), "no WATCHDOG=1 without WATCHDOG_USEC")
        p.send_signal(signal.SIGTERM)
        n.poll(time.monotonic() + 30, lambda ms: any(m == "STOPPING=1" for _, m in ms))
        check(bool(n.times("STOPPING=1")), "socket activation: STOPPING=1 after SIGTERM")
        rc = stop(p, signalled=True)
        check(rc == 0, "socket activation: exit 0 after SIGTERM", "exit %s" % rc)
        check(is_socket(path) and os.lstat(path).st_ino == ino,
              "socket activation: nllmd left the socket file it did not create")
        # as with systemd holding the socket: a client that connects while no
        # daemon runs waits in the backlog and the next nllmd answers it
        c = rlib.Conn(path, 30)
        c.send_raw(rlib.request_bytes(9, "hello"))
        n2 = Notify(os.path.join(tmp, "act-notify2.sock"))
        p2 = start(n2, logp)
        try:
            r = reply(c, 9, 30)
        except (OSError, ConnectionError) as e:
            r = (str(e), None)
        finally:
            c.close()
        check(good_hello(r), "socket activation: a connection queued while nllmd was down is "
              "answered by the next nllmd", str(r))
        rc = stop(p2)
        p2 = None
        n2.close()
        check(rc == 0 and is_socket(path), "socket activation: second nllmd exits 0, socket stays")
    finally:
        stop(p)
        if p2 is not None:
            stop(p2)
        n.close()
        ls.close()


def mismatch_checks(nllmd, conf, tmp):
    """LISTEN_PID naming another process: the fds are not for nllmd, so it
    binds --socket itself."""
    other = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # must stay unused
    other.bind(os.path.join(tmp, "decoy.sock"))
    other.listen(1)
    sock = os.path.join(tmp, "mm-run", "nllmd.sock")
    logp = os.path.join(tmp, "mm.log")
    n = Notify(os.path.join(tmp, "mm-notify.sock"))
    with open(logp, "w") as log:
        p = subprocess.Popen([sys.executable, "-c",
                              "import os, sys; os.dup2(int(sys.argv[1]), 3); "
                              "os.execv(sys.argv[2], sys.argv[2:])",
                              str(other.fileno()), nllmd, "--config", conf, "--state-dir",
                              os.path.join(tmp, "mm-state"), "--socket", sock, "--devices",
                              "cpu"] + quiet_flags(nllmd),
                             pass_fds=(other.fileno(),), stdout=log, stderr=log,
                             env=clean_env(NOTIFY_SOCKET=n.path, LISTEN_FDS="1", LISTEN_PID="1"))
    try:
        n.poll(time.monotonic() + 30,
               lambda ms: any(m == "READY=1" for _, m in ms) or p.poll() is not None)
        r = hello_over(sock) if n.times("READY=1") else ("not ready", None)
        check(good_hello(r) and "passed by the service manager" not in log_text(logp),
              "LISTEN_PID of another process: nllmd ignores fd 3 and binds --socket",
              "%s; log: %s" % (r, log_text(logp)[-300:]))
        check(stop(p) == 0, "LISTEN_PID of another process: exit 0 after SIGTERM")
    finally:
        stop(p)
        n.close()
        other.close()


def daemon(nllmd, conf):
    if not os.access(nllmd, os.X_OK):
        print("SKIP: %s is not built" % nllmd)
        return 77
    # short: Unix socket paths must fit in 108 bytes
    with dl.tmpdir("nllm-sd-", dir="/tmp") as tmp:
        notify_checks(nllmd, conf, tmp)
        activation_checks(nllmd, conf, tmp)
        mismatch_checks(nllmd, conf, tmp)
    return 0


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "units":
        rc = units(*sys.argv[2:])
    elif len(sys.argv) == 4 and sys.argv[1] == "daemon":
        rc = daemon(*sys.argv[2:])
    else:
        print(__doc__)
        return 2
    if rc == 77:
        return 77
    return dl.report()


if __name__ == "__main__":
    sys.exit(main())
