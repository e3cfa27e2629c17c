#!/usr/bin/python3
"""test_ssh.py -- nllmctl --host ssh://: the real nllmctl through a real sshd.

Starts sshd on 127.0.0.1 (a generated host key, a generated user key in
the temporary authorized_keys, no PAM) and nllmd on a temporary socket,
then through `nllmctl --host ssh://USER@127.0.0.1:PORT/SOCKET` (the remote
command is the build's nllmctl, named by NLLM_REMOTE_NLLMCTL; ssh's
options come from NLLM_SSH_OPTS) runs hello, start, status, list, watch
(and start --watch until the job completes), pause, resume, a watch that
Ctrl-C detaches (exit 0), stop, sees a refused command's error come through with exit 1,
uses NLLM_HOST instead of the flag, and checks that an unreachable host, a
remote socket nobody serves and a bad URL fail with their exit codes and a
message naming the host. Each remote proxy exits when its client is done.

Usage: test_ssh.py BUILD_DIR   (meson passes it). Exits 77 (skip) when
ssh, ssh-keygen or sshd is missing, or sshd cannot run here.
"""
import getpass
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemonlib as dl  # noqa: E402

BUILD, NLLMD, NLLMCTL = dl.programs()
SSHD = "/usr/sbin/sshd"
check, skip = dl.check, dl.skip


def start_sshd(tmp):
    """Returns (Popen, port, user, key path) or skips."""
    for prog in ("ssh", "ssh-keygen"):
        if not shutil.which(prog):
            skip("%s not installed (apt-get install openssh-client)" % prog)
    if not os.access(SSHD, os.X_OK):
        skip("%s not installed (apt-get install openssh-server)" % SSHD)
    if not os.path.isdir("/run/sshd"):  # sshd's privilege separation folder
        try:
            os.makedirs("/run/sshd", mode=0o755)
        except OSError as e:
            skip("cannot create /run/sshd for sshd: %s" % e)
    user = getpass.getuser()
    hostkey, key = os.path.join(tmp, "host_ed25519"), os.path.join(tmp, "id_ed25519")
    for k in (hostkey, key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", k], check=True)
    shutil.copy(key + ".pub", os.path.join(tmp, "authorized_keys"))
    port = dl.free_port()
    cfg = os.path.join(tmp, "sshd_config")
    with open(cfg, "w") as f:
        f.write("ListenAddress 127.0.0.1\nHostKey %s\nAuthorizedKeysFile %s\n"
                "StrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
                "PidFile %s\nLogLevel ERROR\n"
                % (hostkey, os.path.join(tmp, "authorized_keys"), os.path.join(tmp, "sshd.pid")))
    log = open(os.path.join(tmp, "sshd.log"), "w")
    p = subprocess.Popen([SSHD, "-D", "-e", "-f", cfg, "-p", str(port)],
                         stdout=log, stderr=log)
    for _ in range(100):
        if p.poll() is not None:
            with open(log.name) as f:
                skip("sshd cannot run here (exit %s): %s" % (p.returncode, f.read().strip()))
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port, user, key
        except OSError:
            time.sleep(0.05)
    p.kill()
    skip("sshd did not listen on 127.0.0.1:%d" % port)


def run(tmp):
    sshd, port, user, key = start_sshd(tmp)
    try:
        with dl.Daemon(NLLMD, NLLMCTL, tmp, "d") as d:
            through_ssh(tmp, d.sock, port, user, key)
            d.stop()
    finally:
        sshd.terminate()
        sshd.wait(30)


def through_ssh(tmp, sock, port, user, key):
    env = dict(os.environ)
    for k in ("NLLM_HOST", "NLLM_SOCKET"):
        env.pop(k, None)
    env["NLLM_REMOTE_NLLMCTL"] = NLLMCTL
    env["NLLM_SSH_OPTS"] = ("-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no "
                            "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -i " + key)
    host = "ssh://%s@127.0.0.1:%d" % (user, port)
    url = host + sock

    def ctl(*args, via=("--host", url), extra_env=None, timeout=120):
        return dl.nllmctl(NLLMCTL, via, *args, env=dict(env, **(extra_env or {})),
                          timeout=timeout, ok=False)

    def state(name):
        rc, st, _ = ctl("status", name)
        return st.get("state") if rc == 0 and isinstance(st, dict) else None

    rc, out, err = ctl("hello")
    check(rc == 0 and isinstance(out, dict) and "nllmd" in str(out.get("daemon")),
          "hello through ssh (%d %s)" % (rc, err.strip()))

    data = os.path.join(tmp, "train.txt")
    dl.corpus(data, 400)
    t0 = time.time()
    ctl("hello")
    print("  one call through ssh takes %.2f s" % (time.time() - t0), flush=True)
    rc, out, err = ctl("start", "tiny", "--data", data, "--epochs", "2", *dl.SMALL)
    check(rc == 0 and isinstance(out, dict), "start through ssh (%d %s)" % (rc, err.strip()))
    rc, out, err = ctl("status", "tiny")
    check(rc == 0 and out.get("name") == "tiny" and "state" in out,
          "status through ssh (%d %s)" % (rc, err.strip()))
    rc, out, err = ctl("list")
    check(rc == 0 and "tiny" in json.dumps(out), "list through ssh (%d %s)" % (rc, err.strip()))

    rc, out, err = ctl("watch", "tiny", timeout=300)
    check(rc == 0 and out and json.loads(out.splitlines()[0]).get("watching") == "tiny",
          "watch through ssh (%d %s)" % (rc, err.strip()))
    # start --watch pipelines the watch: every notification arrives
    rc, out, err = ctl("start", "tiny2", "--data", data, "--epochs", "2", "--watch",
                       *dl.SMALL, timeout=300)
    notes = [json.loads(l) for l in (out or "").splitlines()[1:] if l.strip()]
    methods = {str(n.get("method")) for n in notes}
    check(rc == 0 and "epoch" in methods,
          "start --watch streams notifications through ssh until the job ends (%d %s %s)"
          % (rc, sorted(methods), err.strip()))
    check(state("tiny2") == "completed", "the job completed")

    rc, out, err = ctl("start", "long", "--data", data, "--epochs", "1000", "--patience",
                       "1000", *dl.SMALL)
    dl.poll(lambda: state("long"), lambda st: st == "running", 60, 0.1)
    rc, _, err = ctl("pause", "long")
    check(rc == 0, "pause through ssh (%d %s)" % (rc, err.strip()))
    dl.poll(lambda: state("long"), lambda st: st == "paused", 60, 0.1)
    check(state("long") == "paused", "the job is paused")
    rc, _, err = ctl("resume", "long")
    check(rc == 0 and state("long") in ("queued", "running"),
          "resume through ssh (%d %s)" % (rc, err.strip()))
    # Ctrl-C at a terminal reaches nllmctl and ssh alike: watch detaches, exit 0
    w = subprocess.Popen([NLLMCTL, "--host", url, "--json", "watch", "long"], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    first = w.stdout.readline()
    time.sleep(0.3)
    os.killpg(w.pid, signal.SIGINT)
    try:
        rest, werr = w.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        w.kill()
        rest, werr = w.communicate()
    check(w.returncode == 0 and '"watching"' in first,
          "Ctrl-C detaches a watch through ssh, exit 0 (%s %s)" % (w.returncode, werr.strip()))
    rc, _, err = ctl("stop", "long")
    check(rc == 0, "stop through ssh (%d %s)" % (rc, err.strip()))

    rc, _, err = ctl("resume", "nosuchjob")
    check(rc == 1 and "nosuchjob" in err and "ssh" not in err,
          "a refused command's error comes through, exit 1 (%d %s)" % (rc, err.strip()))
    rc, _, err = ctl("start", "rel", "--data", "train.txt")
    check(rc == 2 and "absolute path on " + url in err,
          "start wants absolute data paths on the remote host (%d %s)" % (rc, err.strip()))

    rc, out, err = ctl("hello", via=(), extra_env={"NLLM_HOST": url})
    check(rc == 0 and isinstance(out, dict), "NLLM_HOST instead of --host (%d %s)"
          % (rc, err.strip()))
    rc, out, err = ctl("hello", via=("--socket", sock),
                       extra_env={"NLLM_HOST": "ssh://nobody@127.0.0.1:1"})
    check(rc == 0, "--socket wins over NLLM_HOST (%d %s)" % (rc, err.strip()))

    dead = "ssh://%s@127.0.0.1:%d" % (user, dl.free_port())
    rc, _, err = ctl("hello", via=("--host", dead), timeout=60)
    check(rc == 3 and ("cannot reach nllmd on " + dead) in err and "ssh exited 255" in err,
          "an unreachable host: exit 3 naming it (%d %s)" % (rc, err.strip()))
    rc, _, err = ctl("list", via=("--host", host + "/nonexistent/x.sock"))
    check(rc == 3 and ("cannot reach nllmd on " + host) in err
          and "/nonexistent/x.sock" in err,
          "a remote socket nobody serves: exit 3 naming host and socket (%d %s)"
          % (rc, err.strip()))
    rc, _, err = ctl("hello", via=("--host", "tcp://127.0.0.1:1"))
    check(rc == 2 and "ssh://" in err, "a URL that is not ssh:// is a usage error (%d %s)"
          % (rc, err.strip()))
    rc, _, err = ctl("hello", via=("--host", url, "--socket", sock))
    check(rc == 2, "--host with --socket is a usage error (%d %s)" % (rc, err.strip()))

    # every proxy (and its ssh session) ends with its client: sshd tears a
    # session down after its client has gone, which takes a moment more on
    # a loaded machine, so wait for that (a proxy that never ends still
    # fails after 10 s)
    deadline = time.time() + 10
    while True:
        r = subprocess.run(["pgrep", "-f", NLLMCTL + " proxy"], capture_output=True, text=True)
        if r.stdout.strip() == "" or time.time() > deadline:
            break
        time.sleep(0.1)
    check(r.stdout.strip() == "", "no remote proxy outlives its client (%s)"
          % r.stdout.strip())


if __name__ == "__main__":
    sys.exit(dl.main(run, "nllm-ssh-", NLLMD, NLLMCTL))
