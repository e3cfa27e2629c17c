#!/usr/bin/python3
"""kill.py -- campaign 1: SIGKILL nllmd at random instants and at every write,
fsync, rename, folder fsync and catalog commit of a checkpoint save, restart,
and check the checkpoint invariants.

Random kills: a job trains (save_every 1, keep 3); nllmd is SIGKILLed either at
a random instant or inside a checkpoint write window (the checkpoints folder
polled for a ".tmp." file, then 0-3 ms more), restarted, and checked:
  - `sqlite3 catalog.db 'PRAGMA integrity_check'` is ok;
  - no temp file is left anywhere under the state folder;
  - every row of `nllmctl --json checkpoints J --all` with status ok verifies
    (`nllmctl verify J`: bad == 0); rows nllmd marked bad at start-up must be
    a file replaced by a complete newer save whose row never committed (never
    a missing, short or torn file);
  - every checkpoint whose `checkpoint` notification a watcher received (it is
    sent after the catalog commit) is still resumable: the job resumes
    (`nllmctl resume J`) from the newest committed checkpoint, at a step no
    lower than the newest notified one;
  - history: every epoch up to that checkpoint's epoch is still current;
  - each checkpoint row not yet tried resumes (`nllmctl resume J NAME`, then
    pause) in a copy of the state folder served by a second nllmd.
Deterministic sweep: from a prepared state (job paused after 2 epochs), nllmd
runs with NLLM_FS_FAULT="OP:k:kill" (raise(SIGKILL) at the k-th write / fsync
/ rename / dirsync from its start) or NLLM_CATALOG_FAULT="ckpt_add:k:kill" /
"ckpt_added:k:kill" (before / after the k-th checkpoint-row commit), resumes
the job, dies in its first epoch-end save, restarts, and the same checks run.

Usage: kill.py --out DIR [--kills N] [--sweep full|sample|none] [--seed S]
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rlib  # noqa: E402
from rlib import Daemon, arg  # noqa: E402

QUICK = "--quick" in sys.argv


class Watcher(threading.Thread):
    """Records every `checkpoint` notification of job J until the connection dies."""

    def __init__(self, sock, job):
        super().__init__(daemon=True)
        self.sock, self.job = sock, job
        self.committed = []  # (name, step, epoch)
        self.ready = threading.Event()

    def run(self):
        try:
            c = rlib.Conn(self.sock, timeout=3600)
            e, r = c.call("watch", {"name": self.job})
            self.ready.set()
            while True:
                m = c.recv_msg(timeout=3600)
                if m is None:
                    return
                if m[0] == 2 and m[1] == "checkpoint":
                    p = m[2][0]
                    self.committed.append((p["checkpoint"], p["step"], p["epoch"]))
        except (OSError, EOFError, ValueError):
            pass
        finally:
            self.ready.set()


def complete_checkpoint(path):
    """True when path is a whole safetensors file (header, and tensors that end
    exactly at the end of the file) of an nllm checkpoint of job J."""
    import json
    import struct
    try:
        with open(path, "rb") as f:
            b = f.read()
        n = struct.unpack("<Q", b[:8])[0]
        h = json.loads(b[8:8 + n])
        meta = h.pop("__metadata__", {})
        end = max(v["data_offsets"][1] for v in h.values())
        return meta.get("job") == "J" and 8 + n + end == len(b)
    except (OSError, ValueError, KeyError, struct.error):
        return False


def sqlite_integrity(db):
    if shutil.which("sqlite3"):
        r = subprocess.run(["sqlite3", db, "PRAGMA integrity_check"], capture_output=True,
                           text=True, timeout=60)
        return r.stdout.strip() or r.stderr.strip()
    return rlib.integrity(db)


class Campaign:
    def __init__(self, R, tmp, data):
        self.R, self.tmp, self.data = R, tmp, data
        self.tested = set()  # (name, checksum) resumed in a copy
        self.replaced = []    # names of rows found replaced-unrecorded
        self.since = 0.0      # events up to this time were counted
        self.stats = {"rows_checked": 0, "verified": 0, "replaced_unrecorded": 0,
                      "resume_each": 0, "committed_lost": 0, "temp_left": 0,
                      "marked_bad_other": 0, "integrity_bad": 0, "adopted": 0}

    def check_restart(self, d, label, committed, resume_each_max):
        """The invariants after a restart; returns the newest good row (or None)."""
        R, st = self.R, self.stats
        state = d.state
        R.check(sqlite_integrity(os.path.join(state, "catalog.db")) == "ok",
                "%s: catalog integrity_check" % label) or st.__setitem__(
                    "integrity_bad", st["integrity_bad"] + 1)
        tmps = rlib.temp_files(state)
        if tmps:
            st["temp_left"] += len(tmps)
        R.check(not tmps, "%s: temp files left after restart: %s" % (label, tmps))
        rc, out, err = d.ctl("checkpoints", "J", "--all")
        if not R.check(rc == 0, "%s: checkpoints --all (%s)" % (label, err.strip())):
            return None
        rows = out["checkpoints"]
        ok = [r for r in rows if r["status"] == "ok"]
        bad_names = set()
        for r in rows:
            if r["status"] != "ok" and r["current"]:
                bad_names.add(r["name"])
                why = r.get("bad_reason") or ""
                if complete_checkpoint(r["path"]):
                    # a complete newer save under the same name whose row never committed
                    st["replaced_unrecorded"] += 1
                    self.replaced.append(r["name"])
                else:
                    st["marked_bad_other"] += 1
                    R.check(False, "%s: row %s marked bad: %s" % (label, r["name"], why))
        rc, v, err = d.ctl("verify", "J")
        st["rows_checked"] += len(ok)
        badv = [x for x in (v or {}).get("results", []) if x["status"] != "ok"] if rc in (0, 1) \
            and isinstance(v, dict) else None
        if R.check(badv is not None and all(x["name"] in bad_names for x in badv),
                   "%s: verify: every ok row verifies (%s)" % (label, badv if badv is not None
                                                               else err)):
            st["verified"] += len(ok)
        rc, ev, _ = d.ctl("events", "J", "--limit", "30")
        st["adopted"] = st.get("adopted", 0) + sum(
            1 for e in ev["events"][-12:] if e["kind"] == "recovered" and
            "recorded the complete file" in e["message"] and e["ts"] > self.since)
        self.since = max([e["ts"] for e in ev["events"]] + [self.since])
        cur = [r for r in ok if r["current"]]
        newest = cur[-1] if cur else None  # rows come ordered by step, id
        if committed:
            top = max(committed, key=lambda c: c[1])
            lost = newest is None or newest["step"] < top[1]
            if lost:
                st["committed_lost"] += 1
            R.check(not lost, "%s: newest committed checkpoint %s (step %d) lost; newest row "
                    "is %s" % (label, top[0], top[1], newest and (newest["name"], newest["step"])))
        if resume_each_max:
            self.resume_each(d, ok, label, resume_each_max)
        return newest

    def resume_each(self, d, ok, label, limit):
        """Resume every not-yet-tried row in a copy of the state folder."""
        todo = [r for r in reversed(ok) if (r["name"], r["checksum"]) not in self.tested]
        names, seen = [], set()
        for r in todo:  # rows are addressed by name: the newest row of each name
            if r["name"] not in seen and r["current"]:
                seen.add(r["name"])
                names.append(r)
        names = names[:limit] if limit > 0 else names
        if not names:
            return
        copy = os.path.join(self.tmp, "copy")
        rlib.copy_state(d.state, copy)
        c = Daemon(copy, os.path.join(self.tmp, "copy.sock"), os.path.join(self.tmp, "copy.log"))
        try:
            for r in names:
                rc, _, err = c.ctl("resume", "J", r["name"])
                ok1 = R_ok = rc == 0
                st = c.wait_state("J", ["running", "failed", "completed"], 60)
                if ok1:
                    t = time.time()
                    while time.time() - t < 30:
                        st = c.status("J")
                        if st["state"] != "running" or st["global_step"] > r["step"]:
                            break
                        time.sleep(0.01)
                    R_ok = st["state"] in ("running", "completed") and st["global_step"] > r["step"]
                    c.ctl("pause", "J")
                    st = c.wait_state("J", ["paused", "completed", "failed"], 60)
                    R_ok = R_ok and st["state"] in ("paused", "completed")
                self.R.check(R_ok, "%s: resume from %s (step %d) in a copy: %s %s" % (
                    label, r["name"], r["step"], err.strip(), st and (st["state"], st["error"])))
                self.stats["resume_each"] += 1
                self.tested.add((r["name"], r["checksum"]))
        finally:
            c.shutdown()
            shutil.rmtree(copy, ignore_errors=True)

    def resume_latest(self, d, newest, label):
        """Resume J from latest: it must pick `newest`; history up to it is current."""
        R = self.R
        rc, _, err = d.ctl("resume", "J")
        R.check(rc == 0, "%s: resume J: %s" % (label, err.strip()))
        rc, ev, _ = d.ctl("events", "J", "--limit", "8")
        msgs = [e["message"] for e in ev["events"] if e["kind"] == "resumed"]
        got = msgs[-1] if msgs else ""
        if newest is not None:
            R.check(got.startswith("resume from %s (epoch %d)" % (newest["name"], newest["epoch"])),
                    "%s: resumed from the newest good checkpoint %s: %r" % (
                        label, newest["name"], got))
            rc, h, _ = d.ctl("history", "J")
            eps = sorted(x["epoch"] for x in h["epochs"])
            R.check(eps[:newest["epoch"]] == list(range(1, newest["epoch"] + 1)),
                    "%s: history holds epochs 1..%d (has %s...)" % (label, newest["epoch"],
                                                                   eps[:newest["epoch"] + 2]))
        st = d.wait_state("J", ["running", "failed"], 60)
        R.check(st and st["state"] == "running", "%s: job running again (%s)" % (
            label, st and (st["state"], st["error"])))


def random_kills(R, tmp, data, nkills, rnd):
    C = Campaign(R, tmp, data)
    state, sock, log = os.path.join(tmp, "state"), os.path.join(tmp, "d.sock"), \
        os.path.join(tmp, "nllmd.log")
    d = Daemon(state, sock, log)
    rc, _, err = d.ctl("start", "J", "--data", data, "--epochs", "1000000", "--save-every", "1",
                       "--keep", "3", *rlib.MODEL)
    R.check(rc == 0, "start J: %s" % err.strip())
    ckdir = os.path.join(state, "jobs", "J", "checkpoints")
    counts = {"random": 0, "window": 0, "window_confirmed": 0, "startup": 0}
    hit_files = {}
    w = Watcher(sock, "J")
    w.start()
    w.ready.wait(10)
    for i in range(nkills):
        mode = "window" if i % 2 else "random"
        if i % 10 == 9:
            mode = "startup"
        st = d.wait_state("J", ["running"], 60)
        if mode != "startup":
            # let it train past the job-thread start-up
            t = time.time()
            g0 = st["global_step"] if st else 0
            while time.time() - t < 20 and (d.status("J") or {}).get("global_step", 0) <= g0:
                time.sleep(0.01)
        if mode in ("random", "startup"):
            time.sleep(rnd.uniform(0.0, 1.2))
            d.p.kill()
        elif mode == "window":
            t = time.time()  # until a checkpoint write is under way (a temp file)
            while time.time() - t < 10:
                if os.path.isdir(ckdir) and any(".tmp." in f for f in os.listdir(ckdir)):
                    break
            extra = rnd.uniform(0, 0.003)
            t1 = time.perf_counter()
            while time.perf_counter() - t1 < extra:
                pass
            d.p.kill()
        d.p.wait()
        d.logf.close()
        w.join(5)
        committed = list(w.committed)
        # a kill at start-up can come before the job (and its folder) exists
        left = [f for f in os.listdir(ckdir) if ".tmp." in f] if os.path.isdir(ckdir) else []
        if mode == "window" and left:
            counts["window_confirmed"] += 1
        for f in rlib.temp_files(state):
            b = os.path.basename(f)
            kind = "best" if b.startswith(".best_") else "paused" if "_paused" in b else \
                "epoch" if "_epoch_" in b and b.endswith(tuple("0123456789")) and ".safetensors" in b \
                else "curves" if ".svg" in b else "cache" if "tokens.cache" in b else "other"
            hit_files[kind] = hit_files.get(kind, 0) + 1
        counts[mode] += 1
        label = "kill %d (%s)" % (i + 1, mode)
        d = Daemon(state, sock, log)
        st = d.status("J")
        R.check(st["state"] == "interrupted", "%s: job interrupted after restart (%s)" % (
            label, st["state"]))
        limit = 1 if QUICK else 3
        newest = C.check_restart(d, label, committed, limit)
        if mode == "startup":
            # the job thread's start-up (checkpoint load, data, token cache rebuilt)
            try:
                os.unlink(os.path.join(state, "jobs", "J", "tokens.cache"))
            except FileNotFoundError:
                pass
        w = Watcher(sock, "J")
        w.start()
        w.ready.wait(10)
        C.resume_latest(d, newest, label)
        if mode == "startup":
            time.sleep(rnd.uniform(0.0, 0.15))
            d.p.kill()
            d.p.wait()
            d.logf.close()
            w.join(5)
            d = Daemon(state, sock, log)
            newest = C.check_restart(d, label + " start-up", list(w.committed), 0)
            w = Watcher(sock, "J")
            w.start()
            w.ready.wait(10)
            C.resume_latest(d, newest, label + " start-up")
        if (i + 1) % 10 == 0:
            print("     %d kills ..." % (i + 1), flush=True)
    # the end: every remaining row resumes
    d.ctl("pause", "J")
    d.wait_state("J", ["paused"], 60)
    rc, out, _ = d.ctl("checkpoints", "J", "--all")
    C.resume_each(d, [r for r in out["checkpoints"] if r["status"] == "ok"], "final", 0)
    rc, st, _ = d.ctl("status", "J")
    R.check(d.shutdown() == 0, "final shutdown exit 0")
    s = C.stats
    R.fig("kills", counts["random"] + counts["window"] + counts["startup"])
    R.fig("kills_random", counts["random"])
    R.fig("kills_window", counts["window"])
    R.fig("kills_window_confirmed", counts["window_confirmed"])
    R.fig("kills_startup", counts["startup"])
    R.fig("temp_files_at_kill", hit_files)
    R.fig("epochs_trained", st["epoch"] if isinstance(st, dict) else None)
    for k, v in s.items():
        R.fig(k, v)
    R.note("%d kills (%d random, %d in the checkpoint window of which %d confirmed by a temp "
           "file at death, %d at job start-up); %d ok rows verified, %d resumed in a copy, "
           "%d replaced-unrecorded rows, %d committed lost, temp files at death: %s" % (
               R.figures["kills"], counts["random"], counts["window"],
               counts["window_confirmed"], counts["startup"], s["verified"], s["resume_each"],
               s["replaced_unrecorded"], s["committed_lost"], hit_files))


def prepare_template(tmp, data):
    """A state folder with job J paused after 2 epochs (save_every 1)."""
    tpl = os.path.join(tmp, "template")
    d = Daemon(tpl, os.path.join(tmp, "tpl.sock"), os.path.join(tmp, "tpl.log"))
    d.ctl("start", "J", "--data", data, "--epochs", "1000000", "--save-every", "1", "--keep",
          "3", *rlib.MODEL)
    t = time.time()
    while time.time() - t < 120 and d.status("J")["epoch"] < 2:
        time.sleep(0.02)
    d.ctl("pause", "J")
    d.wait_state("J", ["paused"], 60)
    d.shutdown()
    return tpl


def sweep(R, tmp, data, mode):
    C = Campaign(R, tmp, data)
    tpl = prepare_template(tmp, data)
    # one epoch-end cycle: best (when val improves) + epoch_N (1 header + 51 tensor
    # writes each) + the curves SVG; 3 fsyncs, renames, dirsyncs; 2 row commits
    plan = []
    nwrites = 2 * 52 + 1
    if mode == "full":
        ks, ks3, kc = range(1, nwrites + 1), (1, 2, 3), (1, 2)
    elif QUICK:
        ks, ks3, kc = (1, 52, 53, 105), (1, 3), (1,)
    else:
        ks, ks3, kc = (1, 2, 26, 52, 53, 54, 80, 104, 105), (1, 2, 3), (1, 2)
    plan += [("NLLM_FS_FAULT", "write:%d:kill" % k) for k in ks]
    for op in ("fsync", "rename", "dirsync"):
        plan += [("NLLM_FS_FAULT", "%s:%d:kill" % (op, k)) for k in ks3]
    plan += [("NLLM_CATALOG_FAULT", "ckpt_add:%d:kill" % k) for k in kc]
    plan += [("NLLM_CATALOG_FAULT", "ckpt_added:%d:kill" % k) for k in kc]
    # in-place replacement: pause right after the resume, so that the first save
    # is a new `paused` over the committed one (the newest committed checkpoint)
    plan += [("NLLM_FS_FAULT", "rename:1:kill", "pause"), ("NLLM_FS_FAULT", "dirsync:1:kill", "pause"),
             ("NLLM_CATALOG_FAULT", "ckpt_add:1:kill", "pause"),
             ("NLLM_CATALOG_FAULT", "ckpt_added:1:kill", "pause")][:2 if QUICK else 4]
    plan = [p if len(p) == 3 else p + ("epoch",) for p in plan]
    d = Daemon(tpl, os.path.join(tmp, "tpl.sock"), os.path.join(tmp, "tpl.log"))
    tpl_rows = [r for r in d.ctl("checkpoints", "J")[1]["checkpoints"] if r["status"] == "ok"]
    d.shutdown()
    tpl_committed = [(r["name"], r["step"], r["epoch"]) for r in tpl_rows]
    where = {}
    died = 0
    for var, spec, how in plan:
        trial = os.path.join(tmp, "trial")
        rlib.copy_state(tpl, trial)
        sock, log = os.path.join(tmp, "trial.sock"), os.path.join(tmp, "trial.log")
        label = "sweep %s=%s%s" % (var, spec, " (pause at once)" if how == "pause" else "")
        d = Daemon(trial, sock, log, env={var: spec})
        w = Watcher(sock, "J")
        w.start()
        w.ready.wait(10)
        d.ctl("resume", "J")
        if how == "pause":
            d.wait_state("J", ["running"], 30)
            d.ctl("pause", "J")
        try:
            rc = d.p.wait(60)
        except subprocess.TimeoutExpired:
            rc = None
            d.p.kill()
            d.p.wait()
        d.logf.close()
        w.join(5)
        R.check(rc == -9, "%s: nllmd died by SIGKILL in the first save (exit %s)" % (label, rc))
        died += rc == -9
        left = sorted(os.path.basename(f) for f in rlib.temp_files(trial))
        where[spec + (" pause" if how == "pause" else "")] = left
        d = Daemon(trial, sock, log)
        newest = C.check_restart(d, label, tpl_committed + list(w.committed),
                                 1 if mode == "full" else 0)
        w = Watcher(sock, "J")
        w.start()
        w.ready.wait(10)
        C.resume_latest(d, newest, label)
        d.shutdown()
        w.join(5)
    R.fig("sweep_trials", len(plan))
    R.fig("sweep_killed", died)
    for k, v in C.stats.items():
        R.fig("sweep_" + k, v)
    R.note("sweep: %d kill points (%d write, %d each fsync/rename/dirsync, %d+%d catalog "
           "commit, %d with a pause at once), %d died by SIGKILL; rows recorded at start-up "
           "(adopted) %d, replaced-unrecorded rows %d, committed lost %d" % (
               len(plan), len(ks), len(ks3), len(kc), len(kc),
               sum(1 for p in plan if p[2] == "pause"), died, C.stats["adopted"],
               C.stats["replaced_unrecorded"], C.stats["committed_lost"]))
    with open(os.path.join(tmp, "sweep_where.txt"), "w") as f:
        for k, v in where.items():
            f.write("%s %s\n" % (k, v))


def main():
    out = arg("--out", ".")
    nkills = int(arg("--kills", "200"))
    mode = arg("--sweep", "full")
    rnd = random.Random(int(arg("--seed", "1")))
    R = rlib.Results("kill", out)
    tmp = tempfile.mkdtemp(prefix="nllm-rel-kill-", dir=arg("--tmp"))
    data = os.path.join(tmp, "train.txt")
    rlib.corpus(data, 600, 1)

    def body():
        if nkills:
            random_kills(R, tmp, data, nkills, rnd)
        if mode != "none":
            sweep(R, tmp, data, mode)

    return rlib.run_campaign(R, tmp, body)


if __name__ == "__main__":
    sys.exit(main())
