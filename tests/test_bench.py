#!/usr/bin/python3
"""test_bench.py -- bench/compare.py and bench/torch_bench.py without a GPU.

compare.py: the GPU table (--device cuda:0) run end to end against two fake
benchmarks (small Python scripts standing in for nllm-bench and
torch_bench.py) that succeed, fail, run out of memory, print no result or
hang, by batch and precision: every run is reported, the medians, ratios
(nllm / best PyTorch variant of the same precision), the table text, the
failure tails, --json-out (auto naming once the GPU name is known, rewritten
after each run), --timeout, --budget and the exit status; the CPU mode
against the same fakes.

torch_bench.py (skipped without python3-torch): the flags refused on the CPU
(tf32, bf16, --graph) and without CUDA, the CPU JSON line (device, precision,
graph fields), and the CUDA code path (eager and --graph, fp32 and bf16) run
on the CPU through a stand-in for torch.cuda: warm-up on a side stream,
capture, replays, timings and the JSON line.

dp_bench.py: a tiny job as 1 rank x 1 thread and 2 MPI ranks x 1 thread
through the real nllmd and mpirun (not run without them).

Usage: test_bench.py [BUILD]. Prints "N passed, M failed"; exit 0 or 1.
"""
import contextlib
import io
import json
import os
import stat
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.join(HERE, "..", "bench")
sys.path.insert(0, BENCH)
sys.path.insert(0, HERE)
import compare  # noqa: E402
import daemonlib as dl  # noqa: E402

check = dl.check


FAKE_COMMON = r'''
import json, sys, time
args = sys.argv[1:]
def opt(name, default=None):
    return args[args.index(name) + 1] if name in args else default
b = int(opt("--batch", "512")); p = opt("--precision", "fp32")
mult = {"fp32": 1, "tf32": 2, "bf16": 3}[p]
'''

FAKE_NLLM = "#!%s\n" % sys.executable + FAKE_COMMON + r'''
if "--help" in args:
    print("usage: nllm-bench [options]\n  --precision P  fp32, tf32 or bf16"); sys.exit(0)
if b == 4096 and p == "bf16":
    sys.stderr.write("nllm-bench: cudaMalloc: out of memory\n"); sys.exit(1)
tps = b * 300.0 * mult
print(json.dumps({"impl": "nllm", "device": opt("--device"), "tokens_per_s": tps,
                  "gflops": tps * 27.45e6 / 1e9, "step_ms_median": 1.0}))
'''

FAKE_TORCH = FAKE_COMMON + r'''
g = "--graph" in args
if b == 16 and p == "bf16" and not g:
    sys.stderr.write("Traceback (most recent call last):\n  File x\nRuntimeError: boom\n")
    sys.exit(1)
if b == 512 and p == "tf32" and g:
    sys.stderr.write("capturing...\n"); sys.stderr.flush(); time.sleep(60)
if b == 4096 and p == "fp32" and g:
    sys.stderr.write("torch_bench: out of memory on cuda:0 (batch 4096, fp32, graph): x\n")
    sys.exit(3)
if b == 4096 and p == "tf32" and not g:
    print("no json here"); sys.exit(0)
tps = b * 100.0 * mult * (2 if g else 1)
print("a warning line")
print(json.dumps({"impl": "pytorch", "device": opt("--device", "cpu"), "precision": p,
                  "graph": g, "tokens_per_s": tps, "gflops": tps * 27.45e6 / 1e9,
                  "step_ms_median": 2.0, "gpu_name": "Fake H200"}))
'''


def write(path, text, exe=False):
    with open(path, "w") as f:
        f.write(text)
    if exe:
        os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return path


def run_compare(argv):
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = compare.main(argv)
    return rc, out.getvalue()


def test_compare(tmp):
    nllm = write(os.path.join(tmp, "fake-nllm-bench"), FAKE_NLLM, exe=True)
    torchb = write(os.path.join(tmp, "fake_torch_bench.py"), FAKE_TORCH)
    fakes = ["--nllm-bench", nllm, "--torch-bench", torchb, "--python", sys.executable]

    # ---- the GPU table ----
    compare.ROOT = tmp                        # --json-out auto -> tmp/bench/results/
    compare.nvidia_smi_name = lambda device: None   # the name comes from the runs
    rc, out = run_compare(["--device", "cuda:0", "--repeats", "2", "--timeout", "2",
                           "--json-out", "auto"] + fakes)
    results = os.path.join(tmp, "bench", "results")
    check(rc == 1, "GPU table: exit 1 when runs failed (got %s)" % rc)
    check(sorted(os.listdir(results)) == ["Fake-H200.json"],
          "--json-out auto: bench/results/Fake-H200.json only (%s)" % os.listdir(results))
    with open(os.path.join(results, "Fake-H200.json")) as f:
        d = json.load(f)
    check(d["complete"] and d["gpu_name"] == "Fake H200" and d["gpu_name_source"] == "torch"
          and d["device"] == "cuda:0" and d["date"] and d["finished"],
          "JSON: complete, GPU name from the runs, device, dates")
    check(len(d["runs"]) == 3 * 3 * 3 * 2, "JSON: 54 runs (3 batches x 3 precisions x 3 "
          "variants x 2 repeats), got %d" % len(d["runs"]))
    check(d["config"]["batches"] == [16, 512, 4096] and d["config"]["precisions"] ==
          ["fp32", "tf32", "bf16"] and d["config"]["model"]["steps"] == 10 and
          d["config"]["model"]["warmup"] == 2 and d["config"]["timeout_s"] == 2,
          "JSON: config (CUDA defaults: batches, precisions, --steps 10 --warmup 2)")
    runs = {(r["batch"], r["precision"], r["variant"], r["repeat"]): r for r in d["runs"]}
    first = d["runs"][:3]
    check([(r["variant"], r["repeat"]) for r in first] == [("nllm", 0), ("eager", 0),
                                                           ("graph", 0)],
          "runs alternate nllm, eager, graph within each repeat")
    nl = runs[(16, "fp32", "nllm", 0)]
    check("--device cuda:0 --precision fp32" in nl["cmd"] and "--batch 16 " in nl["cmd"]
          and "--steps 10 --warmup 2" in nl["cmd"], "nllm-bench gets --device and --precision")
    gr = runs[(512, "bf16", "graph", 1)]
    check(gr["cmd"].endswith("--precision bf16 --graph") and gr["status"] == "ok",
          "torch graph run gets --graph")
    want = {(4096, "bf16", "nllm"): "oom", (16, "bf16", "eager"): "failed",
            (512, "tf32", "graph"): "timeout", (4096, "fp32", "graph"): "oom",
            (4096, "tf32", "eager"): "no-result"}
    for (b, p, v), st in want.items():
        got = [runs[(b, p, v, rep)]["status"] for rep in (0, 1)]
        check(got == [st, st], "batch %d %s %s: %s (got %s)" % (b, p, v, st, got))
    check(sum(r["status"] != "ok" for r in d["runs"]) == 10,
          "every other run ok (%d not ok)" % sum(r["status"] != "ok" for r in d["runs"]))
    to = runs[(512, "tf32", "graph", 0)]
    check(1.5 < to["seconds"] < 20 and "capturing..." in to["stderr_tail"]
          and "killed after" in to["stderr_tail"],
          "timeout: killed after --timeout, partial stderr kept (%.1f s)" % to["seconds"])
    check("RuntimeError: boom" in runs[(16, "bf16", "eager", 0)]["stderr_tail"],
          "failure: stderr tail kept")
    check("no json here" in runs[(4096, "tf32", "eager", 0)]["stderr_tail"],
          "no result line: stdout kept")
    rows = {(r["batch"], r["precision"]): r for r in d["table"]}
    check(len(d["table"]) == 9, "JSON table: 9 rows (batch x precision)")
    exp = {(16, "fp32"): (1.5, "graph"), (16, "bf16"): (1.5, "graph"),
           (4096, "fp32"): (3.0, "eager"), (512, "tf32"): (3.0, "eager"),
           (4096, "tf32"): (1.5, "graph"), (4096, "bf16"): (None, "graph")}
    for key, (ratio, best) in exp.items():
        r = rows[key]
        okr = (r["ratio"] is None) if ratio is None else abs(r["ratio"] - ratio) < 1e-9
        check(okr and r["best_torch"] == best, "ratio %s: %s best %s (got %s, %s)" % (
            key, ratio, best, r["ratio"], r["best_torch"]))
    c = rows[(512, "fp32")]["nllm"]
    check(c["tokens_per_s"] == 512 * 300.0 and c["ok"] == 2 and c["runs"] == 2
          and abs(c["gflops"] - 512 * 300.0 * 27.45e-3) < 1e-6, "medians of a cell")
    check(rows[(4096, "bf16")]["nllm"]["status"] == "oom" and
          "tokens_per_s" not in rows[(4096, "bf16")]["nllm"], "failed cell: status, no figure")
    table = out[out.index("== Fake H200"):]
    lines = table.splitlines()
    check("nllm tok/s" in lines[1] and "nllm TFLOP/s" in lines[1] and "torch eager tok/s"
          in lines[1] and "torch graph tok/s" in lines[1] and "nllm/best torch" in lines[1],
          "table header")
    row = [x for x in lines if x.split()[:2] == ["4096", "bf16"]][0]
    check(row.split()[2:4] == ["OOM", "-"] and row.split()[-1] == "-",
          "table: OOM cell, no TFLOP/s, no ratio: %r" % row)
    row = [x for x in lines if x.split()[:2] == ["16", "fp32"]][0]
    check(row.split() == ["16", "fp32", "4800", "0.13", "1600", "3200", "1.50x", "(graph)"],
          "table: figures and ratio: %r" % row)
    row = [x for x in lines if x.split()[:2] == ["512", "tf32"]][0]
    check("TIMEOUT" in row and "3.00x (eager)" in row, "table: TIMEOUT cell: %r" % row)
    check("failed runs:" in table and "batch 16 bf16 torch eager, repeat 1: failed (rc 1"
          in table and "    | RuntimeError: boom" in table, "failures listed with their tails")
    check(out.count("/54 batch") == 54 and "OOM       rc 3: torch_bench: out of memory" in out,
          "a progress line per run")

    # ---- --budget: the runs after it are skipped, the one under way is cut ----
    rc, out = run_compare(["--device", "cuda:0", "--batches", "512", "--precisions", "tf32",
                           "--variants", "nllm,graph", "--repeats", "2", "--budget", "3",
                           "--json-out", os.path.join(tmp, "b.json")] + fakes)
    with open(os.path.join(tmp, "b.json")) as f:
        d = json.load(f)
    got = [r["status"] for r in d["runs"]]
    check(rc == 1 and got == ["ok", "timeout", "skipped", "skipped"],
          "--budget: ok, cut, skipped, skipped (got %s)" % got)
    row = [x for x in out.splitlines() if x.split()[:2] == ["512", "tf32"]][0]
    check(d["table"][0]["graph"]["status"] == "timeout" and "TIMEOUT" in row
          and d["table"][0]["nllm"]["status"] == "partial" and "(1/2)" in row,
          "--budget: the cells read TIMEOUT (not SKIPPED) and 1 of 2: %r" % row)

    # ---- everything ok: exit 0; --only, --batch, dry run ----
    rc, out = run_compare(["--device", "cuda:0", "--batch", "64", "--precisions", "fp32",
                           "--repeats", "1"] + fakes)
    check(rc == 0 and "failed runs" not in out and "1.50x (graph)" in out,
          "all ok: exit 0, --batch N is a one-batch table")
    rc, out = run_compare(["--device", "cuda:0", "--only", "pytorch", "--repeats", "1",
                           "--dry-run"] + fakes)
    check(rc == 0 and out.count("fake_torch_bench.py") == 18 and "fake-nllm" not in out,
          "--only pytorch --dry-run: 18 commands, none of nllm")

    # ---- the CPU mode, as before ----
    rc, out = run_compare(["--batch", "8", "--repeats", "2"] + fakes)
    check(rc == 0 and "ratio nllm/pytorch (median tokens/s): 3.000" in out
          and "--steps 3 --warmup 1" in out and "--device" not in out,
          "CPU mode: both sides, ratio of medians, CPU defaults, no --device")
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            compare.main(["--batches", "16,512"] + fakes)
        check(False, "CPU mode refuses --batches")
    except SystemExit as e:
        check(e.code == 2, "CPU mode refuses --batches")


class FakeStream:
    def __init__(self, device=None):
        pass

    def wait_stream(self, other):
        pass


class FakeGraph:
    def __init__(self):
        self.captured = False
        self.replays = 0

    def replay(self):
        self.replays += 1


class FakeCuda:
    """What torch_bench.run_device needs of torch.cuda, on the CPU."""
    Stream = FakeStream
    CUDAGraph = FakeGraph

    def __init__(self):
        self.graphs = []
        self.syncs = 0
        self.side = 0

    def current_stream(self, device=None):
        return FakeStream()

    @contextlib.contextmanager
    def stream(self, s):
        self.side += 1
        yield

    @contextlib.contextmanager
    def graph(self, g, **kw):
        g.captured = True
        self.graphs.append(g)
        yield

    def synchronize(self, device=None):
        self.syncs += 1

    def reset_peak_memory_stats(self, device=None):
        pass

    def max_memory_allocated(self, device=None):
        return 5 * 2**20


def test_torch_bench():
    try:
        import torch
        import torch_bench as tb
    except ImportError as e:
        print("SKIP  torch_bench.py: PyTorch not available (%s)" % e)
        return
    tiny = ["--batch", "4", "--seq-len", "8", "--vocab", "50", "--embed-dim", "8",
            "--hidden-dim", "16", "--context-dim", "8", "--layers", "2", "--steps", "3",
            "--warmup", "1", "--threads", "1"]
    for extra, what in ((["--precision", "tf32"], "tf32"),
                        (["--graph"], "--graph"), (["--device", "tpu"], "--device tpu")):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                tb.main(tiny + extra)
            check(False, "CPU refuses %s" % what)
        except SystemExit as e:
            check(e.code == 2 and ("needs --device cuda" in err.getvalue() or
                                   "cpu or cuda:N" in err.getvalue()),
                  "CPU refuses %s: %s" % (what, err.getvalue().strip().splitlines()[-1]))
    if not torch.cuda.is_available():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            rc = tb.main(tiny + ["--device", "cuda:0", "--graph"])
        check(rc == 2 and "CUDA is not available" in err.getvalue(),
              "no CUDA: exit 2, %s" % err.getvalue().strip())
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = tb.main(tiny)
    r = json.loads(out.getvalue())
    check(rc == 0 and r["device"] == "cpu" and r["precision"] == "fp32" and r["graph"] is False
          and len(r["step_ms"]) == 3 and r["tokens_per_s"] > 0 and r["config"]["batch"] == 4,
          "CPU JSON line: device, precision, graph, timings")
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        rc = tb.main(tiny + ["--precision", "bf16"])
    r = json.loads(out.getvalue())
    check(rc == 0 and r["device"] == "cpu" and r["precision"] == "bf16" and
          r["autocast"] == "bfloat16" and 0 < r["final_loss"] < 10 and r["tokens_per_s"] > 0,
          "CPU bf16 (autocast): %s, loss %s" % (r["precision"], r["final_loss"]))

    # the CUDA path's control flow on the CPU
    for prec in ("fp32", "bf16"):
        for graph in (False, True):
            a = tb.parse_args(tiny)
            a.precision, a.graph = prec, graph
            cu = FakeCuda()
            torch.manual_seed(a.seed)
            times, loss, extra = tb.run_device(a, torch.device("cpu"), cu)
            r = json.loads(json.dumps(tb.result(a, times, loss, extra)))
            name = "CUDA path on the CPU, %s%s" % (prec, " graph" if graph else " eager")
            ok = len(times) == 3 and 2.0 < loss < 6.0 and r["mem_peak_mib"] == 5.0
            if graph:
                g = cu.graphs[0] if cu.graphs else None
                ok = ok and len(cu.graphs) == 1 and g.captured and g.replays == 1 + 3 \
                    and cu.side == 1 and r["graph_eager_warmup"] == 3 and "capture_ms" in r \
                    and r["graph"] is True
            else:
                ok = ok and not cu.graphs and cu.syncs == 2 * 4
            check(ok, "%s: %d steps, loss %.3f, %s" % (name, len(times), loss, sorted(extra)))
    # the precision switches themselves work on any build
    check(tb.set_tf32(True) is True and tb.tf32_enabled() and tb.set_tf32(False) is False
          and not tb.tf32_enabled(), "set_tf32 on and off, read back")


def test_dp_bench(tmp):
    """dp_bench.py end to end on a tiny job: real nllmd run under real
    mpirun, both layouts reported with a positive rate, ratio 1 for the
    first, --json-out holding every run."""
    import shutil
    import subprocess
    _, nllmd, _ = dl.programs()
    if not shutil.which("mpirun") or not os.access(nllmd, os.X_OK):
        print("note: dp_bench.py not run (no mpirun or no nllmd at %s)" % nllmd)
        return
    text = os.path.join(tmp, "dp.txt")
    words = "the cat sat on a mat while dogs ran far away from home".split()
    with open(text, "w") as f:
        f.write(" ".join(words[(i * 7) % len(words)] for i in range(6000)) + "\n")
    out = os.path.join(tmp, "dp.json")
    env = dict(os.environ, TMPDIR=tmp)
    if env.get("ASAN_OPTIONS") is not None or env.get("NLLM_TEST_SANITIZED"):
        env["ASAN_OPTIONS"] = ":".join([o for o in env.get("ASAN_OPTIONS", "").split(":")
                                        if o and not o.startswith("detect_leaks=")] +
                                       ["detect_leaks=0"])  # Open MPI's own allocations
    r = subprocess.run(["/usr/bin/python3", os.path.join(BENCH, "dp_bench.py"), "--nllmd", nllmd,
                        "--data", text, "--layouts", "1x1,2x1", "--batch", "8", "--seq-len", "8",
                        "--windows", "64", "--repeats", "1", "--json-out", out, "--",
                        "--vocab", "20", "--embed-dim", "8", "--hidden-dim", "16",
                        "--context-dim", "8", "--layers", "1"],
                       capture_output=True, text=True, timeout=300, env=env)
    check(r.returncode == 0, "dp_bench.py: a 1x1 and a 2x1 run complete (exit %d: %s)" %
          (r.returncode, (r.stdout + r.stderr)[-600:]))
    if r.returncode != 0:
        return
    rows = [l.split() for l in r.stdout.splitlines() if l[:1].isdigit()]
    check(len(rows) == 2 and rows[0][:3] == ["1", "x", "1"] and rows[1][:3] == ["2", "x", "1"]
          and float(rows[0][4]) == 1.0 and float(rows[1][3]) > 0,
          "dp_bench.py: one row per layout, the first the base (%s)" % r.stdout)
    # the model above: 1196 floats (E 160, W1 272, Wo 340, 3 heads 408, norm 16), so
    # at least 4784 bytes are summed per step; 1 rank sums nothing
    check(len(rows) == 2 and rows[0][5:8] == ["-", "-", "-"]
          and 0.0047 < float(rows[1][5]) < 0.006 and float(rows[1][6]) >= 0
          and 0 <= float(rows[1][7]) <= 100,
          "dp_bench.py: the 2-rank row has the gradient sums' MB/step, exposed ms/step and "
          "collectives' share, the 1-rank row none (%s)" % r.stdout)
    j = json.load(open(out))
    check([(x["ranks"], x["threads"], len(x["tokens_per_s"])) for x in j["runs"]] ==
          [(1, 1, 1), (2, 1, 1)] and j["batch"] == 8 and j["runs"][0]["comm"] == []
          and len(j["runs"][1]["comm"]) == 1,
          "dp_bench.py --json-out: every run (%s)" % j)


def main():
    with tempfile.TemporaryDirectory(prefix="nllm-test-bench-") as tmp:
        test_compare(tmp)
        test_dp_bench(tmp)
    test_torch_bench()
    return dl.report()


if __name__ == "__main__":
    sys.exit(main())
