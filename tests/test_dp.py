#!/usr/bin/python3
"""test_dp.py -- one job data-parallel over 2 MPI ranks (`mpirun -np 2 nllmd run`).

Checks, on the CPU with one thread per rank: 2 ranks and 1 rank with the same
global batch record the same validation losses (1e-5 relative; in practice
about 1e-8 on this small model: only float summation order differs), both
ranks end with the same weights hash, only rank 0 writes the state folder
(one set of checkpoint files); SIGTERM to rank 1 mid-epoch pauses every rank
at the same step (exit 75 from each, one paused checkpoint), and resuming
that checkpoint on 1 rank completes and agrees with the uninterrupted run
(identical before the pause, 1e-5 in the epoch it paused in, 1e-2 after:
float summation order differs between 1 and 2 ranks and Adam magnifies it).
SIGKILL of one rank mid-epoch: under plain mpirun (which ends the other
ranks) and under `mpirun --enable-recovery` (which does not, as srun without
--kill-on-bad-exit does not: the survivor's collective watchdog, here
NLLM_COLL_TIMEOUT=5, must fail it, naming the silent rank), for rank 1 and
for rank 0, every rank exits non-zero within 60 s; then the catalog passes
SQLite's integrity check, a daemon on the state folder verifies every
checkpoint and shows the job interrupted (or failed, naming the rank), and
`--resume` continues from the newest committed checkpoint and completes.
Skips (77) without mpirun or without an MPI build of nllmd.
Usage: test_dp.py BUILD_DIR
"""
import json
import os
import socket
import sqlite3
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time

FAILS = []


def check(ok, what):
    print("%s %s" % ("ok  " if ok else "FAIL", what))
    if not ok:
        FAILS.append(what)


def meta(path):
    """The __metadata__ of a safetensors file (header only: no numpy)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))["__metadata__"]


def rel(a, b):
    return max(abs(x - y) / abs(y) for x, y in zip(a, b)) if len(a) == len(b) else 1.0


def rank_pid(rank, state):
    """The pid of the nllmd of MPI rank `rank` running on state folder `state`."""
    for d in os.listdir("/proc"):
        try:
            with open("/proc/%s/environ" % d, "rb") as f:
                e = f.read()
            with open("/proc/%s/comm" % d) as f:
                comm = f.read().strip()
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError):
            continue
        if (comm == "nllmd" and b"OMPI_COMM_WORLD_RANK=%d\0" % rank in e
                and state.encode() in cmdline):
            return int(d)
    return None


def killed_rank(nllmd, mpi, env, run, job, tmp):
    """SIGKILL of one rank mid-epoch: the others end non-zero within 60 s, the
    catalog and the last committed checkpoint verify, --resume completes."""
    nllmctl = os.path.join(os.path.dirname(nllmd), "nllmctl")
    ep = job.index("--epochs")
    long_job = job[:ep + 1] + ["12"] + job[ep + 2:] + ["--save-every", "1"]
    wrap = ['sh', '-c', '"$0" "$@"; rc=$?; echo "rank $OMPI_COMM_WORLD_RANK exit $rc" >&2; '
            'exit $rc']
    recovery_ok = subprocess.run(mpi[:1] + ["--enable-recovery", "--version"],
                                 capture_output=True).returncode == 0
    cases = [(1, False), (0, False)] + ([(1, True), (0, True)] if recovery_ok else [])
    if not recovery_ok:
        print("note: this mpirun has no --enable-recovery: the watchdog cases are skipped")
    for victim, recovery in cases:
        what = "SIGKILL of rank %d%s" % (victim, " (mpirun --enable-recovery: only the "
                                          "watchdog ends the other)" if recovery else "")
        state = os.path.join(tmp, "kill%d%s" % (victim, "r" if recovery else ""))
        cmd = mpi[:1] + (["--enable-recovery"] if recovery else []) + mpi[1:] + wrap + \
            [nllmd, "run", "--state-dir", state, "dp"] + long_job
        kenv = dict(env, NLLM_COLL_TIMEOUT="5")
        p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=kenv)
        lines = []

        def reader():
            for line in p.stderr:
                lines.append(line)

        th = threading.Thread(target=reader)
        th.start()
        t0 = time.time()
        # rank 0 has committed epoch 2's checkpoint: kill in epoch 3
        while (not any("checkpoint: saved epoch_2" in x for x in list(lines))
               and p.poll() is None and time.time() - t0 < 120):
            time.sleep(0.005)
        time.sleep(0.02)
        pid = rank_pid(victim, state)
        check(pid is not None, "%s: found the rank's nllmd" % what)
        if pid is None:
            p.kill()
            p.wait()
            th.join()
            continue
        os.kill(pid, signal.SIGKILL)
        tk = time.time()
        try:
            p.wait(timeout=120)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        took = time.time() - tk
        th.join()
        err = "".join(lines)
        codes = dict(re.findall(r"rank (\d) exit (\d+)", err))
        other = str(1 - victim)
        # the victim's shell reports 137; the other rank either got ended by
        # mpirun (no line: its shell was ended too) or exited non-zero
        check(took < 60 and codes.get(str(victim)) == "137" and codes.get(other, "x") != "0",
              "%s: every rank ends non-zero within 60 s (%.1f s, ranks %s)" % (what, took, codes))
        if recovery:
            # its MPI_Abort makes mpirun end every process, its own shell too:
            # the shell's line may be missing
            check(codes.get(other) != "0" and "no answer from rank %d" % victim in err,
                  "%s: rank %s's watchdog ends it, naming rank %d (%s)" %
                  (what, other, victim, [x for x in lines if "no answer" in x][:1]))
        # the catalog and the committed checkpoints
        db = os.path.join(state, "catalog.db")
        con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
        integ = con.execute("PRAGMA integrity_check").fetchone()[0]
        con.close()
        check(integ == "ok", "%s: the catalog passes SQLite's integrity check (%s)" %
              (what, integ))
        sock = os.path.join(tmp, "k.sock")
        dlog = open(os.path.join(tmp, "kill-daemon.log"), "a")
        dmn = subprocess.Popen([nllmd, "--state-dir", state, "--socket", sock, "--devices", "cpu",
                                "--metrics", "none"], stdout=dlog, stderr=dlog, env=env)

        def ctl(*a):
            r = subprocess.run([nllmctl, "--socket", sock, "--json"] + list(a),
                               capture_output=True, text=True, timeout=120, env=env)
            try:
                return r.returncode, json.loads(r.stdout)
            except ValueError:
                return r.returncode, None

        for _ in range(400):
            if os.path.exists(sock) and ctl("hello")[0] == 0:
                break
            time.sleep(0.05)
        rc, v = ctl("verify", "dp")
        check(rc == 0 and v and v["bad"] == 0 and v["checked"] >= 2,
              "%s: every checkpoint verifies (%s)" % (what, v))
        rc, st = ctl("status", "dp")
        state_now = (st or {}).get("state")
        if recovery and victim == 1:
            check(state_now == "failed" and "no answer from rank 1" in (st.get("error") or ""),
                  "%s: rank 0 recorded the job failed, naming rank 1 (%s: %s)" %
                  (what, state_now, (st or {}).get("error")))
        else:
            check(state_now == "interrupted", "%s: the job shows interrupted (%s)" %
                  (what, state_now))
        rc, cks = ctl("checkpoints", "dp")
        latest = max((c["epoch"] for c in (cks or {}).get("checkpoints", [])), default=0)
        check(latest >= 2, "%s: the last committed checkpoint is of epoch %d" % (what, latest))
        ctl("shutdown")
        dmn.wait(timeout=60)
        dlog.close()
        # resume: the same command with --resume (2 ranks), from that checkpoint
        r = run(mpi + [nllmd, "run", "--state-dir", state, "dp", "--resume"])
        m = re.search(r"Resuming from checkpoint: (\S+)\nCompleted epochs: (\d+)", r.stdout)
        check(r.returncode == 0 and m and int(m.group(2)) == latest and
              "Epoch 12/12" in r.stdout,
              "%s: --resume on 2 ranks continues from epoch %d and completes (%d, %s)" %
              (what, latest, r.returncode, m and m.groups()))
        if os.path.exists(sock):
            os.unlink(sock)


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    nllmd = os.path.abspath(os.path.join(build, "nllmd"))
    mpirun = shutil.which("mpirun")
    if not mpirun:
        print("SKIP: mpirun not found (apt-get install openmpi-bin libopenmpi-dev)")
        return 77
    info = subprocess.run(["meson", "introspect", "--buildoptions", build],
                          capture_output=True, text=True)
    if info.returncode == 0:
        opts = {o["name"]: o["value"] for o in json.loads(info.stdout)}
        if opts.get("mpi") == "disabled":
            print("SKIP: nllmd built with -Dmpi=disabled")
            return 77
    tmp = tempfile.mkdtemp(prefix="nllm-dp-")
    rnd = random.Random(5)
    words = ("Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi "
             "omicron pi rho sigma tau upsilon phi chi psi omega").split()
    for name, n in (("train.txt", 900), ("val.txt", 120)):
        with open(os.path.join(tmp, name), "w") as f:
            for _ in range(n):
                f.write(" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 30))) + "\n")
    job = ["--data", os.path.join(tmp, "train.txt"), "--val", os.path.join(tmp, "val.txt"),
           "--vocab", "20", "--embed-dim", "8", "--hidden-dim", "64", "--context-dim", "8",
           "--layers", "2", "--seq-len", "16", "--batch", "8", "--epochs", "3",
           "--lr", "0.003", "--dropout", "0.2", "--device", "cpu", "--threads", "1"]
    mpi = [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", "2"]
    env = dict(os.environ, TMPDIR=tmp)
    if env.get("ASAN_OPTIONS") is not None or os.environ.get("NLLM_TEST_SANITIZED"):
        # Open MPI's own allocations outlive MPI_Finalize: LeakSanitizer would
        # abort every rank at exit; every other check stays on
        opts = [o for o in env.get("ASAN_OPTIONS", "").split(":") if o and
                not o.startswith("detect_leaks=")]
        env["ASAN_OPTIONS"] = ":".join(opts + ["detect_leaks=0"])

    def run(cmd, **kw):
        return subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, **kw)

    def ckpts(state):
        d = os.path.join(state, "jobs", "dp", "checkpoints")
        return sorted(os.listdir(d)) if os.path.isdir(d) else []

    def final(state):
        return os.path.join(state, "jobs", "dp", "checkpoints", "dp_final.safetensors")

    # 1 rank, then 2 ranks, the same global batch
    s1, s2 = os.path.join(tmp, "one"), os.path.join(tmp, "two")
    r1 = run([nllmd, "run", "--state-dir", s1, "dp"] + job)
    check(r1.returncode == 0, "1 rank: nllmd run completes (%d %s)" % (r1.returncode,
                                                                       r1.stderr[-400:]))
    r2 = run(mpi + [nllmd, "run", "--state-dir", s2, "dp"] + job)
    check(r2.returncode == 0, "2 ranks: mpirun -np 2 nllmd run completes (%d %s)" %
          (r2.returncode, r2.stderr[-800:]))
    if FAILS:
        return 1
    v1 = json.loads(meta(final(s1))["val_losses"])
    v2 = json.loads(meta(final(s2))["val_losses"])
    check(len(v1) == 3 and rel(v2, v1) < 1e-5,
          "validation losses of 2 ranks equal 1 rank's within 1e-5 relative (%s vs %s, %.1e)"
          % (v2, v1, rel(v2, v1)))
    hashes = re.findall(r"rank (\d) of 2: weights hash ([0-9a-f]{16})", r2.stderr)
    check(len(hashes) == 2 and {h for _, h in hashes} == {hashes[0][1]}
          and {r for r, _ in hashes} == {"0", "1"},
          "both ranks end with the same weights hash (%s)" % hashes)
    check(ckpts(s2) == ckpts(s1), "2 ranks write one set of checkpoint files, as 1 rank does "
          "(%s vs %s)" % (ckpts(s2), ckpts(s1)))
    check(r2.stdout.count("Epoch 3/3") == 1, "only rank 0 reports progress")
    # the model has 8284 floats (E 160, W1 1088, W2 4160, Wo 1300, heads 1560,
    # norm 16): at least 33136 bytes summed per step
    comm = re.findall(r"Ranks: gradient sums ([0-9.e+-]+) MB/step, ([0-9.]+) ms/step exposed; "
                      r"collectives ([0-9.]+)% of the time", r2.stdout)
    check(len(comm) == 3 and all(0.0331 <= float(b) < 0.04 and float(ms) >= 0
                                 and 0 <= float(pc) <= 100 for b, ms, pc in comm)
          and "Ranks:" not in r1.stdout,
          "2 ranks: each epoch gives the gradient sums' size, their exposed time per step and "
          "the collectives' share of the time; 1 rank sums nothing (%s)" % comm)
    check(not [f for f in os.listdir(tmp) if f.startswith("nllmd-rank")],
          "rank 1 removed its private folder")

    # batch_size not a multiple of the world size: refused, naming both
    r = run(mpi + [nllmd, "run", "--state-dir", os.path.join(tmp, "odd"), "dp"] + job +
            ["--batch", "7"])
    check(r.returncode != 0 and "batch_size 7" in r.stdout + r.stderr
          and "world size 2" in r.stdout + r.stderr,
          "batch 7 on 2 ranks refused naming batch_size and the world size (%d)" % r.returncode)

    # SIGTERM to rank 1 mid-epoch: every rank pauses at the same step
    # (a longer job, so the signal lands mid-epoch; its reference is a 2-rank run)
    s3, s4 = os.path.join(tmp, "pause"), os.path.join(tmp, "ref")
    long_job = job[:job.index("--epochs") + 1] + ["12"] + job[job.index("--epochs") + 2:]
    r4 = run(mpi + [nllmd, "run", "--state-dir", s4, "dp"] + long_job)
    check(r4.returncode == 0, "2 ranks, 12 epochs: completes (%d)" % r4.returncode)
    wrap = ['sh', '-c', '"$0" "$@"; rc=$?; echo "rank $OMPI_COMM_WORLD_RANK exit $rc" >&2; '
            'exit $rc']
    p = subprocess.Popen(mpi + wrap + [nllmd, "run", "--state-dir", s3, "dp"] + long_job,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    # once rank 0 has finished epoch 1 (its "epoch 1/12" line: both ranks
    # step together), signal rank 1: the pause lands inside a later epoch.
    # Not a fixed delay after "started": a loaded or sanitized machine can
    # take longer than that to make its first step.
    lines = []

    def reader():
        for line in p.stderr:
            lines.append(line)

    th = threading.Thread(target=reader)
    th.start()
    t0 = time.time()
    while not any("epoch 1/12" in x for x in list(lines)) and time.time() - t0 < 120:
        time.sleep(0.005)
    time.sleep(0.02)  # into epoch 2 (12 epochs take about a second)
    pid1 = None
    for d in os.listdir("/proc"):
        try:
            with open("/proc/%s/environ" % d, "rb") as f:
                e = f.read()
            with open("/proc/%s/comm" % d) as f:
                comm = f.read().strip()
            with open("/proc/%s/cmdline" % d, "rb") as f:
                cmdline = f.read()
        except (OSError, ValueError):
            continue
        if comm == "nllmd" and b"OMPI_COMM_WORLD_RANK=1\0" in e and s3.encode() in cmdline:
            pid1 = int(d)
    check(pid1 is not None, "found rank 1's nllmd")
    if pid1:
        os.kill(pid1, signal.SIGTERM)
    p.wait(timeout=300)
    th.join()
    err = "".join(lines)
    codes = dict(re.findall(r"rank (\d) exit (\d+)", err))
    # mpirun ends the other ranks as soon as one exits non-zero: a rank
    # slower to exit than the first (rank 0's leak scan under a sanitizer)
    # can be killed after it paused, before its wrapper prints. So: every
    # rank that got to report exited 75, and both paused at the same step.
    # (the signalled rank logs "interrupted: daemon stopping: paused at ...",
    # the other "paused: paused at ...")
    paused = re.findall(r"job dp: (?:paused|interrupted): [^\n]*(paused at epoch \d+ step \d+)",
                        err)
    every = len(codes) > 0 and set(codes.values()) == {"75"} and len(paused) == 2 and \
        paused[0] == paused[1]
    check(p.returncode == 75 and every,
          "SIGTERM to rank 1: both ranks pause at the same step, every rank exits 75 (mpirun "
          "%d, ranks %s, %s)" % (p.returncode, codes, paused))
    if not every:
        print(err[-3000:])
    check(ckpts(s3) == ["dp_paused.safetensors"] or "dp_paused.safetensors" in ckpts(s3),
          "rank 0 wrote the paused checkpoint (%s)" % ckpts(s3))
    if "dp_paused.safetensors" not in ckpts(s3):
        return 1
    m = meta(os.path.join(s3, "jobs", "dp", "checkpoints", "dp_paused.safetensors"))
    check(int(m["step_in_epoch"]) > 0, "paused mid-epoch (epoch %s step %s)" %
          (m["current_epoch"], m["step_in_epoch"]))
    # resume on 1 rank: completes and agrees with the uninterrupted run
    r = run([nllmd, "run", "--state-dir", s3, "dp", "--resume"])
    check(r.returncode == 0 and "Resuming from checkpoint: paused" in r.stdout,
          "the paused job resumes on 1 rank and completes (%d %s)" % (r.returncode,
                                                                      r.stderr[-400:]))
    if r.returncode == 0:
        v3 = json.loads(meta(final(s3))["val_losses"])
        v4 = json.loads(meta(final(s4))["val_losses"])
        # epochs before the pause come from the checkpoint: identical; the
        # epoch the pause fell in agrees within 1e-5; later epochs drift
        # apart as float summation order differences grow (Adam magnifies
        # them), so they only have to stay close
        k = int(m["current_epoch"])
        check(len(v3) == 12 and v3[:k] == v4[:k], "resumed on 1 rank: the %d epochs before the "
              "pause are identical to the uninterrupted 2-rank run's" % k)
        check(rel(v3[k:k + 1], v4[k:k + 1]) < 1e-5, "resumed on 1 rank: epoch %d, where it "
              "paused, agrees with the uninterrupted run within 1e-5 (%s vs %s, %.1e)" %
              (k + 1, v3[k], v4[k], rel(v3[k:k + 1], v4[k:k + 1])))
        check(rel(v3, v4) < 1e-2, "resumed on 1 rank: all 12 epochs within 1e-2 (%.1e)" %
              rel(v3, v4))
    killed_rank(nllmd, mpi, env, run, job, tmp)
    print("%d failed" % len(FAILS))
    if not FAILS:
        shutil.rmtree(tmp, ignore_errors=True)
    return 1 if FAILS else 0


if __name__ == "__main__":
    sys.exit(main())
