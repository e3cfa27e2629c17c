#!/usr/bin/python3
"""test_cpu_bf16.py -- precision bf16 on the cpu (AMX tiles, kernels/cpu/
bf16_gemm.c) end to end: the real nllmd driven by the real nllmctl.

Everywhere: hello lists the cpu's precisions (JSON, and nllmctl's text:
the PRECISIONS column, a "cpu bf16:" line), and they follow its kernels
(bf16 exactly where bf16_gemm is reported). A cpu without bf16 (a CPU
without AMX-BF16, or NLLM_CPU_BF16=off, as here): `start --precision bf16`
and `nllmd run --precision bf16` are refused, the message naming the job,
the device, fp32 and why (the kernels' note), and nothing is created. On a
CPU with AMX-BF16:
 - a bf16 job trains to completion, status and events show bf16, its
   validation loss is within 5% of the same job in fp32, and its weights
   are not fp32's (the products really ran in bf16);
 - the same job again, on 2 threads instead of 1: the same final weights,
   bit for bit (deterministic, whatever the thread count);
 - 2 epochs, then `extend` to 4: the same final weights as 4 straight
   (exact resume in bf16, through the checkpoint);
 - an fp32 job resumed with --precision bf16: event config_changed says
   "precision: was fp32, now bf16", and it completes in bf16;
 - `nllmd run --precision bf16` trains in the foreground and exits 0.

Usage: test_cpu_bf16.py BUILD_DIR   (meson passes it).
"""
import os
import re
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemonlib as dl  # noqa: E402

BUILD, NLLMD, NLLMCTL = dl.programs()
check = dl.check
# small, but every product spans several 16 x 32 tiles
MODEL = ["--vocab", "60", "--embed-dim", "32", "--hidden-dim", "48", "--context-dim", "32",
         "--layers", "2", "--seq-len", "16", "--batch", "16", "--lr", "0.003",
         "--dropout", "0.1", "--save-every", "2", "--threads", "1"]


def last_val(d, job):
    return d.ctl("history", job)[1]["epochs"][-1]["val_loss"]


def refusals(tmp, job):
    """A cpu without bf16 (here: turned off by NLLM_CPU_BF16=off, as a CPU
    without AMX-BF16 would be) refuses it, saying why; nothing is made."""
    sub = os.path.join(tmp, "off")
    os.makedirs(sub)
    off = {"NLLM_CPU_BF16": "off"}
    d = dl.Daemon(NLLMD, NLLMCTL, sub, env=off)
    cpu = d.ctl("hello")[1]["devices"][0]
    note = cpu["kernels"]["bf16_note"] or ""
    check(cpu["precisions"] == ["fp32"] and cpu["kernels"]["bf16_gemm"] is None and
          "NLLM_CPU_BF16=off" in note, "hello without bf16: %s, note %s"
          % (cpu["precisions"], note))
    text = d.ctl("hello", json_out=False).out
    check(re.search(r"^  cpu +cpu +.* fp32$", text, re.M) and "cpu bf16: none (%s)" % note in text,
          "nllmctl hello (text) shows fp32 only and why there is no bf16:\n%s" % text)
    rc, _, err = d.ctl("start", "b", "--device", "cpu", "--precision", "bf16", *job, ok=False)
    check(rc == 1 and "job b" in err and "device cpu" in err and "fp32 only" in err and
          note in err, "start --precision bf16 refused, saying why: %s" % err.strip())
    check(d.ctl("status", "b", ok=False)[0] == 1 and
          not os.path.exists(os.path.join(d.state, "jobs", "b")),
          "the refused job does not exist")
    check(d.shutdown() == 0, "shutdown")
    state = os.path.join(sub, "run-state")
    r = subprocess.run([NLLMD, "run", "--state-dir", state, "b", "--devices", "cpu",
                        "--precision", "bf16"] + job, capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, **off))
    check(r.returncode == 1 and "job b" in r.stderr and note in r.stderr and
          not os.path.exists(os.path.join(state, "jobs", "b")),
          "nllmd run --precision bf16 refused, exit 1: %s" % r.stderr.strip()[-300:])


def run(tmp):
    data = os.path.join(tmp, "train.txt")
    val = os.path.join(tmp, "val.txt")
    dl.corpus(data, 900, 1)
    dl.corpus(val, 120, 2)
    job = ["--data", data, "--val", val] + MODEL
    refusals(tmp, job)
    d = dl.Daemon(NLLMD, NLLMCTL, tmp)
    cpu = d.ctl("hello")[1]["devices"][0]
    k = cpu["kernels"]
    check(cpu["precisions"] == (["fp32", "bf16"] if k["bf16_gemm"] else ["fp32"]),
          "hello: the cpu's precisions %s follow its kernels (bf16_gemm %s, note %s)"
          % (cpu["precisions"], k["bf16_gemm"], k["bf16_note"]))
    text = d.ctl("hello", json_out=False).out
    if k["bf16_gemm"]:
        check(re.search(r"^  cpu +cpu +.* fp32,bf16$", text, re.M) and
              "cpu bf16: products on amx-bf16 tiles" in text,
              "nllmctl hello (text) shows fp32,bf16 and the tiles:\n%s" % text)
    if not k["bf16_gemm"]:
        print("no bf16 on this CPU (%s): the refusals are what can be tested" % k["bf16_note"])
        check(d.shutdown() == 0, "shutdown")
        return

    def train(name, *extra, epochs=4):
        rc, _, err = d.ctl("start", name, "--epochs", str(epochs), *(job + list(extra)))
        check(rc == 0, "start %s (%s)" % (name, err.strip()))
        st = d.wait_state(name, ["completed", "failed", "stopped"], 300)
        check(st["state"] == "completed", "%s completed (%s: %s)"
              % (name, st["state"], st["error"]))
        return st

    st = train("b", "--precision", "bf16")
    started = d.events("b", "started")
    check(st["precision"] == "bf16" and started and "precision bf16" in started[0],
          "status and the started event show bf16 (%s; %s)" % (st["precision"], started))
    train("f", "--precision", "fp32")
    vb, vf = last_val(d, "b"), last_val(d, "f")
    check(abs(vb - vf) <= 0.05 * vf,
          "bf16's validation loss is within 5%% of fp32's (%.4f vs %.4f)" % (vb, vf))
    hb, hf = d.final_hash("b"), d.final_hash("f")
    check(hb and hf and hb != hf, "bf16 and fp32 end with different weights")

    train("b2", "--precision", "bf16", "--threads", "2")
    check(d.final_hash("b2") == hb, "the same bf16 job on 2 threads: the same final weights")

    train("half", "--precision", "bf16", epochs=2)
    rc, _, err = d.ctl("extend", "half", "4")
    check(rc == 0, "extend half to 4 (%s)" % err.strip())
    st = d.wait_state("half", ["completed", "failed"], 300)
    check(st["state"] == "completed" and st["epoch"] == 4 and d.final_hash("half") == hb,
          "2 epochs + extend to 4 in bf16: the weights of 4 straight (%s, epoch %s)"
          % (st["state"], st["epoch"]))

    train("mix", "--precision", "fp32", epochs=2)
    rc, _, err = d.ctl("resume", "mix", "--epochs", "3", "--precision", "bf16")
    check(rc == 0, "resume mix --precision bf16 (%s)" % err.strip())
    st = d.wait_state("mix", ["completed", "failed"], 300)
    changed = d.events("mix", "config_changed")
    check(st["state"] == "completed" and st["precision"] == "bf16" and
          any("precision: was fp32, now bf16" in m for m in changed),
          "an fp32 job resumed in bf16 completes; config_changed says so (%s)" % changed)
    check(d.shutdown() == 0, "shutdown")

    state = os.path.join(tmp, "run-state")
    r = subprocess.run([NLLMD, "run", "--state-dir", state, "once", "--devices", "cpu",
                        "--precision", "bf16", "--epochs", "1"] + job,
                       capture_output=True, text=True, timeout=300)
    check(r.returncode == 0 and "Epoch 1/1" in r.stdout,
          "nllmd run --precision bf16: trains, exit 0 (%d %s)"
          % (r.returncode, r.stderr.strip()[-300:]))


if __name__ == "__main__":
    sys.exit(dl.main(run, "nllm-cpu-bf16-test-", NLLMD, NLLMCTL))
