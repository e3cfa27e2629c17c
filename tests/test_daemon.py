#!/usr/bin/python3
"""test_daemon.py -- end-to-end: the real nllmd driven by the real nllmctl.

Starts nllmd on a temporary state dir and socket and checks, through
`nllmctl --json`: start, watch, pause in the middle of an epoch and resume
from `paused`, resume from `epoch_3` after completion, bit-identical final
weights for a straight run and for both interrupted runs, extend, stop,
list, checkpoints, history (superseded rows), events, verify, generate,
a job that fails (its data file vanished) while the daemon keeps serving,
replies (also generate/verify from the thread pool) to a client that
half-closed (shutdown(SHUT_WR)) before they were ready, then EOF,
a refused resume of a completed job without more epochs (conflict, nothing
touched) and one with --epochs that trains on, precision (a job started
with --precision fp32 shows it in status; hello lists the cpu's
precisions; tf32 on the cpu is refused by start, resume and `nllmd run`,
naming the job, the device and fp32, leaving nothing behind, the daemon
still serving), SIGKILL then
restart (job `interrupted`, checkpoints verify, resumes, checkpoint files
no row names removed, a token cache temp file removed), a kill between a
first epoch_1 save and its row commit (the restart records the file),
SIGTERM (paused checkpoint, exit 0), and 50 concurrent clients calling
status while a job trains.

Usage: test_daemon.py BUILD_DIR   (meson passes it). Prints "N passed, M failed".
"""
import functools
import hashlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemonlib as dl  # noqa: E402

BUILD, NLLMD, NLLMCTL = dl.programs()
check, corpus = dl.check, dl.corpus


# nllmd on TMP/d-state and TMP/d.sock
Daemon = functools.partial(dl.Daemon, NLLMD, NLLMCTL)


SMALL = ["--vocab", "30", "--embed-dim", "8", "--hidden-dim", "24", "--context-dim", "8",
         "--layers", "2", "--seq-len", "16", "--batch", "4", "--lr", "0.003",
         "--save-every", "3", "--dropout", "0.1", "--threads", "1"]


def half_closed(sock_path, requests, timeout=60):
    """Sends [(msgid, method, params)], then shutdown(SHUT_WR); returns the
    messages read until EOF and whether EOF came (not a reset or timeout)."""
    import msgpack
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(timeout)
    s.connect(sock_path)
    for mid, method, params in requests:
        s.sendall(msgpack.packb([0, mid, method, [params]]))
    s.shutdown(socket.SHUT_WR)
    u = msgpack.Unpacker(raw=False)
    got, eof = [], False
    try:
        while True:
            b = s.recv(1 << 20)
            if not b:
                eof = True
                break
            u.feed(b)
            got.extend(u)
    except OSError as e:
        print("     half-closed connection: %r" % e)
    s.close()
    return got, eof


def oneshot_resume(tmp, data):
    """`nllmd run NAME --resume [flags]` changes the job's settings as
    `nllmctl resume` does: training keys apply, the shape, data and seed are
    refused naming the key, and a completed job with nothing left to train is
    refused without rewriting its final checkpoint."""
    top = os.path.join(tmp, "oneshot-resume")
    os.makedirs(top)
    state = os.path.join(top, "d-state")  # Daemon(top)'s
    final = os.path.join(state, "jobs", "b", "checkpoints", "b_final.safetensors")

    def nrun(*args):
        return subprocess.run([NLLMD, "run", "--state-dir", state, "b", "--devices", "cpu"] +
                              list(args), capture_output=True, text=True, timeout=300)

    def final_id():
        with open(final, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest(), os.stat(final).st_mtime_ns

    first = ["--data", data, "--epochs", "2"] + SMALL
    r = nrun(*first)
    check(r.returncode == 0 and "Epoch 2/2" in r.stdout, "nllmd run b: 2 epochs (%d %s)"
          % (r.returncode, r.stderr.strip()[-300:]))
    # a batch script reruns the same command with --resume and a new target
    r = nrun(*(first + ["--resume", "--epochs", "4"]))
    check(r.returncode == 0 and "Epoch 4/4" in r.stdout and "Epoch 3/4" in r.stdout,
          "nllmd run b --resume --epochs 4 (same flags otherwise) trains epochs 3-4 (%d %s)"
          % (r.returncode, r.stderr.strip()[-300:]))
    before = final_id()
    r = nrun("--resume")
    check(r.returncode != 0 and "would only rewrite its final checkpoint" in r.stderr and
          "job b has completed" in r.stderr and final_id() == before,
          "nllmd run b --resume on the completed job refused, b_final unchanged (%d %s)"
          % (r.returncode, r.stderr.strip()))
    r = nrun("--resume", "--hidden-dim", "64")
    check(r.returncode != 0 and "hidden_dim: job 24, requested 64" in r.stderr and
          final_id() == before,
          "nllmd run b --resume --hidden-dim 64 refused naming hidden_dim (%d %s)"
          % (r.returncode, r.stderr.strip()))
    r = nrun("--resume", "--epochs", "9", "--seed", "7")
    check(r.returncode != 0 and "seed: job 42, requested 7" in r.stderr and final_id() == before,
          "nllmd run b --resume --seed 7 refused naming seed (%d %s)"
          % (r.returncode, r.stderr.strip()))
    r = nrun("--resume", "--epochs", "9", "--lr", "0.01x")
    check(r.returncode == 2 and "lr" in r.stderr and final_id() == before,
          "nllmd run b --resume --lr 0.01x refused as a usage error (%d %s)"
          % (r.returncode, r.stderr.strip()))
    r = nrun("--resume", "--lr", "1e-3", "--epochs", "5")
    check(r.returncode == 0 and "Epoch 5/5" in r.stdout,
          "nllmd run b --resume --lr 1e-3 --epochs 5 trains epoch 5 (%d %s)"
          % (r.returncode, r.stderr.strip()[-300:]))
    d = Daemon(top)
    try:
        st = d.status("b")
        check(st["state"] == "completed" and st["epoch"] == 5 and st["num_epochs"] == 5 and
              st["config"]["learning_rate"] == 1e-3 and st["config"]["hidden_dim"] == 24,
              "b: completed 5 epochs at lr 1e-3 (%s epoch %s, config lr %s)"
              % (st["state"], st["epoch"], st["config"].get("learning_rate")))
        hist = d.ctl("history", "b")[1]["epochs"]
        check([h["epoch"] for h in hist] == [1, 2, 3, 4, 5],
              "b history: epochs %s" % [h["epoch"] for h in hist])
        ev = [e for e in d.ctl("events", "b")[1]["events"] if e["kind"] == "config_changed"]
        check(any("learning_rate: was 0.003" in e["message"] and "now 0.001" in e["message"]
                  for e in ev) and
              any("num_epochs: was 2, now 4" in e["message"] for e in ev),
              "b events config_changed: %s" % [e["message"] for e in ev])
    finally:
        d.stop()


def message_timeouts(tmp, main_sock):
    """A started RPC message must arrive in full within the message timeout
    (lowered here with NLLMD_MESSAGE_TIMEOUT_MS), on the Unix socket and on
    TCP; connections idle between messages stay open; a prefix that already
    nests too deep is refused at once, long before any timeout."""
    import msgpack
    # the main daemon's timeout is the default 30 s: 100000 x 0x91 must be
    # refused by the decoder, not by the timeout
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(main_sock)
    t0 = time.time()
    try:
        s.sendall(b"\x91" * 100000)
        eof = s.recv(4096) == b""
    except (ConnectionResetError, BrokenPipeError):  # closed while sending: as good
        eof = True
    except socket.timeout:
        eof = False
    took = time.time() - t0
    s.close()
    check(eof and took < 5, "100000 x 0x91 on the socket: closed after %.2f s (EOF %s)"
          % (took, eof))
    # a request prefix nesting too deep gets a last error reply with its msgid
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(20)
    s.connect(main_sock)
    s.sendall(bytes([0x94, 0x00, 0x09, 0xa1]) + b"x" + b"\x91" * 40)
    u = msgpack.Unpacker(raw=False)
    got, t0 = [], time.time()
    try:
        while True:
            b = s.recv(4096)
            if not b:
                break
            u.feed(b)
            got.extend(u)
    except OSError:
        pass
    s.close()
    check(len(got) == 1 and got[0][1] == 9 and got[0][2]["code"] == "bad_request" and
          "deeper" in got[0][2]["message"] and time.time() - t0 < 5,
          "a too-deep request prefix: one bad_request reply, then closed (%s)" % got)

    top = os.path.join(tmp, "msg-timeout")
    os.makedirs(top)
    port = dl.free_port()
    d = Daemon(top, args=["--listen", "127.0.0.1:%d" % port],
               env={"NLLMD_MESSAGE_TIMEOUT_MS": "1000"})
    hello = msgpack.packb([0, 1, "hello", [{}]])

    def unix():
        c = socket.socket(socket.AF_UNIX)
        c.connect(d.sock)
        return c

    def tcp():
        return socket.create_connection(("127.0.0.1", port))

    def ask(c, msgid):
        c.sendall(msgpack.packb([0, msgid, "hello", [{}]]))
        u = msgpack.Unpacker(raw=False)
        while True:
            b = c.recv(65536)
            if not b:
                return None
            u.feed(b)
            for m in u:
                return m

    try:
        idle_u, idle_t = unix(), tcp()
        used_u = unix()
        check(ask(used_u, 3)[1] == 3, "a Unix client asks once, then idles")
        halves = [("Unix socket", unix()), ("TCP", tcp())]
        t0 = time.time()
        for _, c in halves:
            c.settimeout(15)
            c.sendall(hello[:len(hello) // 2])
        # another client keeps working meanwhile
        answered = 0
        while time.time() - t0 < 0.8:
            answered += d.ctl("hello", ok=None)[0] == 0
        check(answered > 0, "other clients answered while two messages hang half-sent (%d)"
              % answered)
        for what, c in halves:
            try:
                eof = c.recv(4096) == b""
            except ConnectionResetError:
                eof = True
            except socket.timeout:
                eof = False
            took = time.time() - t0
            check(eof and 0.9 <= took < 6,
                  "%s: half a message, closed after %.2f s (timeout 1 s; EOF %s)"
                  % (what, took, eof))
            c.close()
        time.sleep(max(0.0, 2.5 - (time.time() - t0)))
        for what, c, mid in (("Unix socket, never used", idle_u, 4), ("TCP, never used", idle_t, 5),
                             ("Unix socket, used", used_u, 6)):
            c.settimeout(15)
            r = ask(c, mid)
            check(r is not None and r[1] == mid and r[2] is None,
                  "%s, idle %.1f s between messages: still open and answered"
                  % (what, time.time() - t0))
            c.close()
        # a message trickled in within the timeout is fine
        c = unix()
        c.settimeout(15)
        msg = msgpack.packb([0, 8, "hello", [{}]])
        for i in range(len(msg)):
            c.sendall(msg[i:i + 1])
            time.sleep(0.4 / len(msg))
        u = msgpack.Unpacker(raw=False)
        u.feed(c.recv(65536))
        r = next(iter(u), None)
        check(r is not None and r[1] == 8, "a message trickled in within the timeout: answered")
        c.close()
        check(d.ctl("hello")[0] == 0, "daemon serving after the timeouts")
    finally:
        d.stop()


def state_folder_lock(tmp, d, data):
    """One process owns a state folder: a second daemon or `nllmd run` on it
    is refused, naming the folder and the holder, and changes nothing."""
    def listing():
        return sorted(os.listdir(d.state)), sorted(os.listdir(os.path.join(d.state, "jobs")))
    before, jobs = listing(), d.ctl("list")[1]["jobs"]
    other_sock = os.path.join(tmp, "second.sock")
    r = subprocess.run([NLLMD, "--state-dir", d.state, "--socket", other_sock, "--devices", "cpu",
                        "--metrics", "none"], capture_output=True, text=True, timeout=60)
    holder = "pid %d: nllmd, socket %s" % (d.p.pid, d.sock)
    check(r.returncode == 1 and d.state in r.stderr and holder in r.stderr and
          "--state-dir" in r.stderr and not os.path.exists(other_sock),
          "a second daemon on the same state folder is refused, naming it and its holder: %s"
          % r.stderr.strip())
    r = subprocess.run([NLLMD, "run", "--state-dir", d.state, "intruder", "--data", data,
                        "--devices", "cpu"] + SMALL, capture_output=True, text=True, timeout=60)
    check(r.returncode == 1 and d.state in r.stderr and holder in r.stderr,
          "nllmd run on a daemon's state folder is refused: %s" % r.stderr.strip())
    check(listing() == before and d.ctl("list")[1]["jobs"] == jobs and
          d.ctl("hello")[0] == 0, "the refused processes changed nothing; the daemon serves on")
    # the lock goes with the process: a SIGKILLed holder leaves none behind
    run_state = os.path.join(tmp, "lock-state")
    p = subprocess.Popen([NLLMD, "run", "--state-dir", run_state, "holder", "--data", data,
                          "--devices", "cpu", "--epochs", "1000"] + SMALL,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    lock = os.path.join(run_state, "nllmd.lock")
    dl.poll(lambda: os.path.exists(lock) and open(lock).read(), timeout=60)
    r = subprocess.run([NLLMD, "run", "--state-dir", run_state, "holder", "--resume"],
                       capture_output=True, text=True, timeout=60)
    check(r.returncode == 1 and "pid %d: nllmd run holder" % p.pid in r.stderr,
          "a second `nllmd run` of the same job is refused while the first trains: %s"
          % r.stderr.strip())
    p.kill()
    p.wait()
    r = subprocess.run([NLLMD, "run", "--state-dir", run_state, "next", "--data", data,
                        "--devices", "cpu", "--epochs", "1"] + SMALL,
                       capture_output=True, text=True, timeout=120)
    check(r.returncode == 0,
          "after the holder was killed the folder is free again (exit %d: %s)"
          % (r.returncode, r.stderr.strip()[-300:]))


def run(tmp):
    data = os.path.join(tmp, "train.txt")
    corpus(data, 1500, 1)
    d = Daemon(tmp)
    rc, hello, _ = d.ctl("hello")
    check(rc == 0 and hello["protocol"] == 1 and hello["devices"][0]["name"] == "cpu", "hello")
    got, eof = half_closed(d.sock, [(7, "status", {"name": "nosuch"}), (8, "list", {})])
    check(eof and [m[:2] for m in got] == [[1, 7], [1, 8]] and got[0][2]["code"] == "not_found"
          and "jobs" in got[1][3], "request then shutdown(SHUT_WR): both replies, then EOF (%s)"
          % [m[:3] for m in got])

    # --- a straight run of 6 epochs (reference weights) ---
    rc, st, err = d.ctl("start", "ref", "--data", data, "--epochs", "6", "--precision", "fp32",
                        *SMALL)
    check(rc == 0 and st["state"] in ("queued", "running"), "start ref")
    check(st.get("precision") == "fp32" and st["config"].get("precision") == "fp32",
          "ref started with --precision fp32: status shows precision fp32 (%s, config %s)"
          % (st.get("precision"), st["config"].get("precision")))
    rc, out, _ = d.ctl("watch", "ref", timeout=300)
    check(rc == 0 and '"epoch"' in (out or ""), "watch ref until it completes")
    st = d.wait_state("ref", ["completed"])
    check(st["state"] == "completed" and st["epoch"] == 6, "ref completed 6 epochs")
    r = subprocess.run([NLLMCTL, "--socket", d.sock, "status", "ref"], capture_output=True,
                       text=True, timeout=60)
    lines = [l.split() for l in r.stdout.splitlines()]
    check(r.returncode == 0 and ["precision:", "fp32"] in lines and ["precision", "fp32"] in lines,
          "nllmctl status ref (text): precision fp32, also in the config")
    ref_hash = d.final_hash("ref")
    check(ref_hash is not None, "ref has a final checkpoint")
    names = sorted(c["name"] for c in d.ctl("checkpoints", "ref")[1]["checkpoints"])
    check(names == ["best", "epoch_3", "epoch_6", "final"], "ref checkpoints: %s" % names)
    hist = d.ctl("history", "ref")[1]["epochs"]
    check(len(hist) == 6 and all(h["val_loss"] is not None for h in hist), "ref history")
    # training curves every save_every (3) epochs and at the end, written on
    # the thread pool: they may land a moment after the state changes
    svgs = ["ref_training_curves_%s.svg" % s for s in ("epoch_3", "epoch_6", "final")]
    t0 = time.time()
    while time.time() - t0 < 10 and not all(
            os.path.exists(os.path.join(d.state, "jobs", "ref", f)) for f in svgs):
        time.sleep(0.05)
    heads = []
    for f in svgs:
        try:
            with open(os.path.join(d.state, "jobs", "ref", f), "rb") as fh:
                b = fh.read()
            heads.append(b.startswith(b"<?xml") and b.rstrip().endswith(b"</svg>"))
        except OSError:
            heads.append(False)
    check(all(heads), "ref training curves written whole: %s" % dict(zip(svgs, heads)))

    # --- pause in the middle of an epoch, resume from paused ---
    # Status is polled over one persistent connection (spawning nllmctl per poll
    # is too slow under sanitizers); a pause that lands during an epoch's
    # validation takes effect at the next epoch's first step, and a job that
    # finishes first is removed and started again.
    import msgpack

    def rpc(sock, u, method, params):
        sock.sendall(msgpack.packb([0, 1, method, [params]]))
        while True:
            for msg in u:
                if msg[0] == 1:
                    return msg[3]
            u.feed(sock.recv(1 << 20))

    mid, st, cks = False, {"state": "missing", "steps_per_epoch": 1}, {}
    for attempt in range(4):
        d.ctl("start", "pz", "--data", data, "--epochs", "6", *SMALL)
        sk = socket.socket(socket.AF_UNIX)
        sk.connect(d.sock)
        up = msgpack.Unpacker(raw=False)
        t = time.time()
        while time.time() - t < 120:
            st = rpc(sk, up, "status", {"name": "pz"})
            if st["state"] != "running" or 0 < st["step"] < st["steps_per_epoch"] // 2:
                break
        if st["state"] == "running":
            rpc(sk, up, "pause", {"name": "pz"})
        sk.close()
        st = d.wait_state("pz", ["paused", "completed"])
        if st["state"] == "paused":
            cks = {c["name"]: c for c in d.ctl("checkpoints", "pz")[1]["checkpoints"]}
            if "paused" in cks and cks["paused"]["step"] % st["steps_per_epoch"] != 0:
                mid = True
                break
        d.ctl("stop", "pz", ok=None)
        d.wait_state("pz", ["stopped", "completed"])
        d.ctl("rm", "pz", "--delete-files")
    check(st["state"] == "paused", "pz paused")
    check(mid, "paused checkpoint is mid-epoch (step %s, %s per epoch)" %
          (cks.get("paused", {}).get("step"), st["steps_per_epoch"]))
    rc, _, _ = d.ctl("resume", "pz")
    check(rc == 0, "resume pz from paused")
    st = d.wait_state("pz", ["completed"], timeout=300)
    check(st["state"] == "completed", "pz completed")
    check(d.final_hash("pz") == ref_hash, "pause mid-epoch + resume: final weights identical to "
          "the straight run")

    # --- resume from epoch_3 after completion: history superseded, same result ---
    rc, _, _ = d.ctl("resume", "pz", "epoch_3")
    check(rc == 0, "resume pz epoch_3")
    st = d.wait_state("pz", ["completed"], timeout=300)
    check(st["state"] == "completed" and st["attempt"] == 3, "pz completed again, attempt 3")
    check(d.final_hash("pz") == ref_hash, "resume from epoch_3: final weights identical")
    allh = d.ctl("history", "pz", "--all")[1]["epochs"]
    cur = d.ctl("history", "pz")[1]["epochs"]
    check(len(cur) == 6 and sum(1 for h in allh if h["superseded"]) >= 3,
          "history: 6 current epochs, superseded ones kept (%d rows)" % len(allh))

    # --- resume a completed job without more epochs: conflict, job and files untouched ---
    before = d.ctl("checkpoints", "pz", "--all")[1]["checkpoints"]
    ckdir = os.path.join(d.state, "jobs", "pz", "checkpoints")
    stamps = {f: os.stat(os.path.join(ckdir, f)).st_mtime_ns for f in os.listdir(ckdir)}
    for extra in ([], ["final"], ["--epochs", "6"]):
        rc, _, err = d.ctl("resume", "pz", *extra, ok=False)
        check(rc == 1 and "pz" in err and "nllmctl extend pz" in err and "--epochs" in err,
              "resume pz %s of a completed job: refused, says what to do (%s)"
              % (" ".join(extra), err.strip()))
    sk = socket.socket(socket.AF_UNIX)
    sk.connect(d.sock)
    sk.sendall(msgpack.packb([0, 9, "resume", [{"name": "pz"}]]))
    up, reply = msgpack.Unpacker(raw=False), None
    while reply is None:
        up.feed(sk.recv(1 << 20))
        reply = next((m for m in up if m[0] == 1), None)
    sk.close()
    check(reply[2] and reply[2]["code"] == "conflict", "the wire code is conflict (%s)" % reply[2])
    st = d.status("pz")
    check(st["state"] == "completed" and st["attempt"] == 3 and st["epoch"] == 6,
          "refused resume left the job as it was (%s, attempt %s)" % (st["state"], st["attempt"]))
    check(d.ctl("checkpoints", "pz", "--all")[1]["checkpoints"] == before and
          {f: os.stat(os.path.join(ckdir, f)).st_mtime_ns for f in os.listdir(ckdir)} == stamps,
          "refused resume left the checkpoint rows and files untouched")
    rc, _, _ = d.ctl("resume", "pz", "--epochs", "7")
    st = d.wait_state("pz", ["completed"], timeout=300)
    check(rc == 0 and st["state"] == "completed" and st["epoch"] == 7,
          "resume --epochs 7 of the completed job trains on (epoch %s)" % st["epoch"])

    # --- extend a completed job ---
    rc, _, _ = d.ctl("extend", "ref", "8")
    check(rc == 0, "extend ref to 8")
    st = d.wait_state("ref", ["completed"], timeout=300)
    st = d.wait_state("ref", ["completed"], timeout=300)
    check(st["epoch"] == 8 and len(d.ctl("history", "ref")[1]["epochs"]) == 8,
          "ref extended to 8 epochs")

    # --- generate, verify, events, list ---
    rc, g, _ = d.ctl("generate", "ref", "--prompt", "the king", "--tokens", "12", "--seed", "1")
    check(rc == 0 and isinstance(g.get("text"), str) and g["tokens"] >= 1, "generate")
    rc, v, _ = d.ctl("verify", "ref")
    check(rc == 0 and v["bad"] == 0 and v["checked"] >= 4, "verify ref")
    rc, ev, _ = d.ctl("events", "ref")
    kinds = {e["kind"] for e in ev["events"]}
    check({"created", "started", "epoch", "checkpoint", "completed", "extended"} <= kinds,
          "events recorded (%s)" % sorted(kinds))
    rc, ls, _ = d.ctl("list")
    check(rc == 0 and {j["name"] for j in ls["jobs"]} >= {"ref", "pz"}, "list")
    # async replies (thread pool) still go out after the client half-closes
    got, eof = half_closed(d.sock, [(1, "generate", {"name": "ref", "tokens": 200, "seed": 2}),
                                    (2, "verify", {"name": "ref"}), (3, "status", {"name": "ref"})])
    ids = sorted(m[1] for m in got if m[0] == 1)
    res = {m[1]: m for m in got}
    check(eof and ids == [1, 2, 3] and all(m[2] is None for m in got) and
          isinstance(res[1][3]["text"], str) and res[2][3]["bad"] == 0,
          "generate + verify + status then shutdown(SHUT_WR): all 3 replies, then EOF (%s)" % ids)
    check(d.ctl("hello")[0] == 0, "daemon still serving after half-closed clients")

    # --- errors ---
    rc, _, err = d.ctl("status", "nosuch", ok=False)
    check(rc == 1 and "nosuch" in err, "status of a missing job: exit 1, names the job")
    rc, _, err = d.ctl("start", "../x", "--data", data, ok=False)
    check(rc in (1, 2) and "name" in err, "bad job name refused")
    rc, _, err = d.ctl("resume", "ref", "epoch_99", ok=False)
    check(rc == 1, "resume from a missing checkpoint refused")

    # --- precision: the cpu implements fp32 (and bf16 with AMX, see
    # test_cpu_bf16.py), never tf32; refused before anything exists ---
    cpu = d.ctl("hello")[1]["devices"][0]
    check(cpu["precisions"] == (["fp32", "bf16"] if cpu["kernels"]["bf16_gemm"] else ["fp32"]),
          "hello: the cpu's precisions %s follow its bf16 kernels (%s)"
          % (cpu["precisions"], cpu["kernels"]["bf16_gemm"] or cpu["kernels"]["bf16_note"]))
    rc, _, err = d.ctl("start", "half", "--data", data, "--device", "cpu", "--precision", "tf32",
                       *SMALL, ok=False)
    check(rc == 1 and "job half" in err and "device cpu" in err and "fp32" in err and
          "tf32" in err, "start --device cpu --precision tf32 refused: %s" % err.strip())
    check(d.ctl("status", "half", ok=False)[0] == 1 and
          not os.path.exists(os.path.join(d.state, "jobs", "half")) and
          "half" not in {j["name"] for j in d.ctl("list")[1]["jobs"]},
          "the refused job left no catalog row and no folder")
    rc, _, err = d.ctl("start", "half", "--data", data, "--precision", "tf32", *SMALL, ok=False)
    check(rc == 1 and "job half" in err and "device cpu" in err and "fp32" in err,
          "start --precision tf32 on a daemon without GPUs refused: %s" % err.strip())
    check(d.ctl("hello")[0] == 0, "daemon still serving after refused precisions")
    before = d.status("ref")
    events = d.ctl("events", "ref")[1]["events"]
    rc, _, err = d.ctl("resume", "ref", "--epochs", "9", "--precision", "tf32", ok=False)
    st = d.status("ref")
    check(rc == 1 and "job ref" in err and "device cpu" in err and "fp32" in err,
          "resume --precision tf32 on the cpu refused: %s" % err.strip())
    check(st["state"] == before["state"] and st["attempt"] == before["attempt"] and
          st["num_epochs"] == before["num_epochs"] and st["precision"] == "fp32" and
          d.ctl("events", "ref")[1]["events"] == events,
          "the refused resume changed nothing (%s, attempt %s, precision %s)"
          % (st["state"], st["attempt"], st["precision"]))
    run_state = os.path.join(tmp, "run-state")
    r = subprocess.run([NLLMD, "run", "--state-dir", run_state, "oneshot", "--data", data,
                        "--devices", "cpu", "--precision", "tf32"] + SMALL,
                       capture_output=True, text=True, timeout=120)
    check(r.returncode == 1 and "job oneshot" in r.stderr and "device cpu" in r.stderr and
          "fp32" in r.stderr and not os.path.exists(os.path.join(run_state, "jobs", "oneshot")),
          "nllmd run --precision tf32 on the cpu refused, exit 1: %s" % r.stderr.strip())
    oneshot_resume(tmp, data)
    message_timeouts(tmp, d.sock)
    state_folder_lock(tmp, d, data)

    # --- fine-tune from another job's checkpoint; retention keeps the newest K ---
    other = os.path.join(tmp, "other.txt")
    corpus(other, 400, 7)
    rc, st, err = d.ctl("start", "ft", "--data", other, "--epochs", "4", "--init-from", "ref:best",
                        *(SMALL[:-6] + ["--save-every", "1", "--keep", "2", "--threads", "1"]))
    check(rc == 0, "start ft --init-from ref:best (%s)" % err.strip())
    st = d.wait_state("ft", ["completed", "failed"], timeout=300)
    check(st["state"] == "completed", "fine-tuned job completed (%s)" % st.get("error"))
    eps = sorted(c["name"] for c in d.ctl("checkpoints", "ft")[1]["checkpoints"]
                 if c["kind"] == "epoch")
    check(eps == ["epoch_3", "epoch_4"], "retention keeps the newest 2 periodic checkpoints: %s" % eps)
    files = sorted(f for f in os.listdir(os.path.join(d.state, "jobs", "ft", "checkpoints"))
                   if "_epoch_" in f)
    check(files == ["ft_epoch_3.safetensors", "ft_epoch_4.safetensors"],
          "retention deleted the older files: %s" % files)
    shape2 = list(SMALL)
    shape2[shape2.index("--hidden-dim") + 1] = "32"
    rc, _, err = d.ctl("start", "ft2", "--data", other, "--init-from", "ref:best", *shape2,
                       ok=False)
    st2 = d.wait_state("ft2", ["failed", "completed"], timeout=120)
    check(st2["state"] == "failed" and "hidden_dim: checkpoint 24, job 32" in (st2["error"] or ""),
          "init-from a different shape fails naming the field: %s" % st2.get("error"))

    # --- stop a running job ---
    d.ctl("start", "st", "--data", data, "--epochs", "50", *SMALL)
    d.wait_state("st", ["running"])
    time.sleep(0.3)
    d.ctl("stop", "st")
    st = d.wait_state("st", ["stopped"])
    check(st["state"] == "stopped" and "final" in
          [c["name"] for c in d.ctl("checkpoints", "st")[1]["checkpoints"]],
          "stop: stopped with a final checkpoint")

    # --- a job whose data vanished fails; the daemon keeps serving ---
    gone = os.path.join(tmp, "gone.txt")
    corpus(gone, 300, 2)
    d.ctl("start", "blocker", "--data", data, "--epochs", "5000", "--patience", "0", *SMALL)
    d.wait_state("blocker", ["running"])
    d.ctl("start", "vanish", "--data", gone, "--epochs", "2", *SMALL)
    check(d.status("vanish")["state"] == "queued", "second job queued behind the first")
    os.unlink(gone)
    d.ctl("pause", "blocker")
    st = d.wait_state("vanish", ["failed"])
    check(st["state"] == "failed" and "gone.txt" in (st["error"] or ""),
          "job with a vanished data file failed with the reason: %s" % st["error"])
    check(d.ctl("hello")[0] == 0, "daemon still serving after a failed job")

    # --- 50 concurrent clients while a job trains ---
    d.ctl("resume", "blocker")
    d.wait_state("blocker", ["running"])
    time.sleep(1.0)

    def training_tid():
        # the job's training thread: nllmd's thread with the most CPU time
        best = None
        for tid in os.listdir("/proc/%d/task" % d.p.pid):
            with open("/proc/%d/task/%s/stat" % (d.p.pid, tid)) as f:
                ut = int(f.read().rsplit(")", 1)[1].split()[11])
            if best is None or ut > best[1]:
                best = (int(tid), ut)
        return best[0]

    def schedstat(tid):
        # (seconds on a CPU, seconds runnable but waiting for one)
        with open("/proc/%d/task/%d/schedstat" % (d.p.pid, tid)) as f:
            a = f.read().split()
        return int(a[0]) / 1e9, int(a[1]) / 1e9

    tid = training_tid()

    def rate(seconds):
        # steps/s; steps per second of the training thread's own CPU time
        # (other jobs on a shared machine take CPU, not steps per CPU
        # second); the share of the time it was blocked (neither on a CPU
        # nor waiting for one: what nllmd itself could cause)
        a, s0, t0 = d.status("blocker")["global_step"], schedstat(tid), time.perf_counter()
        time.sleep(seconds)
        b, s1, t1 = d.status("blocker")["global_step"], schedstat(tid), time.perf_counter()
        run = s1[0] - s0[0]
        blocked = max(0.0, (t1 - t0) - run - (s1[1] - s0[1])) / (t1 - t0)
        return (b - a) / (t1 - t0), (b - a) / run if run > 0 else 0.0, blocked

    def under_clients():
        """Training alone for 2 s, then beside 50 clients for 2 s: the
        clients' answers, and the drops in steps/s and steps per CPU
        second, and the blocked share under load."""
        base, base_cpu, _ = rate(2.0)
        answers = [0] * 50
        stop_flag = threading.Event()

        def client(i):
            # one persistent connection per client, a status call every 100 ms
            s = socket.socket(socket.AF_UNIX)
            s.connect(d.sock)
            name = b"blocker"
            req = bytes([0x94, 0x00, i, 0xa6]) + b"status" + bytes([0x91, 0x81, 0xa4]) + \
                b"name" + bytes([0xa0 | len(name)]) + name
            try:
                while not stop_flag.is_set():
                    s.sendall(req)
                    buf = s.recv(65536)
                    if buf and buf[0] == 0x94 and buf[2] == i:
                        answers[i] += 1
                    time.sleep(0.1)
            finally:
                s.close()

        ths = [threading.Thread(target=client, args=(i,)) for i in range(50)]
        for t in ths:
            t.start()
        loaded, loaded_cpu, blocked = rate(2.0)
        stop_flag.set()
        for t in ths:
            t.join()
        drop = 1 - loaded / base if base > 0 else 1
        drop_cpu = 1 - loaded_cpu / base_cpu if base_cpu > 0 else 1
        print("     steps/s alone %.1f, with 50 clients %.1f (drop %.1f%%); per CPU second of "
              "the training thread %.1f -> %.1f (drop %.1f%%); blocked %.1f%% of the time" % (
                  base, loaded, 100 * drop, base_cpu, loaded_cpu, 100 * drop_cpu,
                  100 * blocked))
        return answers, drop_cpu, blocked

    # the rate itself depends on what else this machine runs (CI boxes are
    # shared); the training thread's work per CPU second and its blocked time
    # depend on nllmd alone, but a 2 s window on a loaded 2-core machine (a
    # sibling hyperthread busy in one window and not the other) can still
    # miss: up to 3 measurements, the first that meets both bounds counts
    sanitized = os.environ.get("NLLM_TEST_SANITIZED")
    for attempt in range(3):
        answers, drop_cpu, blocked = under_clients()
        if sanitized or (drop_cpu < 0.15 and blocked < 0.05):
            break
    check(all(a > 0 for a in answers), "50 concurrent clients all answered (%d requests)" %
          sum(answers))
    if sanitized:
        print("     (sanitizer build: the rates are reported, not asserted)")
    else:
        check(drop_cpu < 0.15, "training steps per CPU second under 50 clients drop < 15%% "
              "(%.1f%%, measurement %d of at most 3)" % (100 * drop_cpu, attempt + 1))
        check(blocked < 0.05, "training thread blocked < 5%% of the time under 50 clients "
              "(%.1f%%, measurement %d of at most 3)" % (100 * blocked, attempt + 1))

    # --- SIGKILL during training, restart: interrupted, checkpoints verify, resumes ---
    t = time.time()
    while time.time() - t < 30 and d.status("blocker")["epoch"] < 4:
        time.sleep(0.05)
    # files a crash could leave, planted for the restart: in ft's folder (rows
    # epoch_3, epoch_4, best, final) epoch_1 and epoch_2 files no row names
    # (retention stopped between row and file), an epoch_7 file no row names
    # that is not epoch 7; a token cache temp file in blocker's job folder
    ftck = os.path.join(d.state, "jobs", "ft", "checkpoints")
    shutil.copy(os.path.join(ftck, "ft_epoch_3.safetensors"), os.path.join(ftck, "ft_epoch_1.safetensors"))
    with open(os.path.join(ftck, "ft_epoch_2.safetensors"), "wb") as f:
        f.write(b"\0" * 100)
    shutil.copy(os.path.join(ftck, "ft_epoch_4.safetensors"), os.path.join(ftck, "ft_epoch_7.safetensors"))
    for keep in ("notes.txt", "other_epoch_1.safetensors"):
        with open(os.path.join(ftck, keep), "w") as f:
            f.write("not a checkpoint of ft\n")
    ft_named = sorted({os.path.basename(c["path"]) for c in
                       d.ctl("checkpoints", "ft", "--all")[1]["checkpoints"]})
    cache_tmp = os.path.join(d.state, "jobs", "blocker", ".tokens.cache.tmp.12345.0")
    with open(cache_tmp, "wb") as f:
        f.write(b"NLLMTOK1")
    d.stop(signal.SIGKILL)
    d = Daemon(tmp)
    st = d.status("blocker")
    check(st["state"] == "interrupted", "after SIGKILL the job is interrupted")
    left = sorted(os.listdir(ftck))
    check(left == sorted(ft_named + ["notes.txt", "other_epoch_1.safetensors"]),
          "restart removed ft's checkpoint files no row names, kept the rest: %s" % left)
    msgs = [e["message"] for e in d.ctl("events", "ft")[1]["events"] if e["kind"] == "recovered"]
    check(all(any("ft_epoch_%d.safetensors" % k in m and "no checkpoint row names it" in m
                  for m in msgs) for k in (1, 2, 7)), "one event per removed file: %s" % msgs)
    check(not os.path.exists(cache_tmp), "restart removed a leftover token cache temp file")
    rc, v, _ = d.ctl("verify", "--all")
    check(rc == 0 and v["bad"] == 0, "every listed checkpoint verifies after SIGKILL (%s checked)"
          % (v or {}).get("checked"))
    tmps = [f for f in os.listdir(os.path.join(d.state, "jobs", "blocker", "checkpoints"))
            if ".tmp." in f]
    check(not tmps, "no temporary files left after restart")
    rc, _, _ = d.ctl("resume", "blocker")
    st = d.wait_state("blocker", ["running"])
    check(rc == 0 and st["state"] == "running", "interrupted job resumes")

    # --- SIGTERM: paused checkpoint, exit 0, interrupted; --auto-resume continues ---
    time.sleep(0.5)
    code = d.stop(signal.SIGTERM)
    check(code == 0, "SIGTERM: nllmd exits 0 (got %s)" % code)
    d = Daemon(tmp)
    st = d.status("blocker")
    cks = [c["name"] for c in d.ctl("checkpoints", "blocker")[1]["checkpoints"]]
    check(st["state"] == "interrupted" and "paused" in cks,
          "after SIGTERM: interrupted with a paused checkpoint")
    d.shutdown()
    d = Daemon(tmp, args=["--auto-resume"])
    st = d.wait_state("blocker", ["running", "completed"])
    check(st["state"] in ("running", "completed"), "--auto-resume resumes interrupted jobs")
    d.ctl("stop", "blocker")
    d.wait_state("blocker", ["stopped", "completed"])
    check(d.shutdown() == 0, "shutdown: exit 0")

    # --- killed after the rename of a first epoch_1 save, before its row committed ---
    # (commit 1 is best of epoch 1, commit 2 is epoch_1): the restart records
    # the file, no file is left that no row names
    d = Daemon(tmp, env={"NLLM_CATALOG_FAULT": "ckpt_add:2:kill"})
    d.ctl("start", "orph", "--data", data, "--epochs", "3",
          *(SMALL[:-6] + ["--save-every", "1", "--threads", "1"]))
    try:
        code = d.p.wait(300)
    except subprocess.TimeoutExpired:
        d.p.kill()
        code = d.p.wait()
    check(code == -signal.SIGKILL, "nllmd killed at the epoch_1 row commit (exit %s)" % code)
    orck = os.path.join(d.state, "jobs", "orph", "checkpoints")
    check(os.path.exists(os.path.join(orck, "orph_epoch_1.safetensors")),
          "orph_epoch_1 was written before the kill")
    d = Daemon(tmp)
    rows = {c["name"]: c for c in d.ctl("checkpoints", "orph")[1]["checkpoints"]}
    check("epoch_1" in rows and rows["epoch_1"]["status"] == "ok" and rows["epoch_1"]["epoch"] == 1,
          "restart recorded the unrecorded epoch_1 file (rows %s)" % sorted(rows))
    rc, v, _ = d.ctl("verify", "orph")
    check(rc in (0, 1) and any(r["name"] == "epoch_1" and r["status"] == "ok"
                               for r in (v or {}).get("results", [])), "epoch_1 verifies")
    named = {os.path.basename(c["path"]) for c in
             d.ctl("checkpoints", "orph", "--all")[1]["checkpoints"]}
    check(set(os.listdir(orck)) <= named, "every orph checkpoint file is named by a row "
          "(files %s)" % sorted(os.listdir(orck)))
    d.shutdown()


if __name__ == "__main__":
    sys.exit(dl.main(run, "nllm-daemon-test-", NLLMD, NLLMCTL))
