#!/usr/bin/python3
"""compare.py -- nllm-bench against the PyTorch baseline (bench/torch_bench.py).

CPU (default, --device cpu): runs both on one config, alternating (nllm,
pytorch, nllm, ...) --repeats times so drift in machine load hits both alike,
then prints a table and the ratio of the median tokens/s (nllm / pytorch).
--precision bf16 runs both in bf16 (nllm on AMX tiles, PyTorch under
autocast) on CPUs with AMX-BF16.

GPU (--device cuda:N): for each batch of --batches (16,512,4096) and each
precision of --precisions (fp32,tf32,bf16) runs nllm-bench, PyTorch eager and
PyTorch with the whole step in a CUDA graph (torch_bench.py --graph),
alternating, --repeats times; then prints one table, rows batch x precision:
median tokens/s of each, nllm's TFLOP/s, and nllm / the best PyTorch variant
of the same precision. A run that fails, runs out of memory or passes
--timeout is reported as such in the table (stderr tail below it) and the
others still run; --budget caps the whole table's time. --json-out FILE
writes every run, the medians, the ratios, the GPU name, the date and the
config (rewritten after each run, so a cut-short session keeps what ran);
--json-out auto writes bench/results/<GPU name>.json.

Each benchmark prints one JSON line with at least tokens_per_s, gflops and
config; the last such line counts. Exit status: 0, or 1 when any run of the
GPU table failed (the table is printed all the same).
"""
import argparse
import datetime
import json
import os
import platform
import re
import shlex
import signal
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

# flag name -> default (the seed config of docs/model.md, 2 threads)
CONFIG = [("batch", 512), ("seq-len", 64), ("vocab", 1000), ("embed-dim", 256),
          ("hidden-dim", 512), ("context-dim", 512), ("layers", 12), ("dropout", 0.1),
          ("steps", 3), ("warmup", 1), ("threads", 2)]
# what --device cuda:N changes: several batches, more (and cheap) steps
CUDA_DEFAULTS = {"steps": 10, "warmup": 2}
CUDA_BATCHES = "16,512,4096"
PRECISIONS = ("fp32", "tf32", "bf16")
VARIANTS = ("nllm", "eager", "graph")
LABEL = {"nllm": "nllm", "eager": "torch eager", "graph": "torch graph"}
OOM_RE = re.compile(r"out of memory|OutOfMemoryError|CUDA_ERROR_OUT_OF_MEMORY|"
                    r"cudaErrorMemoryAllocation|CUBLAS_STATUS_ALLOC_FAILED", re.I)
TORCH_EXIT_OOM = 3   # torch_bench.py's status for an out-of-memory


def _csv(kind, allowed=None):
    def parse(s):
        items = [x.strip() for x in s.split(",") if x.strip()]
        if not items:
            raise argparse.ArgumentTypeError("empty list")
        if kind is int:
            try:
                items = [int(x) for x in items]
            except ValueError:
                raise argparse.ArgumentTypeError("not a list of integers: %r" % s)
            if min(items) < 1:
                raise argparse.ArgumentTypeError("batches must be >= 1")
        for x in items:
            if allowed and x not in allowed:
                raise argparse.ArgumentTypeError("%r is not one of %s" % (x, ", ".join(allowed)))
        return items
    return parse


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nllm-bench", default="build/nllm-bench", help="path of nllm-bench")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--torch-naive", action="store_true",
                    help="PyTorch literal per-position loop instead of the batched variant")
    ap.add_argument("--only", choices=["nllm", "pytorch"], help="run only one side")
    for name, dflt in CONFIG:
        ap.add_argument("--" + name, type=type(dflt), default=None,
                        help="default %s%s" % (dflt, " (%s on CUDA)" % CUDA_DEFAULTS[name]
                                               if name in CUDA_DEFAULTS else ""))
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="CPU: the precision of both sides (default fp32)")
    g = ap.add_argument_group("GPU table (--device cuda:N)")
    g.add_argument("--device", default="cpu", help="cpu (default) or cuda:N")
    g.add_argument("--batches", type=_csv(int), help="default %s (or --batch N)" % CUDA_BATCHES)
    g.add_argument("--precisions", type=_csv(str, PRECISIONS), default=list(PRECISIONS),
                   help="default fp32,tf32,bf16")
    g.add_argument("--variants", type=_csv(str, VARIANTS), default=list(VARIANTS),
                   help="default nllm,eager,graph")
    g.add_argument("--timeout", type=float, default=300.0, help="seconds per run (default 300)")
    g.add_argument("--budget", type=float, default=0.0,
                   help="seconds for the whole table: later runs are skipped, each run's "
                        "timeout is capped by what is left (default 0: no cap)")
    g.add_argument("--json-out", metavar="FILE",
                   help="write all results as JSON; 'auto': bench/results/<GPU name>.json")
    g.add_argument("--gpu-name", help="the GPU's name (default: nvidia-smi, else PyTorch's)")
    g.add_argument("--python", default=sys.executable,
                   help="interpreter for torch_bench.py (default: this one)")
    g.add_argument("--torch-bench", default=os.path.join(HERE, "torch_bench.py"),
                   help=argparse.SUPPRESS)
    g.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    a = ap.parse_args(argv)
    m = re.fullmatch(r"cpu|cuda(?::(\d+))?", a.device)
    if not m:
        ap.error("--device must be cpu or cuda:N, not %r" % a.device)
    if a.device == "cuda":
        a.device = "cuda:0"
    cuda = a.device != "cpu"
    if a.repeats < 1:
        ap.error("--repeats must be >= 1")
    if not cuda and a.batches is not None:
        ap.error("--batches is for --device cuda:N (on the CPU: --batch N)")
    if cuda and a.precision != "fp32":
        ap.error("--precision is for the CPU (on a GPU: --precisions LIST)")
    batch_given = a.batch is not None
    for name, dflt in CONFIG:
        attr = name.replace("-", "_")
        if getattr(a, attr) is None:
            setattr(a, attr, CUDA_DEFAULTS.get(name, dflt) if cuda else dflt)
    if cuda and a.batches is None:
        a.batches = [a.batch] if batch_given else _csv(int)(CUDA_BATCHES)
    if cuda:
        asked = a.variants
        if a.only == "nllm":
            a.variants = [v for v in asked if v == "nllm"]
        elif a.only == "pytorch":
            a.variants = [v for v in asked if v != "nllm"]
        if not a.variants:
            ap.error("--only %s leaves none of --variants %s" % (a.only, ",".join(asked)))
    return a


def bench_flags(a, batch=None):
    out = []
    for name, _ in CONFIG:
        v = getattr(a, name.replace("-", "_"))
        if name == "batch" and batch is not None:
            v = batch
        out += ["--" + name, str(v)]
    return out


def parse_result(stdout):
    """The last JSON line with tokens_per_s, or None."""
    for line in reversed(stdout.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                r = json.loads(line)
            except ValueError:
                continue
            if isinstance(r, dict) and "tokens_per_s" in r:
                return r
    return None


def quote(cmd):
    return " ".join(map(shlex.quote, cmd))


# ---- CPU: one config, both sides (as it always was) -------------------------------

def run_one(cmd):
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit("compare: `%s` exited with %d" % (quote(cmd), p.returncode))
    r = parse_result(p.stdout)
    if r is None:
        raise SystemExit("compare: no JSON result line with tokens_per_s from `%s`:\n%s"
                         % (quote(cmd), p.stdout[-2000:]))
    return r


def cpu_main(a):
    flags = bench_flags(a) + (["--precision", a.precision] if a.precision != "fp32" else [])
    sides = []
    if a.only != "pytorch":
        if not (os.path.isfile(a.nllm_bench) and os.access(a.nllm_bench, os.X_OK)):
            raise SystemExit("compare: %s is not an executable (build it, or pass "
                             "--nllm-bench PATH, or --only pytorch)" % a.nllm_bench)
        sides.append(("nllm", [a.nllm_bench] + flags))
    if a.only != "nllm":
        tcmd = [a.python, a.torch_bench] + flags
        if a.torch_naive:
            tcmd.append("--naive")
        sides.append(("pytorch", tcmd))

    print("config: " + " ".join(flags))
    if a.dry_run:
        for _, cmd in sides:
            print(quote(cmd))
        return 0
    print("%-4s %-8s %14s %10s %12s" % ("run", "impl", "tokens/s", "GFLOP/s", "step ms"))
    results = {name: [] for name, _ in sides}
    for rep in range(a.repeats):
        for name, cmd in sides:
            r = run_one(cmd)
            results[name].append(r)
            step_ms = r.get("step_ms_median")
            print("%-4d %-8s %14.1f %10.2f %12s" % (
                rep + 1, name, r["tokens_per_s"], r.get("gflops", float("nan")),
                "%.1f" % step_ms if isinstance(step_ms, (int, float)) else "-"), flush=True)

    med = {}
    for name, rs in results.items():
        med[name] = statistics.median(r["tokens_per_s"] for r in rs)
        gf = statistics.median(r.get("gflops", float("nan")) for r in rs)
        print("median %-8s %14.1f tokens/s %10.2f GFLOP/s" % (name, med[name], gf))
    ratio = None
    if "nllm" in med and "pytorch" in med and med["pytorch"] > 0:
        ratio = med["nllm"] / med["pytorch"]
        print("ratio nllm/pytorch (median tokens/s): %.3f" % ratio)
    if a.json_out:
        path = a.json_out if a.json_out != "auto" else os.path.join(ROOT, "bench", "results",
                                                                      "cpu.json")
        write_json(path, {"schema": 1, "tool": "bench/compare.py", "date": now_iso(),
                          "device": "cpu", "host": host_info(), "config": flags,
                          "runs": results, "median_tokens_per_s": med, "ratio": ratio})
        print("wrote %s" % path)
    return 0


# ---- GPU: batches x precisions x (nllm, eager, graph) ------------------------------

def run_cmd(cmd, timeout):
    """Runs cmd (its own process group, killed whole at the timeout). Returns a
    record: status ok | failed | oom | timeout | no-result | error, rc, seconds,
    result (the JSON line) and stderr_tail."""
    t0 = time.monotonic()
    rec = {"cmd": quote(cmd), "status": "error", "rc": None, "seconds": 0.0, "result": None,
           "stderr_tail": ""}
    try:
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             errors="replace", start_new_session=True)
    except OSError as e:
        rec["stderr_tail"] = "%s: %s" % (type(e).__name__, e)
        return rec
    timed_out = False
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            p.kill()
        try:
            out, err = p.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            out, err = "", "(no output: the process did not end after SIGKILL)"
    rec["seconds"] = round(time.monotonic() - t0, 3)
    rec["rc"] = p.returncode
    rec["stderr_tail"] = tail(err)
    if timed_out:
        rec["status"] = "timeout"
        rec["stderr_tail"] = tail(err + "\n(killed after %.0f s)" % timeout)
    elif p.returncode != 0:
        oom = p.returncode == TORCH_EXIT_OOM and "torch_bench" in (err or "")
        rec["status"] = "oom" if oom or OOM_RE.search(err or "") or OOM_RE.search(out or "") \
            else "failed"
        if not err.strip():
            rec["stderr_tail"] = tail(out)
    else:
        rec["result"] = parse_result(out)
        rec["status"] = "ok" if rec["result"] is not None else "no-result"
        if rec["result"] is None:
            rec["stderr_tail"] = tail(err + "\n(stdout) " + out)
    return rec


def tail(text, lines=14, chars=2400):
    """The end of a program's output, with its first lines where it is longer (a
    usage text after the error, or a traceback, buries the line that matters)."""
    ls = (text or "").rstrip().splitlines()
    if len(ls) > lines:
        ls = ls[:3] + ["... (%d lines)" % (len(ls) - lines + 1)] + ls[-(lines - 4):]
    t = "\n".join(ls)
    return t if len(t) <= chars else t[:chars // 3] + "\n...\n" + t[-(chars * 2 // 3):]


HEADLINE_RE = re.compile(r"error|nllm-bench:|torch_bench:|unrecognized|invalid|out of memory|"
                         r"killed after", re.I)


def headline(text):
    """The line of a failed run's output that says most: the last one that looks
    like an error, else the last one."""
    ls = [x.strip() for x in (text or "").splitlines() if x.strip()]
    hits = [x for x in ls if HEADLINE_RE.search(x)]
    return (hits or ls or [""])[-1]


def command(a, variant, batch, precision):
    flags = bench_flags(a, batch) + ["--device", a.device, "--precision", precision]
    if variant == "nllm":
        return [a.nllm_bench] + flags
    cmd = [a.python, a.torch_bench] + flags
    if a.torch_naive:
        cmd.append("--naive")
    if variant == "graph":
        cmd.append("--graph")
    return cmd


def plan(a):
    """The runs in order: per batch and precision, the variants alternate, --repeats times."""
    return [(b, p, rep, v) for b in a.batches for p in a.precisions
            for rep in range(a.repeats) for v in a.variants]


def median_of(rs, key):
    vals = [r[key] for r in rs if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None


def summarize(runs, batches, precisions, variants):
    """Table rows (batch x precision) from run records (batch, precision, variant,
    status, result): per variant the median of its successful runs and why the
    others failed; ratio = nllm / the best PyTorch variant of the same precision."""
    rows = []
    for b in batches:
        for p in precisions:
            row = {"batch": b, "precision": p}
            for v in variants:
                rs = [r for r in runs if (r["batch"], r["precision"], r["variant"]) == (b, p, v)]
                ok = [r["result"] for r in rs if r["status"] == "ok"]
                bad = [r["status"] for r in rs if r["status"] != "ok"]
                # a failure says more than a run skipped for --budget
                worst = ([x for x in bad if x != "skipped"] or bad or ["not-run"])[-1]
                cell = {"runs": len(rs), "ok": len(ok),
                        "status": ("ok" if not bad else "partial") if ok else worst,
                        "failures": bad}
                if ok:
                    cell["tokens_per_s"] = median_of(ok, "tokens_per_s")
                    cell["gflops"] = median_of(ok, "gflops")
                    cell["step_ms"] = median_of(ok, "step_ms_median")
                row[v] = cell
            torch_cells = [(row[v]["tokens_per_s"], v) for v in ("eager", "graph")
                           if v in row and row[v].get("tokens_per_s")]
            best = max(torch_cells) if torch_cells else None
            row["best_torch"] = best[1] if best else None
            nl = row.get("nllm", {}).get("tokens_per_s")
            row["ratio"] = nl / best[0] if nl and best else None
            rows.append(row)
    return rows


def cell_text(cell, key="tokens_per_s", scale=1.0, fmt="%.0f"):
    if cell is None:
        return "-"
    if cell.get(key) is None:
        return {"oom": "OOM", "timeout": "TIMEOUT", "failed": "FAILED", "no-result": "NO RESULT",
                "error": "ERROR", "skipped": "SKIPPED", "not-run": "-"}.get(
                    cell["status"], cell["status"].upper())
    s = fmt % (cell[key] * scale)
    if cell["status"] == "partial":
        s += " (%d/%d)" % (cell["ok"], cell["runs"])
    return s


def format_table(rows, variants):
    cols = [("batch", 6), ("prec", 5)]
    if "nllm" in variants:
        cols += [("nllm tok/s", 13), ("nllm TFLOP/s", 13)]
    for v in ("eager", "graph"):
        if v in variants:
            cols.append(("%s tok/s" % LABEL[v], 18))
    if "nllm" in variants and ("eager" in variants or "graph" in variants):
        cols.append(("nllm/best torch", 17))
    lines = ["  ".join("%*s" % (w, h) for h, w in cols)]
    for r in rows:
        vals = [str(r["batch"]), r["precision"]]
        if "nllm" in variants:
            nl = r.get("nllm")
            vals += [cell_text(nl), cell_text(nl, "gflops", 1e-3, "%.2f")
                     if nl and nl.get("gflops") is not None else "-"]
        for v in ("eager", "graph"):
            if v in variants:
                vals.append(cell_text(r.get(v)))
        if "nllm" in variants and ("eager" in variants or "graph" in variants):
            vals.append("%.2fx (%s)" % (r["ratio"], r["best_torch"]) if r["ratio"] else "-")
        lines.append("  ".join("%*s" % (w, x) for (_, w), x in zip(cols, vals)))
    return "\n".join(lines)


def format_failures(runs):
    out = []
    for r in runs:
        if r["status"] == "ok":
            continue
        out.append("batch %d %s %s, repeat %d: %s (rc %s, %.1f s): %s" % (
            r["batch"], r["precision"], LABEL[r["variant"]], r["repeat"] + 1, r["status"],
            r["rc"], r["seconds"], r["cmd"]))
        out += ["    | " + line for line in r["stderr_tail"].splitlines()]
    return "\n".join(out)


def nvidia_smi_name(device):
    """The GPU's name from nvidia-smi, or None. With CUDA_VISIBLE_DEVICES set the
    indices differ from nvidia-smi's: then only a single GPU's name is trusted."""
    idx = device.split(":")[1]
    cmd = ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"]
    if not os.environ.get("CUDA_VISIBLE_DEVICES"):
        cmd += ["-i", idx]
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                           timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    names = [x.strip() for x in p.stdout.splitlines() if x.strip()]
    if p.returncode != 0 or not names or (len(names) > 1 and "-i" not in cmd):
        return None
    return names[0]


def nllm_help_lacks_precision(path):
    """True when `path --help` works and does not mention --precision."""
    try:
        p = subprocess.run([path, "--help"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True, errors="replace", timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return p.returncode == 0 and "--precision" not in p.stdout


def slug(name):
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "unknown-gpu"


def now_iso():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def host_info():
    return {"python": platform.python_version(), "platform": platform.platform()}


def write_json(path, obj):
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
    os.replace(tmp, path)


def gpu_main(a, runner=run_cmd):
    runs_plan = plan(a)
    print("device %s, batches %s, precisions %s, variants %s, %d repeat(s): %d runs" % (
        a.device, ",".join(map(str, a.batches)), ",".join(a.precisions), ",".join(a.variants),
        a.repeats, len(runs_plan)))
    print("config: " + " ".join(bench_flags(a, "B")))
    if a.dry_run:
        for b, p, rep, v in runs_plan:
            print(quote(command(a, v, b, p)))
        return 0
    if "nllm" in a.variants:
        if not (os.path.isfile(a.nllm_bench) and os.access(a.nllm_bench, os.X_OK)):
            print("compare: WARNING: %s is not an executable: its runs will fail (build it "
                  "with -Dcuda=enabled, or pass --nllm-bench PATH)" % a.nllm_bench, flush=True)
        elif nllm_help_lacks_precision(a.nllm_bench):
            print("compare: WARNING: %s --help names no --precision flag: its runs may fail "
                  "(build the nllm branch that has it)" % a.nllm_bench, flush=True)
    gpu = a.gpu_name or nvidia_smi_name(a.device)
    gpu_source = "flag" if a.gpu_name else ("nvidia-smi" if gpu else None)
    state = {"written": None}
    t_start = time.monotonic()
    started = now_iso()
    runs = []

    def save(complete):
        nonlocal gpu, gpu_source
        if not gpu:
            for r in runs:
                name = (r["result"] or {}).get("gpu_name")
                if name:
                    gpu, gpu_source = name, "torch"
                    break
        if not a.json_out:
            return None
        path = a.json_out
        if path == "auto":
            path = os.path.join(ROOT, "bench", "results", slug(gpu or "unknown-gpu") + ".json")
        rows = summarize(runs, a.batches, a.precisions, a.variants)
        write_json(path, {
            "schema": 1, "tool": "bench/compare.py", "date": started,
            "finished": now_iso() if complete else None, "complete": complete,
            "elapsed_s": round(time.monotonic() - t_start, 1),
            "gpu_name": gpu, "gpu_name_source": gpu_source, "device": a.device,
            "host": host_info(),
            "config": {"model": {n.replace("-", "_"): getattr(a, n.replace("-", "_"))
                                 for n, _ in CONFIG if n != "batch"},
                       "batches": a.batches, "precisions": a.precisions,
                       "variants": a.variants, "repeats": a.repeats, "timeout_s": a.timeout,
                       "budget_s": a.budget, "torch_naive": a.torch_naive,
                       "nllm_bench": a.nllm_bench, "python": a.python},
            "table": rows, "runs": runs})
        if state["written"] and state["written"] != path and os.path.exists(state["written"]):
            os.remove(state["written"])   # the GPU's name became known after the first write
        state["written"] = path
        return path

    for i, (b, p, rep, v) in enumerate(runs_plan):
        cmd = command(a, v, b, p)
        elapsed = time.monotonic() - t_start
        timeout = a.timeout
        if a.budget > 0:
            timeout = min(timeout, a.budget - elapsed)
        if timeout < 1:
            rec = {"cmd": quote(cmd), "status": "skipped", "rc": None, "seconds": 0.0,
                   "result": None, "stderr_tail": "(--budget %.0f s spent)" % a.budget}
        else:
            rec = runner(cmd, timeout)
        rec.update({"batch": b, "precision": p, "variant": v, "repeat": rep})
        runs.append(rec)
        r = rec["result"]
        if rec["status"] == "ok":
            what = "%12.1f tok/s %8.3f TFLOP/s %9.2f ms/step" % (
                r["tokens_per_s"], (r.get("gflops") or 0) / 1e3, r.get("step_ms_median") or 0)
        else:
            what = "%-9s rc %s: %s" % (rec["status"].upper(), rec["rc"],
                                       headline(rec["stderr_tail"])[:120])
        print("[%6.1f s] %3d/%d batch %-5d %s #%d %-11s %s  (%.1f s)" % (
            time.monotonic() - t_start, i + 1, len(runs_plan), b, p, rep + 1, LABEL[v], what,
            rec["seconds"]), flush=True)
        save(False)

    rows = summarize(runs, a.batches, a.precisions, a.variants)
    print()
    print("== %s, %s, median of %d repeat(s), %s ==" % (
        gpu or "GPU name unknown", a.device, a.repeats, now_iso()))
    print(format_table(rows, a.variants))
    fails = format_failures(runs)
    if fails:
        print("\nfailed runs:\n" + fails)
    path = save(True)
    if path:
        print("\nwrote %s" % path)
    return 1 if fails else 0


def main(argv=None, runner=run_cmd):
    a = parse_args(argv)
    if a.device == "cpu":
        return cpu_main(a)
    return gpu_main(a, runner)


if __name__ == "__main__":
    sys.exit(main())
