#!/usr/bin/python3
"""test_slurm.py -- `nllmd run` as the rank program of Slurm (docs/cluster.md), on
a single-node cluster of its own: scripts/slurm_local.sh starts slurmctld and
slurmd in the test's temporary folder (auth/none, free ports) and stops them at
the end, also when a check fails or the test is interrupted.

Checks, on the CPU with one thread per rank:
- `srun --mpi=pmix --kill-on-bad-exit=1 -n 2 nllmd run`: both ranks end in a world
  of 2 with the same weights hash, the validation losses equal a 1-rank run's
  within 1e-5 relative (test_dp's tolerance), one set of checkpoint files, only
  rank 0 reports progress; `srun --mpi=none -n 2` (no MPI plugin) is refused by
  every task before the state folder exists.
- docs/cluster.md's requeueable batch script, as written there but for paths,
  sizes and the model: `scancel --signal=TERM` after the first epoch reaches the
  ranks (not the batch shell), every rank pauses at the same step and exits 75,
  the script requeues the job, the requeued run resumes from the paused
  checkpoint and completes (Restarts=1, COMPLETED, exit 0), and its validation
  losses equal an uninterrupted 2-rank run's: identical before the pause, 1e-5
  relative from there on (test_dp's tolerance for the epoch it paused in; the
  world size does not change, so later epochs stay as close).
- SIGKILL of rank 1, then of rank 0, mid-epoch under --kill-on-bad-exit=1: srun
  sends the other rank SIGTERM, whose pause waits for the dead rank until the
  collective watchdog (NLLM_COLL_TIMEOUT=5 here) ends it; srun exits non-zero
  within 60 s, no rank is left, the catalog passes SQLite's integrity check,
  every checkpoint verifies, the job shows failed naming rank 1 (rank 0
  survived and recorded it) or interrupted (rank 0 was killed), and `--resume`
  on 2 ranks continues from the newest checkpoint and completes.
- stopping the cluster leaves none of its processes.
Skips (77) without slurmctld, slurmd, srun or sbatch (apt-get install slurm-wlm),
when not root, with an nllmd built without MPI, without Slurm's pmix plugin, or
when the cluster does not start. Slurm's own variables of a surrounding job are
kept from the cluster's commands.
Usage: test_slurm.py BUILD_DIR
"""
import json
import os
import re
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import threading
import time

import daemonlib as dl

BUILD, NLLMD, NLLMCTL = dl.programs()
SRC = os.environ.get("NLLM_SOURCE_ROOT") or os.path.join(os.path.dirname(
    os.path.abspath(__file__)), "..")
SLURM_LOCAL = os.path.join(SRC, "scripts", "slurm_local.sh")
DOC = os.path.join(SRC, "docs", "cluster.md")

# test_dp's model and corpus: an epoch is 144 steps of a global batch of 8
MODEL = ["--vocab", "20", "--embed-dim", "8", "--hidden-dim", "64", "--context-dim", "8",
         "--layers", "2", "--seq-len", "16", "--batch", "8", "--lr", "0.003",
         "--dropout", "0.2"]
CPU1 = ["--device", "cpu", "--threads", "1"]
SRUN = ["srun", "--mpi=pmix", "--kill-on-bad-exit=1", "-n", "2"]
POPENED = []  # srun processes to end if the test is cut short


def meta(path):
    """The __metadata__ of a safetensors file (header only)."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))["__metadata__"]


def rel(a, b):
    return max(abs(x - y) / abs(y) for x, y in zip(a, b)) if len(a) == len(b) and a else 1.0


def val_losses(state):
    return json.loads(meta(os.path.join(state, "jobs", "dp", "checkpoints",
                                        "dp_final.safetensors"))["val_losses"])


def ckpts(state):
    d = os.path.join(state, "jobs", "dp", "checkpoints")
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def corpus(tmp):
    """test_dp's corpus: 900 training and 120 validation lines of Greek letters."""
    import random
    rnd = random.Random(5)
    words = ("Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi "
             "omicron pi rho sigma tau upsilon phi chi psi omega").split()
    for name, n in (("train.txt", 900), ("val.txt", 120)):
        with open(os.path.join(tmp, name), "w") as f:
            for _ in range(n):
                f.write(" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 30))) + "\n")
    return os.path.join(tmp, "train.txt"), os.path.join(tmp, "val.txt")


def proc_env(pid):
    try:
        with open("/proc/%s/environ" % pid, "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def proc_text(pid, what):
    try:
        with open("/proc/%s/%s" % (pid, what), "rb") as f:
            return f.read()
    except OSError:
        return b""


def rank_pids(state, rank=None):
    """The pids of the nllmd ranks running on state folder `state` (one rank,
    by SLURM_PROCID, or all)."""
    pids = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or proc_text(d, "comm").strip() != b"nllmd":
            continue
        if state.encode() not in proc_text(d, "cmdline"):
            continue
        if rank is None or b"SLURM_PROCID=%d" % rank in proc_env(d):
            pids.append(int(d))
    return pids


def cluster_procs(conf):
    """Processes started for the cluster of `conf`: its daemons (named in their
    command line) and anything with SLURM_CONF=conf in its environment, but
    this test and its parents."""
    mine, p = set(), os.getpid()
    while p > 1:
        mine.add(p)
        m = re.search(rb"^PPid:\s+(\d+)", proc_text(p, "status"), re.M)
        p = int(m.group(1)) if m else 0
    left = []
    for d in os.listdir("/proc"):
        if not d.isdigit() or int(d) in mine:
            continue
        if (conf.encode() in proc_text(d, "cmdline") or
                b"SLURM_CONF=" + conf.encode() in proc_env(d)):
            left.append("%s %s" % (d, proc_text(d, "cmdline").replace(b"\0", b" ")
                                   .decode(errors="replace").strip()))
    return left


class Cluster:
    """scripts/slurm_local.sh start/stop on TMP/slurm; env: the environment for
    Slurm's commands (this cluster's SLURM_CONF, TMPDIR=tmp, no SLURM_*, PMI*
    or OMPI_* of a surrounding job)."""

    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "slurm")
        self.conf = os.path.join(self.dir, "slurm.conf")
        env = {k: v for k, v in os.environ.items()
               if not k.startswith(("SLURM_", "SBATCH_", "SRUN_", "SALLOC_", "PMI", "OMPI_"))}
        env.update(SLURM_CONF=self.conf, TMPDIR=tmp)
        if env.get("ASAN_OPTIONS") is not None or os.environ.get("NLLM_TEST_SANITIZED"):
            # Open MPI's own allocations outlive MPI_Finalize (as in test_dp)
            opts = [o for o in env.get("ASAN_OPTIONS", "").split(":") if o and
                    not o.startswith("detect_leaks=")]
            env["ASAN_OPTIONS"] = ":".join(opts + ["detect_leaks=0"])
        self.env = env
        self.started = False

    def start(self):
        t = time.time()
        r = subprocess.run([SLURM_LOCAL, "start", self.dir], capture_output=True, text=True,
                           env=self.env, timeout=120, stdin=subprocess.DEVNULL)
        self.started = True  # stop whatever part of it came up
        if r.returncode != 0:
            return "%s%s" % (r.stderr.strip(), self.log_tail())
        print("cluster up in %.1f s (%s)" % (time.time() - t, r.stdout.strip()))
        return None

    def stop(self):
        if not self.started:
            return
        self.started = False
        t = time.time()
        r = subprocess.run([SLURM_LOCAL, "stop", self.dir], capture_output=True, text=True,
                           env=self.env, timeout=120, stdin=subprocess.DEVNULL)
        print("cluster stopped in %.1f s%s" % (time.time() - t,
                                               (": " + r.stderr.strip()) if r.stderr else ""))

    def log_tail(self):
        out = ""
        for name in ("slurmctld.log", "slurmd.log", "slurmctld.out", "slurmd.out"):
            p = os.path.join(self.dir, "log", name)
            if os.path.exists(p):
                with open(p, errors="replace") as f:
                    out += "\n  %s: %s" % (name, "\n  ".join(f.read().splitlines()[-5:]))
        return out

    def run(self, cmd, timeout=300, **kw):
        return subprocess.run(cmd, capture_output=True, text=True, env=self.env,
                              timeout=timeout, stdin=subprocess.DEVNULL, **kw)

    def job(self, jobid):
        """`scontrol show job -o JOBID` as a dict ({} once Slurm forgot it)."""
        r = self.run(["scontrol", "show", "job", "-o", str(jobid)], timeout=30)
        return dict(re.findall(r"(\w+)=(\S*)", r.stdout)) if r.returncode == 0 else {}


def watch(cmd, env, **kw):
    """Popen with stderr read into a list by a thread: (process, lines, thread)."""
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=env, stdin=subprocess.DEVNULL, **kw)
    POPENED.append(p)
    lines = []
    out = []

    def reader():
        for line in p.stderr:
            lines.append(line)

    def out_reader():
        out.append(p.stdout.read())

    th = [threading.Thread(target=reader), threading.Thread(target=out_reader)]
    for t in th:
        t.start()
    return p, lines, out, th


def wait_for(cond, timeout):
    t = time.time()
    while not cond() and time.time() - t < timeout:
        time.sleep(0.005)
    return cond()


def world_of_two(c, tmp, job):
    """srun -n 2 against one rank: the same losses, one set of files."""
    s1, s2 = os.path.join(tmp, "one"), os.path.join(tmp, "two")
    t = time.time()
    r2 = c.run(SRUN + [NLLMD, "run", "--state-dir", s2, "dp"] + job)
    took = time.time() - t
    if r2.returncode != 0 and "built without MPI" in r2.stderr:
        c.stop()
        dl.skip("nllmd was built without MPI")
    env1 = dict(c.env)
    del env1["SLURM_CONF"]
    r1 = subprocess.run([NLLMD, "run", "--state-dir", s1, "dp"] + job, capture_output=True,
                        text=True, env=env1, timeout=300, stdin=subprocess.DEVNULL)
    dl.check(r1.returncode == 0, "1 rank: nllmd run completes", r1.stderr[-400:])
    if not dl.check(r2.returncode == 0, "srun --mpi=pmix -n 2 nllmd run completes (%.1f s)" %
                    took, "%d %s" % (r2.returncode, r2.stderr[-1500:])):
        return
    hashes = re.findall(r"rank (\d) of (\d): weights hash ([0-9a-f]{16})", r2.stderr)
    dl.check(sorted(r for r, _, _ in hashes) == ["0", "1"] and
             {w for _, w, _ in hashes} == {"2"} and len({h for _, _, h in hashes}) == 1,
             "both ranks are ranks of a world of 2 and end with the same weights hash",
             str(hashes))
    v1, v2 = val_losses(s1), val_losses(s2)
    dl.check(len(v1) == 3 and rel(v2, v1) < 1e-5,
             "validation losses of 2 ranks equal 1 rank's within 1e-5 relative (%.1e)" %
             rel(v2, v1), "%s vs %s" % (v2, v1))
    dl.check(ckpts(s2) == ckpts(s1), "2 ranks write one set of checkpoint files, as 1 rank "
             "does", "%s vs %s" % (ckpts(s2), ckpts(s1)))
    dl.check(r2.stdout.count("Epoch 3/3") == 1, "only rank 0 reports progress")
    dl.check(not [f for f in os.listdir(tmp) if f.startswith("nllmd-rank")],
             "rank 1 removed its private folder")
    # no MPI plugin (srun's --mpi=none, Slurm's default MpiDefault): every
    # task would train the job alone in one folder; refused
    s0 = os.path.join(tmp, "nompi")
    r = c.run(["srun", "--mpi=none", "-n", "2", NLLMD, "run", "--state-dir", s0, "dp"] + job)
    dl.check(r.returncode == 2 and r.stderr.count("without an MPI plugin") == 2 and
             "srun --mpi=pmix" in r.stderr and not os.path.exists(s0),
             "srun --mpi=none -n 2: every task refuses (exit 2, naming --mpi=pmix) before "
             "making the state folder", "%d %s" % (r.returncode, r.stderr[-600:]))


def batch_script(state, train, val, extra):
    """docs/cluster.md's requeueable batch script, for this folder, 2 tasks of
    one cpu and the test's model; None (and a failed check) if it is not there
    as expected."""
    with open(DOC) as f:
        doc = f.read()
    m = re.search(r"\n((?: {4}#!/bin/bash\n)(?: {4}.*\n)+)", doc)
    if not dl.check(m is not None, "docs/cluster.md has a batch script"):
        return None
    text = "\n".join(line[4:] for line in m.group(1).splitlines()) + "\n"
    subs = [(r"--ntasks=\d+", "--ntasks=2"), (r"--cpus-per-task=\d+", "--cpus-per-task=1"),
            (r"/shared/nllm", state), (r"\bmyjob\b", "dp"), (r"--data \S+", "--data " + train),
            (r"--val \S+", "--val " + val),
            (r"--batch \d+ --epochs \d+", " ".join(extra)),
            (r"\bnllmd run\b", NLLMD + " run")]
    missing = []
    for pat, rep in subs:
        text, n = re.subn(pat, rep, text)
        if n == 0:
            missing.append(pat)
    missing += [w for w in ("--requeue", "--signal=TERM@", "--open-mode=append",
                            "srun --mpi=pmix", "--kill-on-bad-exit=1", "--resume",
                            "scontrol requeue", "75") if w not in text]
    if not dl.check(not missing, "docs/cluster.md's batch script, adapted to this test",
                    "it lacks %s:\n%s" % (missing, text)):
        return None
    return text


def requeue(c, tmp, train, val):
    """The batch script: SIGTERM to the steps, exit 75, requeue, resume."""
    epochs = 40  # long enough for scancel's signal to land inside the run
    extra = MODEL + ["--epochs", str(epochs)]
    ref = os.path.join(tmp, "ref")
    r = c.run(SRUN + [NLLMD, "run", "--state-dir", ref, "dp", "--data", train, "--val", val]
              + extra + CPU1)
    if not dl.check(r.returncode == 0, "uninterrupted run, 2 ranks, %d epochs, completes" %
                    epochs, r.stderr[-800:]):
        return
    state = os.path.join(tmp, "rq")
    text = batch_script(state, train, val, extra)
    if text is None:
        return
    script = os.path.join(tmp, "job.sbatch")
    with open(script, "w") as f:
        f.write(text)
    out, err = os.path.join(tmp, "rq.out"), os.path.join(tmp, "rq.err")
    t0 = time.time()
    r = c.run(["sbatch", "--parsable", "-o", out, "-e", err, script], timeout=60, cwd=tmp)
    if not dl.check(r.returncode == 0, "sbatch takes the script", r.stderr):
        return
    jobid = r.stdout.strip().split(";")[0]

    def text_of(p):
        try:
            with open(p, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    first = wait_for(lambda: "epoch 1/%d" % epochs in text_of(err), 120)
    if not dl.check(first, "the batch job's ranks train (epoch 1 after %.1f s)" %
                    (time.time() - t0), text_of(err)[-1500:] + c.log_tail()):
        return
    r = c.run(["scancel", "--signal=TERM", jobid], timeout=30)
    dl.check(r.returncode == 0, "scancel --signal=TERM %s" % jobid, r.stderr)
    ts = time.time()
    info = {}

    def done():
        info.update(c.job(jobid))
        return info.get("JobState") in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT",
                                        "NODE_FAIL", "OUT_OF_MEMORY") or not info

    wait_for(lambda: done() or time.sleep(0.2), 120)
    log, outs = text_of(err), text_of(out)
    print("batch job %s: %s after the signal (%.1f s in all); %s" % (
        jobid, "%.1f s" % (time.time() - ts), time.time() - t0,
        " ".join("%s=%s" % (k, info.get(k)) for k in ("JobState", "Restarts", "ExitCode"))))
    paused = re.findall(r"paused at epoch (\d+) step (\d+)", log)
    dl.check(len(paused) == 2 and len(set(paused)) == 1,
             "the signal reached both ranks (not the batch shell): they paused at the same "
             "step (%s)" % (paused[:1],), log[-2000:])
    dl.check(re.search(r"tasks 0-1: Exited with exit code 75", log) is not None,
             "every rank exited 75 (srun: tasks 0-1)", log[-2000:])
    dl.check(info.get("Restarts") == "1", "the script requeued the job (Restarts=%s)" %
             info.get("Restarts"))
    dl.check(info.get("JobState") == "COMPLETED" and info.get("ExitCode") == "0:0",
             "the requeued run completes (%s, exit %s)" % (info.get("JobState"),
                                                           info.get("ExitCode")),
             log[-2000:] + c.log_tail())
    dl.check(re.search(r"State: interrupted\n(.*\n)*Resuming from checkpoint: paused\n", outs)
             is not None and "Epoch %d/%d" % (epochs, epochs) in outs,
             "the requeued run resumed from the paused checkpoint (--resume), output "
             "appended", outs[-1500:])
    if not paused or not os.path.exists(os.path.join(state, "jobs", "dp", "checkpoints",
                                                     "dp_final.safetensors")):
        return
    k = int(paused[0][0])  # the epochs completed before the pause
    v, vr = val_losses(state), val_losses(ref)
    dl.check(len(v) == epochs and v[:k] == vr[:k], "the epochs before the pause (%d) are "
             "identical to the uninterrupted run's" % k)
    dl.check(rel(v[k:], vr[k:]) < 1e-5, "the epochs from the pause on agree with the "
             "uninterrupted run's within 1e-5 relative (%.1e)" % rel(v[k:], vr[k:]),
             "%s vs %s" % (v[k:], vr[k:]))


def killed_rank(c, tmp, job, victim):
    """SIGKILL of one rank mid-epoch under --kill-on-bad-exit=1."""
    what = "SIGKILL of rank %d" % victim
    name = "kill%d" % victim
    state = os.path.join(tmp, name + "-state")
    long_job = job[:job.index("--epochs")] + ["--epochs", "12", "--save-every", "1"] + \
        job[job.index("--epochs") + 2:]
    # srun's kill-on-bad-exit sends SIGTERM first: the survivor's pause
    # waits for the dead rank until the collective watchdog (here 5 s) fails
    # it, or Slurm's SIGKILL comes KillWait (30 s) later
    kenv = dict(c.env, NLLM_COLL_TIMEOUT="5")
    p, lines, _, th = watch(SRUN + [NLLMD, "run", "--state-dir", state, "dp"] + long_job, kenv)
    # rank 0 has committed epoch 2's checkpoint: kill in epoch 3
    wait_for(lambda: any("checkpoint: saved epoch_2" in x for x in list(lines)) or
             p.poll() is not None, 120)
    time.sleep(0.02)
    pids = rank_pids(state, victim)
    if not dl.check(len(pids) == 1, "%s: found the rank's nllmd" % what, "".join(lines)[-800:]):
        p.kill()
        p.wait()
        return
    os.kill(pids[0], signal.SIGKILL)
    tk = time.time()
    try:
        p.wait(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()
    took = time.time() - tk
    for t in th:
        t.join()
    err = "".join(lines)
    gone = wait_for(lambda: not rank_pids(state), 10)
    dl.check(took < 60 and p.returncode not in (0, None) and gone,
             "%s: srun ends the other rank and exits non-zero within 60 s (%.1f s, exit %s), "
             "no rank left" % (what, took, p.returncode), err[-1500:])
    dl.check(re.search(r"task %d: (Exited with exit code 137|Killed)" % victim, err) is not None,
             "%s: srun names the killed task" % what, err[-800:])
    db = os.path.join(state, "catalog.db")
    con = sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10)
    integ = con.execute("PRAGMA integrity_check").fetchone()[0]
    con.close()
    dl.check(integ == "ok", "%s: the catalog passes SQLite's integrity check (%s)" %
             (what, integ))
    env1 = dict(c.env)
    del env1["SLURM_CONF"]
    latest = 0
    with dl.Daemon(NLLMD, NLLMCTL, tmp, name, ["--metrics", "none"], env=env1) as d:
        v = d.ctl("verify", "dp").out
        dl.check(bool(v) and v["bad"] == 0 and v["checked"] >= 2,
                 "%s: every checkpoint verifies (%s)" % (what, v))
        st = d.status("dp")
        if victim == 0:
            dl.check(st["state"] == "interrupted", "%s: the job shows interrupted (%s)" %
                     (what, st["state"]), str(st.get("error")))
        else:
            dl.check(st["state"] == "failed" and "no answer from rank 1" in (st["error"] or ""),
                     "%s: rank 0 recorded the job failed, naming rank 1 (%s)" %
                     (what, st["state"]), str(st.get("error")))
        cks = d.ctl("checkpoints", "dp").out or {}
        latest = max((x["epoch"] for x in cks.get("checkpoints", [])), default=0)
        dl.check(latest >= 2, "%s: the last committed checkpoint is of epoch %d" %
                 (what, latest))
        dl.check(d.shutdown() == 0, "%s: the checking daemon shuts down" % what)
    r = c.run(SRUN + [NLLMD, "run", "--state-dir", state, "dp", "--resume"])
    m = re.search(r"Resuming from checkpoint: (\S+)\nCompleted epochs: (\d+)", r.stdout)
    dl.check(r.returncode == 0 and m is not None and int(m.group(2)) == latest and
             "Epoch 12/12" in r.stdout,
             "%s: --resume on 2 ranks continues from epoch %d and completes" % (what, latest),
             "%d %s %s" % (r.returncode, m and m.groups(), r.stderr[-600:]))


def body(tmp):
    c = Cluster(tmp)
    try:
        why = c.start()
        if why:
            # once more: under a parallel test run a port picked as free
            # can be taken before slurmctld binds it
            print("the cluster did not start, trying once more: " + why)
            c.stop()
            why = c.start()
        if why:
            c.stop()
            dl.skip("the Slurm cluster did not start (twice): " + why)
        r = c.run(["srun", "--mpi=list"], timeout=60)
        if "pmix" not in r.stdout + r.stderr:
            c.stop()
            dl.skip("this Slurm has no pmix plugin (srun --mpi=list: %s)" %
                    (r.stdout + r.stderr).strip().replace("\n", " "))
        train, val = corpus(tmp)
        job = ["--data", train, "--val", val] + MODEL + ["--epochs", "3"] + CPU1
        t = time.time()
        world_of_two(c, tmp, job)
        print("(srun: %.1f s)" % (time.time() - t))
        t = time.time()
        requeue(c, tmp, train, val)
        print("(batch script: %.1f s)" % (time.time() - t))
        t = time.time()
        for victim in (1, 0):
            killed_rank(c, tmp, job, victim)
        print("(SIGKILL: %.1f s)" % (time.time() - t))
    finally:
        for p in POPENED:
            if p.poll() is None:
                p.kill()
                p.wait()
        c.stop()
        left = cluster_procs(c.conf)
        dl.check(not left, "stopping the cluster leaves none of its processes", str(left))


def main():
    dl.need(NLLMD, NLLMCTL)
    missing = [b for b in ("slurmctld", "slurmd", "srun", "sbatch", "scontrol", "scancel")
               if not shutil.which(b)]
    if missing:
        dl.skip("%s not found (apt-get install slurm-wlm)" % ", ".join(missing))
    if os.geteuid() != 0:
        dl.skip("slurmd runs as root only")
    info = subprocess.run(["meson", "introspect", "--buildoptions", BUILD],
                          capture_output=True, text=True)
    if info.returncode == 0:
        opts = {o["name"]: o["value"] for o in json.loads(info.stdout)}
        if opts.get("mpi") == "disabled":
            dl.skip("nllmd built with -Dmpi=disabled")
    # meson's timeout (SIGTERM) or Ctrl-C still stops the cluster; a second
    # signal must not cut the stopping short
    def interrupted(sig, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("%s: stopping the cluster" % signal.Signals(sig).name, flush=True)
        sys.exit(1)

    signal.signal(signal.SIGTERM, interrupted)
    signal.signal(signal.SIGINT, interrupted)
    t = time.time()
    with dl.tmpdir("nllm-slurm-") as tmp:
        body(tmp)
    print("%.1f s" % (time.time() - t))
    return dl.report()


if __name__ == "__main__":
    sys.exit(main())
