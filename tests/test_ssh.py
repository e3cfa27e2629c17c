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
import tempfile
import time

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
NLLMD = os.path.join(BUILD, "nllmd")
NLLMCTL = os.path.join(BUILD, "nllmctl")
SSHD = "/usr/sbin/sshd"
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print("ok   " + what, flush=True)
    else:
        failed += 1
        print("FAIL " + what, flush=True)
    return cond


def skip(why):
    print("SKIP: " + why)
    sys.exit(77)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


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
    port = free_port()
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


def corpus(path, lines):
    words = ("the king queen lord lady sword crown castle river night day sun moon "
             "speak love war peace heart mind fair foul good ill").split()
    with open(path, "w") as f:
        for i in range(lines):
            f.write(" ".join(words[(i * 7 + k * 3) % len(words)] for k in range(5 + i % 9)) + "\n")


SMALL = ["--vocab", "30", "--embed-dim", "8", "--hidden-dim", "24", "--context-dim", "8",
         "--layers", "2", "--seq-len", "16", "--batch", "4", "--lr", "0.003",
         "--dropout", "0.1", "--threads", "1"]


def main():
    tmp = tempfile.mkdtemp(prefix="nllm-ssh-")
    sshd, port, user, key = start_sshd(tmp)
    sock = os.path.join(tmp, "d.sock")
    dlog = open(os.path.join(tmp, "nllmd.log"), "w")
    d = subprocess.Popen([NLLMD, "--state-dir", os.path.join(tmp, "state"), "--socket", sock,
                          "--devices", "cpu", "--threads", "1"], stdout=dlog, stderr=dlog)
    env = dict(os.environ)
    for k in ("NLLM_HOST", "NLLM_SOCKET"):
        env.pop(k, None)
    env["NLLM_REMOTE_NLLMCTL"] = NLLMCTL
    env["NLLM_SSH_OPTS"] = ("-F /dev/null -o BatchMode=yes -o StrictHostKeyChecking=no "
                            "-o UserKnownHostsFile=/dev/null -o LogLevel=ERROR -i " + key)
    host = "ssh://%s@127.0.0.1:%d" % (user, port)
    url = host + sock

    def ctl(*args, via=("--host", url), extra_env=None, timeout=120):
        e = dict(env, **(extra_env or {}))
        r = subprocess.run([NLLMCTL, *via, "--json", *args], capture_output=True, text=True,
                           timeout=timeout, env=e)
        out = None
        if r.stdout.strip() and args[0] != "watch":
            try:
                out = json.loads(r.stdout)
            except ValueError:
                out = r.stdout
        elif args[0] == "watch":
            out = r.stdout
        return r.returncode, out, r.stderr

    def state(name):
        rc, st, _ = ctl("status", name)
        return st.get("state") if rc == 0 and isinstance(st, dict) else None

    try:
        t = time.time()
        while not os.path.exists(sock) and time.time() - t < 30:
            time.sleep(0.05)
        rc, out, err = ctl("hello")
        check(rc == 0 and isinstance(out, dict) and "nllmd" in str(out.get("daemon")),
              "hello through ssh (%d %s)" % (rc, err.strip()))

        data = os.path.join(tmp, "train.txt")
        corpus(data, 400)
        t0 = time.time()
        ctl("hello")
        print("  one call through ssh takes %.2f s" % (time.time() - t0), flush=True)
        rc, out, err = ctl("start", "tiny", "--data", data, "--epochs", "2", *SMALL)
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
        rc, out, err = ctl("start", "tiny2", "--data", data, "--epochs", "2", "--watch", *SMALL,
                           timeout=300)
        notes = [json.loads(l) for l in (out or "").splitlines()[1:] if l.strip()]
        methods = {str(n.get("method")) for n in notes}
        check(rc == 0 and "epoch" in methods,
              "start --watch streams notifications through ssh until the job ends (%d %s %s)"
              % (rc, sorted(methods), err.strip()))
        check(state("tiny2") == "completed", "the job completed")

        rc, out, err = ctl("start", "long", "--data", data, "--epochs", "1000", "--patience",
                           "1000", *SMALL)
        t = time.time()
        while state("long") != "running" and time.time() - t < 60:
            time.sleep(0.1)
        rc, _, err = ctl("pause", "long")
        check(rc == 0, "pause through ssh (%d %s)" % (rc, err.strip()))
        t = time.time()
        while state("long") != "paused" and time.time() - t < 60:
            time.sleep(0.1)
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

        dead = "ssh://%s@127.0.0.1:%d" % (user, free_port())
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

        # every proxy (and its ssh session) ended with its client
        time.sleep(0.5)
        r = subprocess.run(["pgrep", "-f", NLLMCTL + " proxy"], capture_output=True, text=True)
        check(r.stdout.strip() == "", "no remote proxy outlives its client (%s)"
              % r.stdout.strip())
    finally:
        d.send_signal(signal.SIGTERM)
        try:
            d.wait(60)
        except subprocess.TimeoutExpired:
            d.kill()
        sshd.terminate()
        sshd.wait(30)
    print("%d passed, %d failed" % (passed, failed))
    if failed:
        print("logs in " + tmp)
        return 1
    shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
