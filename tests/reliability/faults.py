#!/usr/bin/python3
"""faults.py -- campaign 3: I/O errors at every call site of a checkpoint save,
against the running daemon, checked against the rules.

Every scenario starts from a copy of one state folder (job J, save_every 1000
so the only files written are its checkpoints, paused early in epoch 1), runs
nllmd with a fault, resumes J and waits for the first epoch end, where the
`best` save meets the fault:
  - NLLM_FS_FAULT write #1 (header) / #26 / #52 (last tensor), fsync #1,
    rename #1, dirsync #1, each with EIO and with ENOSPC (one-shot);
  - sticky: fsync:1+:EIO and write:1+:ENOSPC (the paused save fails as well);
  - NLLM_CATALOG_FAULT ckpt_add:1:ENOSPC / EIO (the file is durable, the
    catalog row cannot be committed);
  - a real full disk: the state folder on a small tmpfs, filled while the job
    trains; then filled to the last byte and nllmd restarted.
Rules checked in each: the failed checkpoint is not in the catalog and its
final name is absent (no earlier best) -- a failed fsync is never retried into
"durable"; no temp file is left; the job is paused (not failed, the daemon not
dead) with the reason in `nllmctl status` (error), `nllmctl events`
(checkpoint_failed, paused), /api/jobs/J (error) and /metrics
(nllm_job_state{state="paused"} 1); every ok row verifies; with a sticky
fault the previous checkpoint stays latest; a restart with the fault still
present comes up and stays up (no crash loop, the job stays paused); a
restart without it resumes the job and saves `best`.

Usage: faults.py --out DIR [--quick]
"""
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rlib  # noqa: E402
from rlib import Daemon, arg  # noqa: E402

QUICK = "--quick" in sys.argv


def http_get(port, path):
    req = urllib.request.Request("http://127.0.0.1:%d%s" % (port, path),
                                 headers={"Host": "127.0.0.1:%d" % port})
    with urllib.request.urlopen(req, timeout=10) as r:
        return r.read().decode()


def prepare_template(tmp, data):
    tpl = os.path.join(tmp, "template")
    d = Daemon(tpl, os.path.join(tmp, "tpl.sock"), os.path.join(tmp, "tpl.log"))
    d.ctl("start", "J", "--data", data, "--epochs", "1000000", "--save-every", "1000",
          *rlib.MODEL)
    t = time.time()
    while time.time() - t < 60 and d.status("J")["global_step"] < 3:
        time.sleep(0.005)
    d.ctl("pause", "J")
    st = d.wait_state("J", ["paused"], 60)
    assert st["epoch"] == 0, "template: paused after the first epoch ended; use a bigger corpus"
    rows = d.ctl("checkpoints", "J")[1]["checkpoints"]
    d.shutdown()
    return tpl, rows[-1]


def metrics_reason(R, met, label):
    """/metrics names the failure: nllm_job_error_info{code=ENOSPC|EIO} 1 and
    a checkpoint failure counted."""
    want = "ENOSPC" if ("ENOSPC" in label or "full disk" in label) else \
        "EIO" if "EIO" in label else None
    codes = re.findall(r'^nllm_job_error_info\{job_name="J",code="(\w+)"\} 1$', met, re.M)
    R.check(codes and (want is None or codes == [want]),
            "%s: /metrics nllm_job_error_info code %s (want %s)" % (label, codes, want))
    n = re.findall(r'^nllm_job_checkpoint_failures_total\{job_name="J"\} (\d+)$', met, re.M)
    R.check(n and int(n[0]) >= 1, "%s: /metrics nllm_job_checkpoint_failures_total %s" % (
        label, n))


def common_checks(R, d, label, port, sticky, tpl_paused, expect_errtext):
    st = d.wait_state("J", ["paused", "failed", "completed"], 90)
    R.check(d.alive(), "%s: nllmd alive" % label)
    R.check(st and st["state"] == "paused", "%s: job paused, not failed or killed (%s)" % (
        label, st and (st["state"], st["error"])))
    err = (st or {}).get("error") or ""
    R.check(any(t in err for t in expect_errtext), "%s: status error gives the reason: %r" % (
        label, err))
    rc, ev, _ = d.ctl("events", "J", "--limit", "20")
    kinds = [e["kind"] for e in ev["events"]]
    fail_msgs = [e["message"] for e in ev["events"] if e["kind"] == "checkpoint_failed"]
    R.check("checkpoint_failed" in kinds and "paused" in kinds and
            any(any(t in m for t in expect_errtext) for m in fail_msgs),
            "%s: events checkpoint_failed + paused with the reason (%s)" % (label, kinds[-6:]))
    api = http_get(port, "/api/jobs/J")
    R.check('"state": "paused"' in api.replace('":"', '": "') or '"paused"' in api,
            "%s: /api/jobs/J shows paused" % label)
    R.check(any(t in api for t in expect_errtext), "%s: /api/jobs/J shows the error" % label)
    met = http_get(port, "/metrics")
    R.check('nllm_job_state{job_name="J",state="paused"} 1' in met,
            "%s: /metrics nllm_job_state{state=paused} 1" % label)
    metrics_reason(R, met, label)
    tmps = rlib.temp_files(d.state)
    R.check(not tmps, "%s: no temp file left: %s" % (label, tmps))
    rc, out, _ = d.ctl("checkpoints", "J", "--all")
    rows = out["checkpoints"]
    R.check(not any(r["name"] == "best" for r in rows),
            "%s: the failed best checkpoint is not in the catalog" % label)
    ckdir = os.path.join(d.state, "jobs", "J", "checkpoints")
    R.check(not os.path.exists(os.path.join(ckdir, "best_J.safetensors")),
            "%s: best_J.safetensors was not made durable under its name" % label)
    rc, v, e = d.ctl("verify", "J")
    R.check(rc == 0 and v["bad"] == 0, "%s: every row verifies (%s)" % (label, v or e))
    ok = [r for r in rows if r["status"] == "ok" and r["current"]]
    newest = ok[-1] if ok else None
    if sticky:
        R.check(newest is not None and newest["checksum"] == tpl_paused["checksum"],
                "%s: the previous checkpoint stays latest (%s)" % (
                    label, newest and (newest["name"], newest["step"])))
    else:
        R.check(newest is not None and newest["name"] == "paused" and
                newest["step"] > tpl_paused["step"],
                "%s: latest is the pause checkpoint written after the failure (%s)" % (
                    label, newest and (newest["name"], newest["step"])))
    return st


def restart_checks(R, tmp, trial, env, label, full_recovery):
    """A restart with the fault still there stays up; without it the job resumes."""
    sock, log = os.path.join(tmp, "trial.sock"), os.path.join(tmp, "trial.log")
    d = Daemon(trial, sock, log, env=env, extra=["--auto-resume"])
    time.sleep(1.5)
    st = d.status("J") if d.alive() else None
    R.check(d.alive() and st and st["state"] == "paused",
            "%s: restart with the fault present: up, job still paused (%s)" % (
                label, st and st["state"]))
    R.check(d.shutdown() == 0, "%s: that daemon shuts down cleanly" % label)
    if not full_recovery:
        return
    d = Daemon(trial, sock, log)
    rc, _, err = d.ctl("resume", "J")
    t = time.time()
    got = False
    while time.time() - t < 60 and not got:
        rows = d.ctl("checkpoints", "J")[1]["checkpoints"]
        got = any(r["name"] == "best" for r in rows)
        time.sleep(0.05)
    R.check(rc == 0 and got, "%s: fault gone: the job resumes and saves best (%s)" % (
        label, err.strip()))
    st = d.status("J")
    R.check(st["error"] is None, "%s: the error is cleared on resume (%r)" % (label, st["error"]))
    d.ctl("pause", "J")
    d.wait_state("J", ["paused"], 60)
    rc, v, e = d.ctl("verify", "J")
    R.check(rc == 0 and v["bad"] == 0, "%s: after recovery every row verifies" % label)
    d.shutdown()


def scenario(R, tmp, tpl, tpl_paused, var, spec, sticky, texts, full_recovery):
    label = "%s=%s" % (var, spec)
    trial = os.path.join(tmp, "trial")
    rlib.copy_state(tpl, trial)
    port = rlib.free_port()
    sock, log = os.path.join(tmp, "trial.sock"), os.path.join(tmp, "trial.log")
    d = Daemon(trial, sock, log, env={var: spec}, metrics="127.0.0.1:%d" % port)
    rc, _, err = d.ctl("resume", "J")
    R.check(rc == 0, "%s: resume J (%s)" % (label, err.strip()))
    common_checks(R, d, label, port, sticky, tpl_paused, texts)
    R.check(d.shutdown() == 0, "%s: shutdown exit 0" % label)
    restart_checks(R, tmp, trial, {var: spec}, label, full_recovery)


def catalog_scenario(R, tmp, tpl, action):
    """The best file is durable but its row cannot be committed."""
    label = "NLLM_CATALOG_FAULT=ckpt_add:1:%s" % action
    trial = os.path.join(tmp, "trial")
    rlib.copy_state(tpl, trial)
    port = rlib.free_port()
    sock, log = os.path.join(tmp, "trial.sock"), os.path.join(tmp, "trial.log")
    d = Daemon(trial, sock, log, env={"NLLM_CATALOG_FAULT": "ckpt_add:1:" + action},
               metrics="127.0.0.1:%d" % port)
    d.ctl("resume", "J")
    st = d.wait_state("J", ["paused", "failed", "completed"], 20)
    R.check(d.alive(), "%s: nllmd alive" % label)
    R.check(st and st["state"] == "paused" and "not recorded" in (st["error"] or ""),
            "%s: job paused with the reason (%s)" % (label, st and (st["state"], st["error"])))
    rc, ev, _ = d.ctl("events", "J", "--limit", "20")
    R.check(any(e["kind"] == "checkpoint_failed" and "not recorded" in e["message"]
                for e in ev["events"]), "%s: event checkpoint_failed" % label)
    met = http_get(port, "/metrics")
    R.check('nllm_job_state{job_name="J",state="paused"} 1' in met,
            "%s: /metrics shows paused" % label)
    metrics_reason(R, met, label)
    rows = d.ctl("checkpoints", "J", "--all")[1]["checkpoints"]
    R.check(not any(r["name"] == "best" for r in rows), "%s: no best row" % label)
    rc, v, e = d.ctl("verify", "J")
    R.check(rc == 0 and v["bad"] == 0, "%s: every row verifies" % label)
    R.check(not rlib.temp_files(trial), "%s: no temp file left" % label)
    d.shutdown()
    d = Daemon(trial, sock, log)
    st = d.status("J")
    R.check(st["state"] == "paused", "%s: after a restart still paused (%s)" % (
        label, st["state"]))
    d.shutdown()


def fill(path, mnt, leave):
    """Grow path until about `leave` bytes are free (the job writes meanwhile)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    try:
        while True:
            st = os.statvfs(mnt)
            free = st.f_bavail * st.f_frsize
            if free <= leave:
                break
            try:
                os.write(fd, b"\0" * min(1 << 20, free - leave))
            except OSError:  # full: give `leave` back
                size = os.fstat(fd).st_size
                os.ftruncate(fd, max(0, size - leave))
                break
    finally:
        os.close(fd)


def tmpfs_scenario(R, tmp, data):
    """A real full disk: the state folder on a 24 MB tmpfs."""
    mnt = os.path.join(tmp, "tmpfs")
    os.makedirs(mnt, exist_ok=True)
    try:
        r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", mnt],
                           capture_output=True, text=True)
        why = r.stderr.strip() if r.returncode != 0 else None
    except OSError as e:
        why = str(e)
    if why is not None:
        R.note("tmpfs full-disk scenario skipped: cannot mount tmpfs (%s)" % why)
        R.fig("tmpfs_full_disk", "skipped")
        return
    label = "tmpfs full disk"
    try:
        state = os.path.join(mnt, "state")
        sock, log = os.path.join(tmp, "fs.sock"), os.path.join(tmp, "fs.log")
        port = rlib.free_port()
        d = Daemon(state, sock, log, metrics="127.0.0.1:%d" % port)
        d.ctl("start", "J", "--data", data, "--epochs", "1000000", "--save-every", "1",
              *rlib.MODEL)
        t = time.time()
        while time.time() - t < 60 and d.status("J")["epoch"] < 2:
            time.sleep(0.02)
        # leave 400 KB: below what one checkpoint needs, enough for SQLite
        fill(os.path.join(mnt, "filler"), mnt, 400 * 1024)
        st = d.wait_state("J", ["paused", "failed"], 60)
        R.check(d.alive() and st["state"] == "paused" and "free" in (st["error"] or ""),
                "%s: job paused with the reason (%s)" % (label, (st["state"], st["error"])))
        rc, ev, _ = d.ctl("events", "J", "--limit", "10")
        R.check(any(e["kind"] == "checkpoint_failed" for e in ev["events"]),
                "%s: checkpoint_failed event" % label)
        met = http_get(port, "/metrics")
        R.check('nllm_job_state{job_name="J",state="paused"} 1' in met,
                "%s: /metrics shows paused" % label)
        metrics_reason(R, met, label)
        R.check(not rlib.temp_files(state), "%s: no temp file left" % label)
        rc, v, e = d.ctl("verify", "J")
        R.check(rc == 0 and v["bad"] == 0, "%s: every row verifies" % label)
        # now the last byte: a restart must come up (or fail once, clearly), never loop
        d.p.kill()
        d.p.wait()
        d.logf.close()
        fd = os.open(os.path.join(mnt, "filler2"), os.O_WRONLY | os.O_CREAT, 0o644)
        for chunk in (65536, 4096, 512, 1):
            try:
                while True:
                    os.write(fd, b"\0" * chunk)
            except OSError:
                pass
        os.close(fd)
        st = os.statvfs(mnt)
        R.note("%s: %d bytes free before the restart" % (label, st.f_bavail * st.f_frsize))
        d = Daemon(state, sock, log, metrics="127.0.0.1:%d" % port, wait=False)
        up = d.wait_up(20)
        time.sleep(1.0)
        if up and d.alive():
            st = d.status("J")
            R.check(st is not None and st["state"] in ("interrupted", "paused"),
                    "%s: 0 bytes free: nllmd comes up, job %s" % (label, st and st["state"]))
            R.fig("full_disk_restart", "up, job %s" % (st and st["state"]))
            d.shutdown()
        else:
            rc = d.p.wait(10) if d.alive() is False else None
            tail = d.log_text()[-400:]
            R.check(rc not in (None, -6, -11, -7), "%s: 0 bytes free: nllmd exits cleanly "
                    "(exit %s) rather than crashing: %s" % (label, rc, tail))
            R.fig("full_disk_restart", "exit %s: %s" % (rc, tail.strip().splitlines()[-1]))
            if d.alive():
                d.kill()
        os.unlink(os.path.join(mnt, "filler"))
        os.unlink(os.path.join(mnt, "filler2"))
        d = Daemon(state, sock, log)
        rc, _, err = d.ctl("resume", "J")
        t = time.time()
        got = False
        while time.time() - t < 60 and not got:
            st = d.status("J")
            got = st["epoch"] >= 4 and st["state"] == "running"
            time.sleep(0.05)
        rows = d.ctl("checkpoints", "J")[1]["checkpoints"]
        R.check(got and any(r["epoch"] >= 3 for r in rows),
                "%s: space freed: the job resumes and checkpoints again" % label)
        rc, v, e = d.ctl("verify", "J")
        R.check(rc == 0 and v["bad"] == 0, "%s: every row verifies after recovery" % label)
        d.shutdown()
        R.fig("tmpfs_full_disk", "ok")
    finally:
        subprocess.run(["umount", "-l", mnt])


def main():
    out = arg("--out", ".")
    R = rlib.Results("faults", out)
    tmp = tempfile.mkdtemp(prefix="nllm-rel-faults-", dir=arg("--tmp"))
    data = os.path.join(tmp, "train.txt")
    rlib.corpus(data, 600, 2)
    n = [0]  # scenarios run

    def body():
        try:
            tpl, tpl_paused = prepare_template(tmp, data)
            eio = ["Input/output error"]
            nospc = ["No space left on device"]
            plan = []
            for op, ks in (("write", (1, 26, 52)), ("fsync", (1,)), ("rename", (1,)),
                           ("dirsync", (1,))):
                for k in ks:
                    for en, txt in (("EIO", eio), ("ENOSPC", nospc)):
                        plan.append(("%s:%d:%s" % (op, k, en), False, txt))
            plan.append(("fsync:1+:EIO", True, eio))
            plan.append(("write:1+:ENOSPC", True, nospc))
            for i, (spec, sticky, txt) in enumerate(plan):
                full = not QUICK or i % 4 == 0 or sticky
                scenario(R, tmp, tpl, tpl_paused, "NLLM_FS_FAULT", spec, sticky, txt, full)
                n[0] += 1
            for action in ("ENOSPC", "EIO"):
                catalog_scenario(R, tmp, tpl, action)
                n[0] += 1
            tmpfs_scenario(R, tmp, data)
            n[0] += 1
        finally:
            R.fig("scenarios", n[0])

    return rlib.run_campaign(R, tmp, body)


if __name__ == "__main__":
    sys.exit(main())
