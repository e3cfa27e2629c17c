#!/usr/bin/python3
"""test_multi.py -- several jobs on one device (--jobs-per-device), through
the real nllmd and nllmctl on the cpu device.

Default (1 per device): a second job stays queued while the first runs and
starts when it completes. With --jobs-per-device 2 (and the HTTP listener):
two jobs run on cpu at once (both `running` with steps done), a third stays
queued until one of them completes; while the two run, `status` (JSON
device_jobs, text "shared with"), `hello`, /api/daemon, /api/jobs and
/metrics (nllm_device_jobs 2, nllm_device_busy 1, nllm_device_job_slots 2,
nllm_job_device_info, nllm_job_device_memory_peak_bytes per job) show who
shares the device; all three complete with final weights identical to the
job run alone, and every checkpoint verifies. Then, with jobs-per-device
from a config file: SIGTERM with two jobs running (both interrupted with a
paused checkpoint, exit 0), both resumed at once, a slot freed by pause
goes to a queued job, the paused job resumed waits queued until stop frees
a slot. Bad values of --jobs-per-device are usage errors.

Usage: test_multi.py BUILD_DIR (meson passes it). Prints "N passed, M failed".
"""
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

BUILD = sys.argv[1] if len(sys.argv) > 1 else "build"
NLLMD = os.path.join(BUILD, "nllmd")
NLLMCTL = os.path.join(BUILD, "nllmctl")
passed = failed = 0

# tiny model, as the other daemon tests; ~20 ms an epoch of the 600-line corpus
SMALL = ["--vocab", "30", "--embed-dim", "8", "--hidden-dim", "24", "--context-dim", "8",
         "--layers", "2", "--seq-len", "16", "--batch", "4", "--lr", "0.003",
         "--save-every", "50", "--dropout", "0.1", "--threads", "1", "--patience", "0"]
EPOCHS = "100"


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print("ok   " + what, flush=True)
    else:
        failed += 1
        print("FAIL " + what, flush=True)
    return cond


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def corpus(path, lines, seed):
    rnd = random.Random(seed)
    words = ("the king queen lord lady sword crown castle river night day sun moon "
             "speak love war peace heart mind fair foul good ill").split()
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(" ".join(rnd.choice(words) for _ in range(rnd.randint(5, 14))) + "\n")


class Daemon:
    def __init__(self, tmp, state, extra=()):
        self.sock = os.path.join(tmp, state + ".sock")
        self.logpath = os.path.join(tmp, state + ".log")
        self.log = open(self.logpath, "a")
        self.args = [NLLMD, "--state-dir", os.path.join(tmp, state), "--socket", self.sock,
                     "--devices", "cpu", "--threads", "1"] + list(extra)
        self.p = subprocess.Popen(self.args, stdout=self.log, stderr=self.log)
        for _ in range(400):
            if self.p.poll() is not None:
                raise RuntimeError("nllmd exited; see " + self.logpath)
            if os.path.exists(self.sock) and self.ctl("hello")[0] == 0:
                return
            time.sleep(0.05)
        raise RuntimeError("nllmd did not come up; see " + self.logpath)

    def ctl(self, *args, json_out=True, timeout=120):
        r = subprocess.run([NLLMCTL, "--socket", self.sock] + (["--json"] if json_out else [])
                           + list(args), capture_output=True, text=True, timeout=timeout)
        out = r.stdout
        if json_out and out.strip():
            try:
                out = json.loads(out)
            except ValueError:
                pass
        return r.returncode, out

    def status(self, name):
        rc, st = self.ctl("status", name)
        return st if rc == 0 and isinstance(st, dict) else {"state": "missing"}

    def wait(self, cond, timeout=300):
        """Polls list until cond(jobs by name) holds; returns that map (or the last)."""
        t = time.time()
        jobs = {}
        while time.time() - t < timeout:
            rc, ls = self.ctl("list")
            if rc == 0:
                jobs = {j["name"]: j for j in ls["jobs"]}
                if cond(jobs):
                    return jobs
            time.sleep(0.05)
        return jobs

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


def get(port, path):
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    c.request("GET", path)
    r = c.getresponse()
    body = r.read()
    c.close()
    return r.status, body


def metrics(port):
    """{(name, frozenset(labels)): value} of /metrics."""
    _, body = get(port, "/metrics")
    out = {}
    for line in body.decode().splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)$', line)
        if not m:
            continue
        labels = frozenset(re.findall(r'([a-zA-Z_]+)="((?:[^"\\]|\\.)*)"', m.group(3) or ""))
        out[(m.group(1), labels)] = float(m.group(4))
    return out


def metric(ms, name, **labels):
    want = set(labels.items())
    for (n, ls), v in ms.items():
        if n == name and want <= set(ls):
            return v
    return None


def running(j):
    return j.get("state") == "running" and j.get("global_step", 0) > 0


def final_hash(d, name):
    rc, cks = d.ctl("checkpoints", name)
    for c in (cks or {}).get("checkpoints", []) if rc == 0 else []:
        if c["name"] == "final":
            return c["weights_hash"]
    return None


def event_time(d, name, kind, first=True):
    rc, ev = d.ctl("events", name, "--limit", "1000")
    ts = [e["ts"] for e in (ev or {}).get("events", []) if e["kind"] == kind] if rc == 0 else []
    return (ts[0] if first else ts[-1]) if ts else None


def one_per_device(tmp, data):
    """The default: one job per device, the second waits queued."""
    d = Daemon(tmp, "one")
    rc, hello = d.ctl("hello")
    check(rc == 0 and hello.get("jobs_per_device") == 1 and hello.get("max_jobs") == 1,
          "default: hello says 1 job per device, 1 at once (%s, %s)"
          % (hello.get("jobs_per_device"), hello.get("max_jobs")))
    d.ctl("start", "j1", "--data", data, "--epochs", EPOCHS, *SMALL)
    d.ctl("start", "j2", "--data", data, "--epochs", EPOCHS, *SMALL)
    jobs = d.wait(lambda js: running(js.get("j1", {})))
    check(running(jobs.get("j1", {})) and jobs.get("j2", {}).get("state") == "queued",
          "default: j1 runs, j2 waits queued (%s, %s)"
          % (jobs.get("j1", {}).get("state"), jobs.get("j2", {}).get("state")))
    both = [False]

    def watch(js):
        both[0] |= running(js.get("j1", {})) and js.get("j2", {}).get("state") == "running"
        return all(js.get(n, {}).get("state") == "completed" for n in ("j1", "j2"))

    jobs = d.wait(watch)
    check(all(jobs.get(n, {}).get("state") == "completed" for n in ("j1", "j2")) and not both[0],
          "default: both complete, never both running")
    t1, t2 = event_time(d, "j1", "completed"), event_time(d, "j2", "started")
    check(t1 is not None and t2 is not None and t2 >= t1,
          "default: j2 started when j1 completed (%s >= %s)" % (t2, t1))
    ref = final_hash(d, "j1")
    check(ref is not None and final_hash(d, "j2") == ref, "default: j1 and j2 end with the same "
          "weights (%s)" % ref)
    check(d.shutdown() == 0, "default: shutdown exit 0")
    return ref


def two_per_device(tmp, data, ref):
    port = free_port()
    d = Daemon(tmp, "two", ["--jobs-per-device", "2", "--metrics", "127.0.0.1:%d" % port])
    check("2 job(s) per device, 2 at once" in d.log_text(), "the ready line names 2 per device")
    rc, hello = d.ctl("hello")
    check(rc == 0 and hello.get("jobs_per_device") == 2 and hello.get("max_jobs") == 2 and
          hello["devices"][0].get("jobs") == [] and hello["devices"][0].get("busy") is None,
          "hello: 2 per device, max_jobs 2 (one device x 2), cpu has no jobs yet")
    for n in ("a", "b", "c"):
        d.ctl("start", n, "--data", data, "--epochs", EPOCHS, *SMALL)
    jobs = d.wait(lambda js: running(js.get("a", {})) and running(js.get("b", {})))
    check(running(jobs.get("a", {})) and running(jobs.get("b", {})),
          "a and b both running on cpu at once, steps done (global steps %s, %s)"
          % (jobs.get("a", {}).get("global_step"), jobs.get("b", {}).get("global_step")))
    check(jobs.get("c", {}).get("state") == "queued",
          "c waits queued while a and b run (%s)" % jobs.get("c", {}).get("state"))
    check(jobs.get("a", {}).get("device") == "cpu" and jobs.get("b", {}).get("device") == "cpu",
          "both on cpu")

    # what shows the sharing while both run (they run 100 epochs: seconds)
    st = d.status("a")
    check(st.get("device_jobs") == ["a", "b"] and st.get("device") == "cpu",
          "status a: device_jobs %s" % st.get("device_jobs"))
    check(isinstance(st.get("device_memory_peak"), int) and st["device_memory_peak"] > 0,
          "status a: device_memory_peak %s" % st.get("device_memory_peak"))
    rc, text = d.ctl("status", "b", json_out=False)
    check(rc == 0 and re.search(r"^device: +cpu \(shared with a\)$", text, re.M) and
          re.search(r"^device memory: +\S+ \S+ at most", text, re.M),
          "status b (text): shared with a, device memory (%s)"
          % [l for l in text.splitlines() if l.startswith("device")])
    rc, hello = d.ctl("hello")
    check(hello["devices"][0].get("jobs") == ["a", "b"] and hello["devices"][0].get("busy") == "a",
          "hello: cpu runs [a, b], busy is the first (%s)" % hello["devices"][0])
    rc, text = d.ctl("hello", json_out=False)
    check(re.search(r"^  cpu +cpu +a, b", text, re.M) and "(2 per device)" in text,
          "hello (text): the JOBS column lists a, b")
    _, body = get(port, "/api/daemon")
    dm = json.loads(body)
    check(dm["devices"][0].get("jobs") == ["a", "b"] and dm.get("jobs_per_device") == 2,
          "/api/daemon: cpu runs [a, b], 2 per device")
    _, body = get(port, "/api/jobs")
    aj = {j["name"]: j for j in json.loads(body)["jobs"]}
    check(aj["b"].get("device_jobs") == ["a", "b"] and aj["c"].get("device_jobs") is None and
          aj["b"].get("device_memory_peak", 0) > 0,
          "/api/jobs: device_jobs and device_memory_peak per job")
    ms = metrics(port)
    check(metric(ms, "nllm_device_jobs", device="cpu") == 2, "/metrics: nllm_device_jobs{cpu} 2 "
          "(%s)" % metric(ms, "nllm_device_jobs", device="cpu"))
    check(metric(ms, "nllm_device_busy", device="cpu") == 1, "/metrics: nllm_device_busy{cpu} 1")
    check(metric(ms, "nllm_device_job_slots", device="cpu") == 2,
          "/metrics: nllm_device_job_slots{cpu} 2")
    check(metric(ms, "nllm_job_device_info", job_name="a", device="cpu") == 1 and
          metric(ms, "nllm_job_device_info", job_name="b", device="cpu") == 1 and
          metric(ms, "nllm_job_device_info", job_name="c") is None,
          "/metrics: nllm_job_device_info for a and b on cpu, none for queued c")
    pa = metric(ms, "nllm_job_device_memory_peak_bytes", job_name="a")
    pb = metric(ms, "nllm_job_device_memory_peak_bytes", job_name="b")
    check(pa and pb and pa > 10000 and pa == pb and
          metric(ms, "nllm_job_device_memory_peak_bytes", job_name="c") is None,
          "/metrics: nllm_job_device_memory_peak_bytes a %s, b %s, none for c" % (pa, pb))

    jobs = d.wait(lambda js: all(js.get(n, {}).get("state") == "completed"
                                 for n in ("a", "b", "c")))
    check(all(jobs.get(n, {}).get("state") == "completed" for n in ("a", "b", "c")),
          "a, b and c all complete")
    done = [t for t in (event_time(d, "a", "completed"), event_time(d, "b", "completed")) if t]
    tc = event_time(d, "c", "started")
    check(done and tc is not None and tc >= min(done),
          "c started only when a or b had completed (%s >= %s)" % (tc, min(done or [0])))
    hashes = {n: final_hash(d, n) for n in ("a", "b", "c")}
    check(all(h == ref for h in hashes.values()),
          "final weights of a, b, c (two at once) equal the job run alone: %s vs %s"
          % (hashes, ref))
    rc, v = d.ctl("verify", "--all")
    check(rc == 0 and v["bad"] == 0 and v["checked"] >= 9,
          "every checkpoint verifies (%s checked)" % (v or {}).get("checked"))
    ms = metrics(port)
    check(metric(ms, "nllm_device_jobs", device="cpu") == 0 and
          metric(ms, "nllm_device_busy", device="cpu") == 0 and
          metric(ms, "nllm_job_device_memory_peak_bytes", job_name="c") == pa,
          "/metrics after: no jobs on cpu; c's peak kept (%s)"
          % metric(ms, "nllm_job_device_memory_peak_bytes", job_name="c"))
    check(d.shutdown() == 0, "shutdown exit 0")
    log = d.log_text()
    check("AddressSanitizer" not in log and "runtime error" not in log,
          "no sanitizer report in the daemon log")


def lifecycle(tmp, data):
    """SIGTERM, resume, pause, stop with two jobs per device (from a config file)."""
    conf = os.path.join(tmp, "nllmd.conf")
    with open(conf, "w") as f:
        f.write("# two jobs share a device\njobs_per_device = 2\nmetrics = none\n")
    d = Daemon(tmp, "life", ["--config", conf])
    rc, hello = d.ctl("hello")
    check(hello.get("jobs_per_device") == 2, "config file: jobs_per_device = 2 applies")
    long = ["--data", data, "--epochs", "100000"] + SMALL
    for n in ("s1", "s2"):
        d.ctl("start", n, *long)
    jobs = d.wait(lambda js: running(js.get("s1", {})) and running(js.get("s2", {})))
    check(running(jobs.get("s1", {})) and running(jobs.get("s2", {})), "s1 and s2 running")
    d.p.send_signal(signal.SIGTERM)
    check(d.p.wait(120) == 0, "SIGTERM with two jobs on a device: exit 0")
    d = Daemon(tmp, "life", ["--config", conf])
    for n in ("s1", "s2"):
        st = d.status(n)
        rc, cks = d.ctl("checkpoints", n)
        names = [c["name"] for c in (cks or {}).get("checkpoints", [])]
        check(st["state"] == "interrupted" and "paused" in names,
              "%s interrupted with a paused checkpoint (%s, %s)" % (n, st["state"], names))
        d.ctl("resume", n)
    jobs = d.wait(lambda js: running(js.get("s1", {})) and running(js.get("s2", {})))
    check(running(jobs.get("s1", {})) and running(jobs.get("s2", {})),
          "both resumed and running at once")
    d.ctl("start", "s3", *long)
    check(d.status("s3")["state"] == "queued", "s3 queued: both slots taken")
    d.ctl("pause", "s1")
    jobs = d.wait(lambda js: js.get("s1", {}).get("state") == "paused" and
                  running(js.get("s3", {})))
    check(jobs.get("s1", {}).get("state") == "paused" and running(jobs.get("s3", {})),
          "pause s1: its slot goes to s3")
    d.ctl("resume", "s1")
    time.sleep(0.3)
    check(d.status("s1")["state"] == "queued", "resume s1: queued, s2 and s3 hold the slots")
    d.ctl("stop", "s2")
    jobs = d.wait(lambda js: js.get("s2", {}).get("state") == "stopped" and
                  running(js.get("s1", {})))
    check(jobs.get("s2", {}).get("state") == "stopped" and running(jobs.get("s1", {})),
          "stop s2: s1 runs again")
    rc, hello = d.ctl("hello")
    check(sorted(hello["devices"][0].get("jobs", [])) == ["s1", "s3"],
          "hello: cpu runs s1 and s3 (%s)" % hello["devices"][0].get("jobs"))
    for n in ("s1", "s3"):
        d.ctl("stop", n)
    jobs = d.wait(lambda js: all(js.get(n, {}).get("state") == "stopped"
                                 for n in ("s1", "s2", "s3")))
    check(all(jobs.get(n, {}).get("state") == "stopped" for n in ("s1", "s2", "s3")),
          "all stopped")
    rc, v = d.ctl("verify", "--all")
    check(rc == 0 and v["bad"] == 0, "every checkpoint verifies")
    check(d.shutdown() == 0, "shutdown exit 0")


def bad_values(tmp):
    for v in ("0", "-1", "x", "257"):
        r = subprocess.run([NLLMD, "--state-dir", os.path.join(tmp, "bad"), "--socket",
                            os.path.join(tmp, "bad.sock"), "--jobs-per-device", v],
                           capture_output=True, text=True, timeout=30)
        check(r.returncode == 2 and "--jobs-per-device" in r.stderr,
              "--jobs-per-device %s: usage error (%d: %s)" % (v, r.returncode, r.stderr.strip()))
    r = subprocess.run([NLLMD, "--help"], capture_output=True, text=True, timeout=30)
    check("--jobs-per-device N" in r.stdout, "nllmd --help lists --jobs-per-device")


def main():
    if not (os.access(NLLMD, os.X_OK) and os.access(NLLMCTL, os.X_OK)):
        print("SKIP: %s or %s is not built" % (NLLMD, NLLMCTL))
        return 77
    tmp = tempfile.mkdtemp(prefix="nllm-multi-test-")
    try:
        data = os.path.join(tmp, "train.txt")
        corpus(data, 600, 1)
        bad_values(tmp)
        ref = one_per_device(tmp, data)
        two_per_device(tmp, data, ref)
        lifecycle(tmp, data)
    finally:
        if failed == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept " + tmp)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
