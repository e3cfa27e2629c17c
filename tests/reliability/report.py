#!/usr/bin/python3
"""report.py -- the table of figures of the reliability campaigns, and
docs/reliability.md (from doc.md.in: prose by hand, figures filled in).

Reads OUT/{kill,powerloss,faults,access,load,soak,fuzz}.json (rlib.Results files).
Placeholders in doc.md.in: {{DATE}}, {{MACHINE}}, {{COMMIT}}, {{SUMMARY}},
{{FIGURES:name}} (every figure of a campaign), {{FIG:name:key}} (one value),
{{FAILURES}} (failed checks of this run, or "none").

Usage: report.py --out DIR [--mode full|quick|soak] [--doc PATH]
"""
import json
import os
import platform
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from rlib import arg  # noqa: E402

NAMES = ["kill", "powerloss", "faults", "access", "load", "soak", "fuzz"]
TITLES = {"kill": "1. kills", "powerloss": "2. power loss", "faults": "3. I/O faults",
          "access": "4. access", "load": "5. load", "soak": "5b. soak",
          "fuzz": "6. hostile input"}


def load(out):
    res = {}
    for n in NAMES:
        p = os.path.join(out, n + ".json")
        if os.path.exists(p):
            with open(p) as f:
                res[n] = json.load(f)
            res[n]["mtime"] = time.strftime("%Y-%m-%d %H:%M", time.localtime(os.path.getmtime(p)))
    return res


def g(r, k, default="-"):
    v = r.get("figures", {}).get(k, default)
    return default if v is None else v


def key_figures(n, r):
    if n == "kill":
        return ("%s kills (%s random, %s in the write window, %s at start-up); sweep %s kill "
                "points; %s ok rows verified, %s resumed from in a copy; committed lost %s; "
                "adopted %s" % (g(r, "kills"), g(r, "kills_random"), g(r, "kills_window"),
                                g(r, "kills_startup"), g(r, "sweep_trials"), g(r, "verified"),
                                g(r, "resume_each"),
                                _sum(r, "committed_lost", "sweep_committed_lost"),
                                _sum(r, "adopted", "sweep_adopted")))
    if n == "powerloss":
        return ("%s cycles, %s saves, %s crash images (%s rows checked), %s violations; "
                "3 mutations caught" % (g(r, "cycles"), g(r, "saves"), g(r, "images"),
                                        g(r, "rows_checked"), g(r, "violations")))
    if n == "faults":
        return "%s scenarios; full disk: %s" % (g(r, "scenarios"), g(r, "full_disk_restart"))
    if n == "access":
        return ("socket %s; %s/%s bad names refused; TCP calls served before auth: %s" % (
            g(r, "socket_mode"), g(r, "bad_names_refused"), g(r, "bad_names_tried"),
            g(r, "tcp_methods_served_before_auth")))
    if n == "load":
        return ("fixed rate %s req/s p50 %s / p99 %s ms, loss %s%%; flat out %s req/s p99 %s ms; "
                "steps per CPU-s %s -> %s; %s connect cycles, fd growth %s; stalled consumers "
                "dropped %s" % (g(r, "rate_req_per_s"), g(r, "rate_p50_ms"), g(r, "rate_p99_ms"),
                                g(r, "rate_tokens_per_s_loss_pct"), g(r, "fast_req_per_s"),
                                g(r, "fast_p99_ms"), g(r, "fast_steps_per_cpu_s_base"),
                                g(r, "fast_steps_per_cpu_s_load"), g(r, "churn_cycles"),
                                g(r, "churn_fd_growth"), g(r, "flood_dropped")))
    if n == "soak":
        return ("%s min, %s requests p99 %s ms, fds %s, VmRSS %s kB" % (
            g(r, "soak_minutes"), g(r, "soak_requests"), g(r, "soak_p99_ms"), g(r, "soak_fds"),
            g(r, "soak_rss_kb")))
    if n == "fuzz":
        return ("%s targets; ASan+UBSan: rpc %s, safetensors %s, ckpt %s, jobfile %s, http %s "
                "executions, peak RSS <= %s MB; under ulimit -v 256 MiB: %s each at least; "
                "%s crashes, %s leaks" % (
                    g(r, "targets"), g(r, "rpc_executions"),
                    g(r, "safetensors_executions"), g(r, "ckpt_executions"),
                    g(r, "jobfile_executions"), g(r, "http_executions"), g(r, "peak_rss_mb_max"),
                    min([v for k, v in r.get("figures", {}).items()
                         if k.startswith("as_") and k.endswith("_executions")] or ["-"]),
                    g(r, "crashes"), g(r, "leaks")))
    return ""


def _sum(r, *keys):
    t = 0
    for k in keys:
        v = r.get("figures", {}).get(k)
        if isinstance(v, (int, float)):
            t += v
    return t


def summary(res):
    rows = ["| campaign | run | checks | failed | seconds | figures |",
            "|---|---|---:|---:|---:|---|"]
    for n in NAMES:
        if n not in res:
            continue
        r = res[n]
        rows.append("| %s | %s | %d | %d | %s | %s |" % (
            TITLES[n], r["mtime"], r["checks"], len(r["failures"]), r["seconds"],
            key_figures(n, r)))
    return "\n".join(rows)


def figures(r):
    rows = ["| figure | value |", "|---|---|"]
    for k, v in r.get("figures", {}).items():
        if isinstance(v, (dict, list)):
            v = json.dumps(v)
        rows.append("| %s | %s |" % (k, str(v).replace("|", "\\|")))
    if r.get("notes"):
        rows.append("")
        rows += ["- " + s for s in r["notes"]]
    return "\n".join(rows)


def machine():
    def sh(cmd):
        try:
            return subprocess.run(cmd, shell=True, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except OSError:
            return ""
    cpu = sh("grep -m1 'model name' /proc/cpuinfo | cut -d: -f2").strip()
    mem = sh("awk '/MemTotal/ {printf \"%.1f GiB\", $2/1048576}' /proc/meminfo")
    osr = sh(". /etc/os-release 2>/dev/null && echo $PRETTY_NAME")
    fs = sh("stat -f -c %T /tmp")
    load = sh("cut -d' ' -f1-3 /proc/loadavg")
    sq = sh("sqlite3 --version | cut -d' ' -f1")
    return ("%s, %d CPUs (%s), %s RAM, kernel %s, /tmp on %s, SQLite %s, Python %s; "
            "load average %s when the report was made (other jobs share this machine)" % (
                osr, os.cpu_count(), cpu, mem, platform.release(), fs, sq,
                platform.python_version(), load))


def commit():
    try:
        h = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                           text=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "daemon", "tests/reliability"],
                               capture_output=True, text=True).stdout.strip()
        return h + (" + uncommitted changes in daemon/ and tests/reliability/" if dirty else "")
    except OSError:
        return "?"


def main():
    out = arg("--out", ".")
    mode = arg("--mode", "full")
    docpath = arg("--doc")
    res = load(out)
    print()
    print("nllm reliability campaigns (%s run; results in %s)" % (mode, out))
    w = max(len(TITLES[n]) for n in NAMES)
    fails = 0
    for n in NAMES:
        if n not in res:
            continue
        r = res[n]
        fails += len(r["failures"])
        print("%-*s  %5d checks %3d failed %6ss  %s" % (w, TITLES[n], r["checks"],
                                                       len(r["failures"]), r["seconds"],
                                                       key_figures(n, r)))
        for f in r["failures"][:10]:
            print("%*s  FAIL %s" % (w, "", f))
    if docpath:
        tpl_path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "doc.md.in")
        with open(tpl_path) as f:
            text = f.read()
        failures = [("%s: %s" % (n, x)) for n in NAMES if n in res for x in res[n]["failures"]]
        text = text.replace("{{DATE}}", time.strftime("%Y-%m-%d %H:%M %Z"))
        text = text.replace("{{MACHINE}}", machine())
        text = text.replace("{{COMMIT}}", commit())
        text = text.replace("{{SUMMARY}}", summary(res))
        text = text.replace("{{FAILURES}}", "\n".join("- " + x for x in failures) or "none")
        text = re.sub(r"\{\{FIGURES:(\w+)\}\}",
                      lambda m: figures(res[m.group(1)]) if m.group(1) in res else
                      "(not run yet)", text)
        text = re.sub(r"\{\{FIG:(\w+):(\w+)\}\}",
                      lambda m: str(g(res.get(m.group(1), {}), m.group(2))), text)
        with open(docpath, "w") as f:
            f.write(text)
        print("wrote " + docpath)
    return 1 if fails else 0


if __name__ == "__main__":
    sys.exit(main())
