#!/usr/bin/python3
"""fuzz.py -- campaign 6: hostile input. Runs every libFuzzer target of
tests/fuzz/ (clang, ASan+UBSan, 256 MiB RSS and single-allocation limits:
see tests/fuzz/run.sh) for RUNS executions each, in two groups at once (one
per CPU, each in its own build folder), and records executions, exec/s,
crashes, leaks and peak RSS per target.

The named hostile cases (dd ff 00 00 00, 4 GiB str32/bin32, nesting 33 deep,
counts past the end, every prefix of a real checkpoint) are unit tests in
tests/test_hostile.c (meson suite proto), run by scripts/test.sh.

Usage: fuzz.py --out DIR [--runs N] [--seconds S]
  --runs N     executions per target (default 1000000; the issue asks 10^6)
  --seconds S  or a time per target instead (0 = no limit)
Exit status 77 when clang cannot build a fuzzer.
"""
import os
import re
import subprocess
import sys
import threading

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rlib import Results, arg  # noqa: E402

SRC = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
# about equal time per group at the exec rates of tests/fuzz/run.sh
GROUPS = [["rpc", "safetensors", "jobfile"], ["http", "ckpt"]]
ROW = re.compile(r"^(\w+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\d+)\s+(\S+) MB\s+(ok|FAIL)$")


def run_group(targets, i, secs, runs, outdir, res):
    env = dict(os.environ, FUZZ_TARGETS=" ".join(targets),
               FUZZ_OUT=os.path.join(SRC, "build-fuzz" if i == 0 else "build-fuzz%d" % i))
    cmd = [os.path.join(SRC, "tests", "fuzz", "run.sh"), str(secs)] + ([str(runs)] if runs else [])
    with open(os.path.join(outdir, "fuzz-group%d.log" % i), "w") as log:
        p = subprocess.run(cmd, cwd=SRC, env=env, stdout=subprocess.PIPE, stderr=log, text=True)
    res[i] = (p.returncode, p.stdout)


def main():
    out = arg("--out", ".")
    runs = int(arg("--runs", "1000000"))
    secs = int(arg("--seconds", "0"))
    if secs:
        runs = 0
    if subprocess.run([os.path.join(SRC, "tests", "fuzz", "run.sh"), "--available"]).returncode:
        print("fuzz.py: clang with libFuzzer not found (apt-get install clang llvm "
              "libclang-rt-14-dev): skipped")
        return 77
    R = Results("fuzz", out)
    res = {}
    ths = [threading.Thread(target=run_group, args=(g, i, secs, runs, out, res))
           for i, g in enumerate(GROUPS)]
    for t in ths:
        t.start()
    for t in ths:
        t.join()
    seen, total = {}, 0
    for i, g in enumerate(GROUPS):
        rc, text = res[i]
        print(text, end="", flush=True)
        R.check(rc == 0, "group %s: tests/fuzz/run.sh exit %d (log: %s/fuzz-group%d.log)" % (
            " ".join(g), rc, out, i))
        for line in text.splitlines():
            m = ROW.match(line.strip())
            if m:
                t = m.group(1)
                seen[t] = {"executions": int(m.group(2)), "exec_per_s": int(m.group(3)),
                           "crashes": int(m.group(4)), "leaks": int(m.group(5)),
                           "peak_rss_mb": int(m.group(6)) if m.group(6).isdigit() else None}
    for g in GROUPS:
        for t in g:
            f = seen.get(t)
            if not R.check(f is not None, "%s: a result row" % t):
                continue
            total += f["executions"]
            for k, v in f.items():
                R.fig("%s_%s" % (t, k), v)
            if runs:
                R.check(f["executions"] >= runs, "%s: %d executions (>= %d)" % (
                    t, f["executions"], runs))
            R.check(f["crashes"] == 0, "%s: 0 crashes, OOMs or timeouts (%d)" % (t, f["crashes"]))
            R.check(f["leaks"] == 0, "%s: 0 leaks (%d)" % (t, f["leaks"]))
            R.check(f["peak_rss_mb"] is not None and f["peak_rss_mb"] <= 256,
                    "%s: peak RSS %s MB <= 256" % (t, f["peak_rss_mb"]))
            R.note("%s: %d executions, %d/s, %d crashes, %d leaks, peak RSS %s MB" % (
                t, f["executions"], f["exec_per_s"], f["crashes"], f["leaks"],
                f["peak_rss_mb"]))
    R.fig("targets", len(seen))
    R.fig("executions", total)
    R.fig("crashes", sum(f["crashes"] for f in seen.values()))
    R.fig("leaks", sum(f["leaks"] for f in seen.values()))
    R.fig("peak_rss_mb_max", max([f["peak_rss_mb"] or 0 for f in seen.values()] + [0]))
    R.fig("limits", "-rss_limit_mb=256 -malloc_limit_mb=256 -timeout=20, ASan+UBSan")
    return R.save()


if __name__ == "__main__":
    sys.exit(main())
