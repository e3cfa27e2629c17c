#!/usr/bin/python3
"""test_multidev.py -- one job on several devices inside nllmd (job key
num_devices: one thread and backend per rank, the threads comm between them),
through the real nllmd and nllmctl on the cpu device (ranks sharing it).

- A 2-device job records the validation losses of a 1-device job with the
  same global batch within 1e-5 relative (in practice about 1e-8: only the
  order of float sums differs), both ranks end with the same weights hash,
  and only one set of checkpoint files is written; extended once completed,
  it trains on from its final checkpoint on 2 devices.
- While a 2-device job runs: `status` (JSON: num_devices, devices, ranks with
  each rank's tokens/s; text: the ranks), `list` (cpu x2), /api/jobs/NAME,
  /api/daemon and /metrics (nllm_job_num_devices,
  nllm_job_rank_tokens_per_second{job_name,rank,device}, nllm_job_device_info)
  show its two devices.
- Pause mid-job, resume on 2 devices: exact, the validation losses of the
  uninterrupted 2-device run bit for bit; pause again, resume that checkpoint
  with --num-devices 1: it completes, the epochs before the pause are
  identical, the epoch it paused in agrees within 1e-5 and the rest stay
  close (Adam magnifies the order of float sums, as in test_dp).
- Refused with a clear error, the daemon serving on: num_devices 0, a batch
  that does not divide by num_devices (by nllmctl, and by nllmd for a raw
  start), more GPUs than the daemon has, GPUs it lacks.

Usage: test_multidev.py BUILD_DIR. Prints "N passed, M failed".
"""
import os
import random
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "reliability"))
import daemonlib as dl  # noqa: E402
import rlib  # noqa: E402  (msgpack-RPC: Conn)

BUILD, NLLMD, NLLMCTL = dl.programs()
check = dl.check

WORDS = ("Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi "
         "omicron pi rho sigma tau upsilon phi chi psi omega").split()
# test_dp's model: 2 ranks agree with 1 rank to about 1e-8 over 3 epochs
MODEL = ["--vocab", "20", "--embed-dim", "8", "--context-dim", "8", "--layers", "2",
         "--seq-len", "16", "--batch", "8", "--lr", "0.003", "--dropout", "0.2",
         "--device", "cpu", "--threads", "1", "--patience", "0"]


def text(path, lines, seed):
    rnd = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(lines):
            f.write(" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 30))) + "\n")


def rel(a, b):
    return max(abs(x - y) / abs(y) for x, y in zip(a, b)) if len(a) == len(b) and a else 1.0


def val_losses(d, job):
    return [e["val_loss"] for e in d.ctl("history", job).out["epochs"]]


def started_events(d, job):
    return d.events(job, "started")


def equivalence(d, data):
    """A 2-device job against a 1-device job with the same global batch."""
    job = data + MODEL + ["--hidden-dim", "64", "--epochs", "3"]
    d.ctl("start", "one", *job)
    st1 = d.wait_state("one", ["completed", "failed"])
    r = d.ctl("start", "two", *job, "--num-devices", "2")
    check(r.rc == 0 and r.out["config"]["num_devices"] == 2,
          "start --num-devices 2 is accepted", "%s %s" % (r.rc, r.err))
    st2 = d.wait_state("two", ["completed", "failed"])
    check(st1["state"] == "completed" and st2["state"] == "completed",
          "both jobs complete", "%s / %s: %s" % (st1["state"], st2["state"], st2.get("error")))
    v1, v2 = val_losses(d, "one"), val_losses(d, "two")
    check(len(v1) == 3 and rel(v2, v1) < 1e-5,
          "2 devices: the validation losses of 1 device within 1e-5 (%.1e)" % rel(v2, v1),
          "%s vs %s" % (v2, v1))
    ev = started_events(d, "two")
    check(ev and "2 data-parallel ranks sharing it" in ev[-1], "event started names the ranks",
          str(ev))
    ep = d.events("two", "epoch")
    comm = [re.search(r"gradient sums ([0-9.e+-]+) MB/step, ([0-9.]+) ms/step exposed; "
                      r"collectives ([0-9.]+)% of the time", e) for e in ep]
    check(len(ep) == 3 and all(comm) and not any("gradient sums" in e
                                                 for e in d.events("one", "epoch")),
          "epoch events of the 2-device job give the gradient sums and the collectives' "
          "share (1 device: none)", str(ep))
    hashes = re.findall(r"rank (\d) of 2: weights hash ([0-9a-f]{16})", d.log_text())
    check(len(hashes) == 2 and hashes[0][1] == hashes[1][1] and
          {r for r, _ in hashes} == {"0", "1"},
          "both ranks end with the same weights hash", str(hashes))
    names = lambda j: sorted(c["name"] for c in d.ctl("checkpoints", j).out["checkpoints"])
    check(names("two") == names("one"), "one set of checkpoints, as 1 device writes",
          "%s vs %s" % (names("two"), names("one")))
    check(d.final_hash("two") is not None, "the 2-device job's final checkpoint is recorded")
    # extend a completed 2-device job: it trains on from its final checkpoint
    r = d.ctl("extend", "two", "4")
    st = d.wait_for("two", lambda s: s["state"] in ("completed", "failed") and s["epoch"] == 4)
    v4 = val_losses(d, "two")
    check(r.rc == 0 and st["state"] == "completed" and len(v4) == 4 and v4[:3] == v2,
          "extend: the completed 2-device job trains a 4th epoch on 2 devices",
          "%s %s %s" % (r.err, st["state"], v4))
    ev = started_events(d, "two")
    check(len(ev) == 2 and "2 data-parallel ranks" in ev[-1], "extend runs on 2 devices again",
          str(ev))


def while_running(d, port, job):
    """status, list, /api and /metrics of a running 2-device job."""
    st = d.wait_for(job, lambda s: s["state"] == "running" and s["step"] > 3 and
                    all(r["tokens_per_s"] > 0 for r in s.get("ranks", [])) and
                    len(s.get("ranks", [])) == 2, timeout=120)
    check(st.get("num_devices") == 2 and st.get("devices") == ["cpu", "cpu"] and
          st.get("device") == "cpu", "status: num_devices 2, devices [cpu, cpu]",
          str({k: st.get(k) for k in ("state", "num_devices", "devices", "device")}))
    ranks = st.get("ranks") or []
    check([r["rank"] for r in ranks] == [0, 1] and all(r["device"] == "cpu" for r in ranks) and
          all(r["tokens_per_s"] > 0 for r in ranks),
          "status: each rank with its device and tokens/s", str(ranks))
    txt = d.ctl("status", job, json_out=False).out
    check("2 data-parallel ranks on cpu x2" in txt and re.search(r"rank 1: +cpu, [0-9.]+k? "
                                                                r"tokens/s", txt),
          "status text: the ranks and their throughput", txt[:900])
    ls = d.ctl("list", json_out=False).out
    check(re.search(r"^%s +running .* cpu x2 " % job, ls, re.M), "list: DEVICE cpu x2", ls)
    api = dl.http_json(port, "/api/jobs/" + job)
    check(api.get("num_devices") == 2 and api.get("devices") == ["cpu", "cpu"] and
          len(api.get("ranks", [])) == 2, "/api/jobs/%s: its devices and ranks" % job,
          str({k: api.get(k) for k in ("num_devices", "devices", "ranks")}))
    dm = dl.http_json(port, "/api/daemon")
    cpu = [v for v in dm["devices"] if v["name"] == "cpu"]
    check(cpu and job in cpu[0].get("jobs", []), "/api/daemon: the job on the cpu", str(cpu))
    _, samples = dl.parse_metrics(dl.http_get(port, "/metrics")[2].decode())
    r0 = dl.sample(samples, "nllm_job_rank_tokens_per_second", job_name=job, rank="0",
                   device="cpu")
    r1 = dl.sample(samples, "nllm_job_rank_tokens_per_second", job_name=job, rank="1",
                   device="cpu")
    check(r0 is not None and r1 is not None and r0 > 0 and r1 > 0,
          "/metrics: nllm_job_rank_tokens_per_second of rank 0 and 1 on cpu (%s, %s)" % (r0, r1))
    check(dl.sample(samples, "nllm_job_num_devices", job_name=job) == 2 and
          dl.sample(samples, "nllm_job_device_info", job_name=job, device="cpu") == 1,
          "/metrics: nllm_job_num_devices 2, nllm_job_device_info on cpu")
    check(dl.sample(samples, "nllm_device_jobs", device="cpu") == 1,
          "/metrics: the job takes one slot of the cpu")


def pause_mid(d, job, min_epoch):
    """Pauses job once it has finished min_epoch epochs and stepped on; the
    paused status."""
    st = d.wait_for(job, lambda s: s["state"] != "running" or
                    (s["epoch"] >= min_epoch and s["step"] >= 10), timeout=180)
    check(st["state"] == "running", "%s runs into epoch %d" % (job, min_epoch + 1),
          "%s: %s" % (st["state"], st.get("error")))
    r = d.ctl("pause", job)
    check(r.rc == 0, "pause %s" % job, r.err)
    st = d.wait_state(job, ["paused", "completed", "failed"])
    cks = {c["name"]: c for c in d.ctl("checkpoints", job).out["checkpoints"]}
    paused = cks.get("paused")
    spe = st["steps_per_epoch"]
    check(st["state"] == "paused" and paused and paused["step"] % spe != 0,
          "%s paused mid-epoch (step %s, %s steps an epoch)" % (job, paused and paused["step"], spe),
          "%s: %s" % (st["state"], st.get("error")))
    check(st.get("devices") is None and st.get("ranks") == [], "a paused job holds no device")
    return st


def pause_resume(d, port, data):
    """Pause and resume a 2-device job; resume its checkpoint on 1 device."""
    job = data + MODEL + ["--hidden-dim", "512", "--epochs", "5", "--save-every", "1"]
    d.ctl("start", "ref2", *job, "--num-devices", "2")
    while_running(d, port, "ref2")
    st = d.wait_state("ref2", ["completed", "failed"], timeout=300)
    check(st["state"] == "completed", "the uninterrupted 2-device run completes",
          str(st.get("error")))
    ref = val_losses(d, "ref2")

    d.ctl("start", "p", *job, "--num-devices", "2")
    pause_mid(d, "p", 1)
    r = d.ctl("resume", "p")
    check(r.rc == 0, "resume p (2 devices)", r.err)
    st = pause_mid(d, "p", 3)
    k = st["epoch"]
    r = d.ctl("resume", "p", "--num-devices", "1")
    check(r.rc == 0 and r.out["config"]["num_devices"] == 1,
          "resume p --num-devices 1 from its 2-device checkpoint", r.err)
    st = d.wait_state("p", ["completed", "failed"], timeout=300)
    check(st["state"] == "completed", "it completes on 1 device", str(st.get("error")))
    ev = started_events(d, "p")
    check(len(ev) == 3 and "2 data-parallel ranks" in ev[1] and "ranks" not in ev[2],
          "events: 2 devices, 2 devices, then 1", str(ev))
    v = val_losses(d, "p")
    check(len(v) == 5 and v[:k] == ref[:k],
          "the %d epochs before the second pause equal the uninterrupted run's bit for bit "
          "(the first pause and resume on 2 devices were exact)" % k, "%s vs %s" % (v, ref))
    check(rel(v[k:k + 1], ref[k:k + 1]) < 1e-5,
          "epoch %d, paused on 2 devices and finished on 1, within 1e-5 (%.1e)" %
          (k + 1, rel(v[k:k + 1], ref[k:k + 1])))
    check(rel(v, ref) < 1e-3, "all 5 epochs within 1e-3 of the uninterrupted run (%.1e)" %
          rel(v, ref))
    print("     resumed on 1 device: epoch %d within %.1e, all within %.1e" %
          (k + 1, rel(v[k:k + 1], ref[k:k + 1]), rel(v, ref)))
    r = d.ctl("verify", "p")
    check(r.rc == 0 and r.out["bad"] == 0, "every checkpoint of p verifies", str(r.out))


def refusals(d, data):
    """Bad num_devices and indivisible batches, by nllmctl and by nllmd."""
    job = data + MODEL + ["--hidden-dim", "64", "--epochs", "1"]
    r = d.ctl("start", "bad", *job, "--num-devices", "0", ok=False)
    check(r.rc == 2 and "num_devices = 0" in r.err and "1..64" in r.err,
          "nllmctl: num_devices 0 refused naming the field and 1..64", r.err)
    r = d.ctl("start", "bad", *job, "--batch", "7", "--num-devices", "2", ok=False)
    check(r.rc == 2 and "batch_size 7 does not divide by num_devices 2" in r.err and
          "multiple of 2 (such as 6 or 8)" in r.err,
          "nllmctl: batch 7 on 2 devices refused naming both and what to use", r.err)
    r = d.ctl("start", "bad", *job, "--gpus", "2", ok=False)
    check(r.rc == 1 and "job bad: it trains on 2 GPUs" in r.err and "has 0" in r.err,
          "nllmd: --gpus 2 without GPUs refused", r.err)
    r = d.ctl("start", "bad", *job, "--device", "cuda:0,cuda:1", ok=False)
    check(r.rc == 1 and "job bad: device cuda:0 is not one of this daemon's devices" in r.err,
          "nllmd: a list of GPUs it lacks refused", r.err)
    r = d.ctl("start", "bad", *job, "--device", "cuda:0", "--num-devices", "2", ok=False)
    check(r.rc == 2 and "device cuda:0 is one GPU but num_devices is 2" in r.err,
          "nllmctl: two ranks on one named GPU refused", r.err)
    # a raw start, past nllmctl's own checks
    c = rlib.Conn(d.sock)
    base = {"data": data[1], "val": data[3], "vocab_size": 20, "batch_size": 8,
            "device": "cpu"}
    e, _ = c.call("start", {"name": "bad", "config": dict(base, num_devices=3)})
    msg = (e or {}).get("message", "") if isinstance(e, dict) else str(e)
    check(e is not None and "job bad: batch_size 8 does not divide by num_devices 3" in msg and
          "multiple of 3" in msg, "nllmd: a raw start with batch 8 on 3 devices refused", msg)
    e, _ = c.call("start", {"name": "bad", "config": dict(base, num_devices=65)})
    msg = (e or {}).get("message", "") if isinstance(e, dict) else str(e)
    check(e is not None and "job bad: num_devices = 65 is out of range" in msg,
          "nllmd: a raw start with num_devices 65 refused", msg)
    c.close()
    check(d.ctl("hello").rc == 0 and d.status("bad")["state"] == "missing",
          "the daemon keeps serving; no job bad was made")


def run(tmp):
    train, val, small = (os.path.join(tmp, n) for n in ("train.txt", "val.txt", "small.txt"))
    text(small, 900, 5)
    text(val, 120, 6)
    text(train, 1800, 7)
    port = dl.free_port()
    with dl.Daemon(NLLMD, NLLMCTL, tmp, "d", ["--metrics", "127.0.0.1:%d" % port]) as d:
        equivalence(d, ["--data", small, "--val", val])
        refusals(d, ["--data", small, "--val", val])
        pause_resume(d, port, ["--data", train, "--val", val])
        check(d.shutdown() == 0, "shutdown: exit 0")
        check(dl.sanitizer_clean(d.log_text()), "no sanitizer report in the daemon's log")


if __name__ == "__main__":
    sys.exit(dl.main(run, "nllm-multidev-", NLLMD, NLLMCTL))
