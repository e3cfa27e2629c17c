#!/usr/bin/python3
"""test_divergence.py -- divergence handling (on_divergence) end to end: the
real nllmd driven by the real nllmctl, on cpu.

A step is made to diverge deterministically with the trainer's test hook
NLLM_TRAINER_FAULT=diverge@step:N[:K] (trainer.h): that step's gradient norm
is really NaN, so the device skips its update. (A large learning rate with
clipping off does not do it reliably here: at lr 10, the most allowed, the
small model's norm stays finite.) Checks:
 - default rollback, one divergence: events `diverged` and `rolled_back`
   (step, norm, checkpoint epoch_1, lr 0.003 -> 0.0015, rollback 1 of 3),
   status shows the halved lr and attempt 2, the job completes, and its final
   weights equal those of a job trained one epoch, then resumed with
   --lr 0.0015 (a rollback is a resume);
 - a divergence at every pass: fails after 3 rollbacks, the error listing the
   4 divergences with step, norm and lr, the lr in status 0.003/8;
 - no checkpoint yet (the divergence inside epoch 1): rollbacks go to the
   start (the seed), then fail;
 - on_divergence = fail (flag) and divergence_retries 0 (--set): fail at the
   first divergence, no rollback;
 - a bad divergence_lr_factor is refused by start, naming the key and range.

Usage: test_divergence.py BUILD_DIR   (meson passes it).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemonlib as dl  # noqa: E402

BUILD, NLLMD, NLLMCTL = dl.programs()
check = dl.check
SMALL = dl.SMALL + ["--save-every", "1"]
STEP = 400  # in epoch 2: 337 steps per epoch with this corpus and batch 4


def daemon(tmp, fault):
    os.makedirs(tmp)
    return dl.Daemon(NLLMD, NLLMCTL, tmp, env={"NLLM_TRAINER_FAULT": fault})


def run(tmp):
    data = os.path.join(tmp, "train.txt")
    dl.corpus(data, 1500, 1)

    # --- one divergence: rolled back, completes; equal to a manual resume ---
    d = daemon(os.path.join(tmp, "once"), "diverge@step:%d:1" % STEP)
    rc, _, err = d.ctl("start", "rb", "--data", data, "--epochs", "3", *SMALL)
    check(rc == 0, "start rb (%s)" % err.strip())
    st = d.wait_state("rb", ["completed", "failed"], 300)
    check(st["state"] == "completed", "rb completed after a rollback (%s: %s)"
          % (st["state"], st["error"]))
    div = d.events("rb", "diverged")
    rb = d.events("rb", "rolled_back")
    check(len(div) == 1 and "step %d" % STEP in div[0] and "nan" in div[0]
          and "lr 0.003" in div[0], "event diverged names step, norm and lr (%s)" % div)
    check(len(rb) == 1 and "epoch_1" in rb[0] and "0.003 -> 0.0015" in rb[0]
          and "1 of 3" in rb[0] and "step 337" in rb[0],
          "event rolled_back names the checkpoint, the lr change and 1 of 3 (%s)" % rb)
    check(st["config"]["learning_rate"] == 0.0015 and st["attempt"] == 2
          and st["divergences"] == 1,
          "status: learning_rate 0.0015, attempt 2 (%s, %s)"
          % (st["config"]["learning_rate"], st["attempt"]))
    check(any("learning_rate" in m for m in d.events("rb", "config_changed")),
          "the lr change is recorded as a resume's config change")
    # the same by hand (the hook is used up): 1 epoch, then resume at lr/2
    d.ctl("start", "man", "--data", data, "--epochs", "1", *SMALL)
    d.wait_state("man", ["completed", "failed"], 300)
    d.ctl("resume", "man", "epoch_1", "--epochs", "3", "--lr", "0.0015")
    st2 = d.wait_state("man", ["completed", "failed"], 300)
    check(st2["state"] == "completed" and d.final_hash("rb") == d.final_hash("man"),
          "rolled-back job's final weights equal a resume from epoch_1 at lr 0.0015 (%s %s)"
          % (d.final_hash("rb"), d.final_hash("man")))
    hist = d.ctl("history", "rb")[1]
    check(hist is not None and [r["epoch"] for r in hist.get("epochs", [])] == [1, 2, 3],
          "history of rb: epochs 1, 2, 3 on the current line (%s)" % (hist or {}).get("epochs"))
    d.shutdown()

    # --- a divergence at every pass ---
    d = daemon(os.path.join(tmp, "always"), "diverge@step:%d" % STEP)
    d.ctl("start", "dv", "--data", data, "--epochs", "3", *SMALL)
    st = d.wait_state("dv", ["completed", "failed"], 300)
    e = st["error"] or ""
    check(st["state"] == "failed", "dv failed after its rollbacks (%s)" % st["state"])
    check("4 times" in e and "its 3 rollbacks (divergence_retries) are used up" in e and
          all(("%d: step %d, gradient norm nan, lr %s" % (k + 1, STEP, lr)) in e
              for k, lr in enumerate(["0.003", "0.0015", "0.00075", "0.000375"])),
          "the error lists the 4 divergences with step, norm and lr: %s" % e)
    check(len(d.events("dv", "rolled_back")) == 3 and len(d.events("dv", "diverged")) == 4,
          "3 rolled_back and 4 diverged events")
    check(st["config"]["learning_rate"] == 0.003 / 8 and st["divergences"] == 4,
          "status: lr 0.003/8, divergences 4 (%s, %s)"
          % (st["config"]["learning_rate"], st["divergences"]))
    txt = d.ctl("status", "dv", json_out=False).out
    check("divergences:     4" in txt and "on_divergence" in txt
          and "divergence_retries" in txt, "nllmctl status shows divergences and the keys")

    # no checkpoint yet: batch 1 gives 1350 steps per epoch, step 400 is in epoch 1
    d.ctl("start", "early", "--data", data, "--epochs", "1", *(SMALL + ["--batch", "1"]))
    st = d.wait_state("early", ["completed", "failed"], 300)
    rb = d.events("early", "rolled_back")
    check(st["state"] == "failed" and len(rb) == 3 and all("from the start" in m for m in rb),
          "without a checkpoint the rollbacks go to the start, then the job fails (%s)" % rb)

    # on_divergence = fail, divergence_retries 0
    d.ctl("start", "ff", "--data", data, "--epochs", "3", "--on-divergence", "fail", *SMALL)
    st = d.wait_state("ff", ["completed", "failed"], 300)
    check(st["state"] == "failed" and (st["error"] or "").startswith("epoch 2 step")
          and "training diverged: gradient norm is nan at step %d" % STEP in st["error"]
          and not d.events("ff", "rolled_back") and st["attempt"] == 1,
          "on_divergence fail: fails at once as before (%s)" % st["error"])
    d.ctl("start", "r0", "--data", data, "--epochs", "3", "--set", "divergence_retries=0",
          *SMALL)
    st = d.wait_state("r0", ["completed", "failed"], 300)
    check(st["state"] == "failed" and "divergence_retries is 0" in (st["error"] or "")
          and "1: step %d" % STEP in st["error"] and not d.events("r0", "rolled_back"),
          "divergence_retries 0: fails at the first divergence (%s)" % st["error"])

    rc, _, err = d.ctl("start", "bad", "--data", data, "--set", "divergence_lr_factor=1",
                       *SMALL, ok=False)
    check(rc == 2 and "divergence_lr_factor" in err and "(0, 1)" in err,
          "divergence_lr_factor 1 refused, naming the key and range (%s)" % err.strip())
    d.shutdown()


if __name__ == "__main__":
    sys.exit(dl.main(run, "nllm-divergence-test-", NLLMD, NLLMCTL))
