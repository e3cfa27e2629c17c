#!/usr/bin/python3
"""test_device_fault.py -- device faults (on_device_fault, device health,
`nllmctl device reset`) end to end: the real nllmd driven by the real
nllmctl, on cpu.

A job's backend is made to fault with the backends' test hook
NLLM_BACKEND_FAULT=device@sync:N[:K] (backend.h): from its Nth sync on,
every sync fails with a sticky NLLM_EDEVICE, as a GPU's ECC error or
illegal address does. Checks:
 - requeue (the default), one fault in epoch 2: the attempt ends with the
   injected error in status (error, device_faults 1, queued, attempt 2) and
   events (device_fault, requeued from epoch_1); the checkpoints still
   verify; hello and /api/daemon show cpu unhealthy with the fault, /metrics
   nllm_device_healthy{device="cpu"} 0 and a fault counted; a new job stays
   queued (no healthy device) while the daemon answers; `device reset`
   refuses an unknown device, then puts cpu back: both jobs run, the
   requeued one from epoch_1, a reset is refused while a job runs there,
   and both complete, the requeued one with the weights of a run that
   never faulted;
 - on_device_fault = fail (--set): the job fails at the first fault, the
   injected error and the policy in its error, the device unhealthy;
 - a fault at every run: requeued 3 times (NLLMD_MAX_FAULT_REQUEUES), each
   after a reset, then failed with "its 3 requeues ... are used up";
 - a bad on_device_fault value is refused by start, naming the key;
 - `nllmd run`: a requeue after a fault ends the run with 75 (nobody is
   there to reset the device); `--resume`, a restart, completes the job.

Usage: test_device_fault.py BUILD_DIR   (meson passes it).
"""
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemonlib as dl  # noqa: E402

BUILD, NLLMD, NLLMCTL = dl.programs()
check = dl.check
SMALL = dl.SMALL + ["--save-every", "1"]
SYNC = 500  # in epoch 2: an epoch is 337 steps (a sync each) and a validation


def metrics(port):
    return dl.http_get(port, "/metrics")[2].decode()


def daemon(tmp, fault, port):
    os.makedirs(tmp)
    return dl.Daemon(NLLMD, NLLMCTL, tmp, args=["--metrics", "127.0.0.1:%d" % port],
                     env={"NLLM_BACKEND_FAULT": fault})


def cpu_dev(obj):
    return [v for v in obj["devices"] if v["name"] == "cpu"][0]


def healthy_metric(port):
    m = re.search(r'^nllm_device_healthy\{device="cpu",kind="cpu"\} (\d+)$',
                  metrics(port), re.M)
    return int(m.group(1)) if m else None


def run(tmp):
    data = os.path.join(tmp, "train.txt")
    dl.corpus(data, 1500, 1)

    # --- requeue: one fault in epoch 2 ---
    port = dl.free_port()
    d = daemon(os.path.join(tmp, "once"), "device@sync:%d:1" % SYNC, port)
    rc, _, err = d.ctl("start", "a", "--data", data, "--epochs", "3", *SMALL)
    check(rc == 0, "start a (%s)" % err.strip())
    st = d.wait_for("a", lambda s: s.get("device_faults", 0) >= 1
                    or s["state"] in ("completed", "failed"), 300)
    e = st["error"] or ""
    check(st["state"] == "queued" and st["device_faults"] == 1 and st["attempt"] == 2
          and "injected device fault" in e and "device cpu" in e and st["device"] is None,
          "the attempt ended with the device error; queued again (%s, attempt %s: %s)"
          % (st["state"], st["attempt"], e))
    df, rq = d.events("a", "device_fault"), d.events("a", "requeued")
    check(len(df) == 1 and "injected device fault" in df[0]
          and "nllmctl device reset cpu" in df[0], "event device_fault (%s)" % df)
    check(len(rq) == 1 and "epoch_1" in rq[0] and "requeue 1 of 3" in rq[0],
          "event requeued names epoch_1 and 1 of 3 (%s)" % rq)
    rc, v, err = d.ctl("verify", "a")
    check(rc == 0 and v["bad"] == 0 and v["checked"] >= 2,
          "the job's checkpoints still verify (%s %s)" % (rc, v or err.strip()))
    cks = d.ctl("checkpoints", "a")[1]
    check(cks and {c["name"] for c in cks["checkpoints"]} == {"best", "epoch_1"}
          and all(c["epoch"] == 1 for c in cks["checkpoints"]),
          "only the checkpoints of epoch 1 were written before the fault (%s)"
          % [c["name"] for c in (cks or {}).get("checkpoints", [])])
    h = d.ctl("hello")[1]
    dv = cpu_dev(h)
    check(dv["healthy"] is False and "injected device fault" in (dv["fault"] or "")
          and dv["fault_job"] == "a" and dv["faults"] == 1,
          "hello: cpu unhealthy with the fault (%s)" % dv)
    api = dl.http_json(port, "/api/daemon")
    check(cpu_dev(api)["healthy"] is False, "/api/daemon: cpu unhealthy")
    check(healthy_metric(port) == 0, "/metrics: nllm_device_healthy{device=\"cpu\"} 0")
    check(re.search(r'^nllm_device_faults_total\{device="cpu",kind="cpu"\} 1$',
                    metrics(port), re.M) is not None,
          "/metrics: nllm_device_faults_total 1")
    txt = d.ctl("hello", json_out=False).out
    check("device cpu is UNHEALTHY" in txt and "nllmctl device reset cpu" in txt,
          "nllmctl hello says cpu is unhealthy and how to reset it")
    d.ctl("start", "b", "--data", data, "--epochs", "1", *SMALL)
    time.sleep(1.0)
    check(d.status("b")["state"] == "queued" and d.status("a")["state"] == "queued",
          "no job is placed on the unhealthy device: a and b stay queued")
    check(d.ctl("hello")[0] == 0, "the daemon still answers")
    rc, _, err = d.ctl("device", "reset", "cuda:7", ok=False)
    check(rc == 1 and "no device" in err and "cpu" in err,
          "device reset of a device nllmd lacks: refused (%s)" % err.strip())
    rc, r, err = d.ctl("device", "reset", "cpu")
    check(rc == 0 and r["was_healthy"] is False and "injected" in (r["fault"] or ""),
          "device reset cpu (%s)" % (r or err))
    st = d.wait_for("a", lambda s: s["state"] != "queued", 60)
    rc, _, err = d.ctl("device", "reset", "cpu", ok=False)
    check(rc == 1 and "runs" in err and "pause or stop" in err,
          "device reset refused while jobs run on it (%s)" % err.strip())
    check(cpu_dev(d.ctl("hello")[1])["healthy"] is True and healthy_metric(port) == 1,
          "after the reset: cpu healthy in hello and /metrics")
    st = d.wait_state("a", ["completed", "failed"], 300)
    check(st["state"] == "completed" and st["error"] is None,
          "a completed after the requeue (%s: %s)" % (st["state"], st["error"]))
    started = d.events("a", "started")
    check(len(started) == 2 and "from epoch_1" in started[1],
          "the second attempt started from epoch_1 (%s)" % started)
    st = d.wait_state("b", ["completed", "failed"], 300)
    check(st["state"] == "completed", "b ran after the reset and completed")
    # the requeue is a resume: the same weights as a run that never faulted
    d.ctl("start", "ref", "--data", data, "--epochs", "3", *SMALL)
    d.wait_state("ref", ["completed", "failed"], 300)
    check(d.final_hash("a") == d.final_hash("ref"),
          "a's final weights equal those of a run without a fault (%s %s)"
          % (d.final_hash("a"), d.final_hash("ref")))
    d.shutdown()

    # --- a fault at every run (no K) ---
    port = dl.free_port()
    d = daemon(os.path.join(tmp, "always"), "device@sync:40", port)
    d.ctl("start", "ff", "--data", data, "--epochs", "1", "--set", "on_device_fault=fail",
          *SMALL)
    st = d.wait_state("ff", ["completed", "failed"], 120)
    e = st["error"] or ""
    check(st["state"] == "failed" and "injected device fault" in e
          and "on_device_fault is fail" in e and st["device_faults"] == 1
          and not d.events("ff", "requeued"),
          "on_device_fault fail: failed at the first fault (%s: %s)" % (st["state"], e))
    check(cpu_dev(d.ctl("hello")[1])["healthy"] is False, "the device is unhealthy too")
    check(re.search(r'^nllm_job_error_info\{job_name="ff",code="EDEVICE"\} 1$',
                    metrics(port), re.M) is not None,
          "/metrics: nllm_job_error_info{code=\"EDEVICE\"} for the failed job")
    d.ctl("start", "rq", "--data", data, "--epochs", "1", *SMALL)
    time.sleep(0.5)
    check(d.status("rq")["state"] == "queued", "rq waits for a healthy device")
    for k in range(1, 5):
        d.ctl("device", "reset", "cpu")
        st = d.wait_for("rq", lambda s: s.get("device_faults", 0) >= k
                        or s["state"] in ("completed", "failed"), 120)
    e = st["error"] or ""
    check(st["state"] == "failed" and st["device_faults"] == 4
          and "its 3 requeues after device faults are used up" in e
          and len(d.events("rq", "requeued")) == 3
          and all("from the start" in m for m in d.events("rq", "requeued")),
          "failed after 3 requeues from the start (%s: %s)" % (st["state"], e))
    check(cpu_dev(d.ctl("hello")[1])["faults"] == 5, "5 faults counted on cpu")
    rc, _, err = d.ctl("start", "bad", "--data", data, "--set", "on_device_fault=retry",
                       *SMALL, ok=False)
    check(rc == 2 and "on_device_fault" in err and "requeue or fail" in err,
          "on_device_fault retry refused, naming the key (%s)" % err.strip())
    d.shutdown()

    # --- nllmd run: a requeue ends the run with 75; --resume (a restart) completes ---
    st_dir = os.path.join(tmp, "oneshot")
    run1 = [NLLMD, "run", "--state-dir", st_dir, "os", "--data", data, "--epochs", "1",
            "--vocab_size", "30", "--embed_dim", "8", "--hidden_dim", "16", "--context_dim",
            "8", "--num_layers", "2", "--max_seq_length", "16", "--batch_size", "4",
            "--threads", "1"]
    env = dict(os.environ, NLLM_BACKEND_FAULT="device@sync:40:1")
    r = subprocess.run(run1, capture_output=True, text=True, timeout=120, env=env)
    check(r.returncode == 75 and "injected device fault" in r.stdout,
          "nllmd run: a device fault with requeue exits 75 (%d)" % r.returncode)
    r = subprocess.run([NLLMD, "run", "--state-dir", st_dir, "os", "--resume"],
                       capture_output=True, text=True, timeout=120)
    check(r.returncode == 0 and "State: completed" in r.stdout,
          "nllmd run --resume after the restart completes (%d)" % r.returncode)


if __name__ == "__main__":
    sys.exit(dl.main(run, "nllm-device-fault-test-", NLLMD, NLLMCTL))
