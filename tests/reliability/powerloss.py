#!/usr/bin/python3
"""powerloss.py -- campaign 2 driver: runs the power-loss simulator
(powerloss.c, built by run.sh) on the real writer, then once per mutation
that the model must catch (a folder fsync or a file fsync left out, SQLite at
synchronous=NORMAL), and records the figures.

Usage: powerloss.py --bin PATH --out DIR [--cycles N] [--every K]
"""
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rlib  # noqa: E402
from rlib import arg  # noqa: E402


def run(binary, args):
    r = subprocess.run([binary] + args, capture_output=True, text=True, timeout=3600)
    line = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else "{}"
    try:
        return r.returncode, json.loads(line), r.stderr
    except ValueError:
        return r.returncode, {}, r.stderr + r.stdout


def main():
    R = rlib.Results("powerloss", arg("--out", "."))
    binary = arg("--bin")
    cycles = arg("--cycles", "100")
    every = arg("--every", "1")
    rc, f, err = run(binary, ["--cycles", cycles, "--every", every])
    R.check(rc == 0 and f.get("violations") == 0 and f.get("save_failures") == 0,
            "power loss at every durability point: %s violations (%s) %s" % (
                f.get("violations"), f.get("first_violation"), err.strip()[-300:]))
    R.check(f.get("cycles", 0) >= 100, "at least 100 save cycles (%s)" % f.get("cycles"))
    for k, v in f.items():
        R.fig(k, v)
    R.note("%s cycles, %s saves, %s durability events, %s crash images (%s strict, %s loose), "
           "%s rows checked: %s verified, %s replaced-not-recorded; %s violations" % (
               f.get("cycles"), f.get("saves"), f.get("events"), f.get("images"),
               f.get("strict"), f.get("loose"), f.get("rows_checked"), f.get("verified"),
               f.get("replaced_unrecorded"), f.get("violations")))
    mut = {}
    for m in ("nodirsync", "nofsync", "normal"):
        rc, g, err = run(binary, ["--cycles", "20", "--mutate", m])
        caught = rc == 0 and g.get("violations", 0) > 0
        R.check(caught, "mutation %s is caught by the model (%s violations)" % (
            m, g.get("violations")))
        mut[m] = "%s violations (%s)" % (g.get("violations"), (g.get("first_violation") or "")[:160])
    R.fig("mutations", mut)
    return R.save()


if __name__ == "__main__":
    sys.exit(main())
