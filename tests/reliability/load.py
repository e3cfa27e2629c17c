#!/usr/bin/python3
"""load.py -- campaign 5: load and soak against a daemon with a training job.

  - 64 concurrent clients on persistent connections issue status / list /
    checkpoints, first as fast as they can (closed loop), then at a fixed rate
    (10 requests/s each, latency measured from the scheduled send time); each
    mode alternates with no-load windows, and the job's training rate
    (global_step/s, as tokens/s) under load is compared with the windows
    around it. Latency p50/p99/max per mode.
  - connect/disconnect cycles (hello, or a half-sent request, or closing
    before the reply), 10^5 (--quick: 10^4).
  - stalled consumers: 4 connections that `watch` the job and never read, kept
    for the whole run; then 4 that also pipeline requests without reading,
    which nllmd must drop once their write queue passes its bound (4 MiB).
  - nllmd's open fds (/proc/PID/fd) and VmRSS before and after; the longest
    time global_step stood still (a 10 ms poller), in each phase.
--soak MINUTES: fixed-rate load for that long with bursts of connect/disconnect
cycles and stalled consumers every 30 s, fds/RSS sampled every 30 s.

Usage: load.py --out DIR [--quick] [--soak MINUTES]
"""
import multiprocessing as mp
import os
import random
import resource
import selectors
import socket
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rlib  # noqa: E402
from rlib import Daemon, arg, percentile  # noqa: E402

QUICK = "--quick" in sys.argv
NCLIENTS = 64
NPROC = 4


# ---------------------------------------------------------------- clients


def client_proc(sock, job, nconn, seconds, rate, seed, q):
    """nconn persistent connections on one selector; rate 0 = as fast as possible."""
    rnd = random.Random(seed)
    reqs = [rlib.request_bytes(7, "status", {"name": job}), rlib.request_bytes(7, "list", {}),
            rlib.request_bytes(7, "checkpoints", {"name": job})]
    sel = selectors.DefaultSelector()
    conns = []
    for i in range(nconn):
        s = socket.socket(socket.AF_UNIX)
        s.connect(sock)
        s.setblocking(False)
        c = {"s": s, "u": rlib.Unpacker(), "sent_at": None, "due": None, "i": i}
        conns.append(c)
        sel.register(s, selectors.EVENT_READ, c)
    lat, errors = [], 0
    t_end = time.perf_counter() + seconds
    interval = 1.0 / rate if rate else 0.0
    now = time.perf_counter()

    def send(c, due):
        c["due"] = due
        c["sent_at"] = time.perf_counter()
        c["s"].sendall(reqs[rnd.randrange(3)])

    for c in conns:
        if rate:
            c["next"] = now + rnd.uniform(0, interval)
        else:
            send(c, time.perf_counter())
    while True:
        now = time.perf_counter()
        if now >= t_end:
            break
        timeout = 0.05
        if rate:
            for c in conns:
                if c["sent_at"] is None and c["next"] <= now:
                    send(c, c["next"])
                    c["next"] += interval
                elif c["sent_at"] is None:
                    timeout = min(timeout, c["next"] - now)
        for key, _ in sel.select(max(0.0, timeout)):
            c = key.data
            try:
                b = c["s"].recv(262144)
            except BlockingIOError:
                continue
            if not b:
                errors += 1
                sel.unregister(c["s"])
                continue
            c["u"].feed(b)
            for m in c["u"]:
                if m[0] != 1:
                    continue
                t = time.perf_counter()
                if m[2] is not None:
                    errors += 1
                lat.append(t - min(c["due"], c["sent_at"]) if rate else t - c["sent_at"])
                c["sent_at"] = None
                if not rate and t < t_end:
                    send(c, t)
    for c in conns:
        c["s"].close()
    q.put((lat, errors))


def run_clients(sock, job, seconds, rate):
    """64 connections: in 4 processes flat out, in 1 at a fixed rate (cheaper)."""
    q = mp.Queue()
    nproc = 1 if rate else NPROC
    per = NCLIENTS // nproc
    ps = [mp.Process(target=client_proc, args=(sock, job, per, seconds, rate, i, q))
          for i in range(nproc)]
    for p in ps:
        p.start()
    lat, errors = [], 0
    for _ in ps:
        a, e = q.get()
        lat += a
        errors += e
    for p in ps:
        p.join()
    return lat, errors


# ---------------------------------------------------------------- the job's progress


class Poller(threading.Thread):
    """Polls global_step every 10 ms; records (time, global_step, epoch)."""

    def __init__(self, sock, job):
        super().__init__(daemon=True)
        self.sock, self.job = sock, job
        self.samples = []
        self.stop = threading.Event()

    def run(self):
        c = rlib.Conn(self.sock, timeout=30)
        while not self.stop.is_set():
            e, r = c.call("status", {"name": self.job})
            if e is None:
                self.samples.append((time.perf_counter(), r["global_step"], r["epoch"]))
            time.sleep(0.01)
        c.close()

    def window(self, t0, t1):
        before = [x for x in self.samples if x[0] < t0][-1:]
        after = [x for x in self.samples if x[0] > t1][:1]
        s = [x for x in self.samples if t0 <= x[0] <= t1]
        if len(s) < 2:
            s = before + s + after
        if len(s) < 2:
            return float("nan"), float("nan")
        rate = (s[-1][1] - s[0][1]) / (s[-1][0] - s[0][0])
        gap, last_t, last_g = 0.0, s[0][0], s[0][1]
        for t, g, _ in s[1:]:
            if g != last_g:
                gap = max(gap, t - last_t)
                last_t, last_g = t, g
        gap = max(gap, s[-1][0] - last_t)
        return rate, gap


def training_tid(d):
    """The job's training thread: the thread of nllmd with the most CPU time."""
    best = None
    for tid in os.listdir("/proc/%d/task" % d.pid):
        with open("/proc/%d/task/%s/stat" % (d.pid, tid)) as f:
            ut = int(f.read().rsplit(")", 1)[1].split()[11])
        if best is None or ut > best[1]:
            best = (int(tid), ut)
    return best[0]


def schedstat(pid, tid):
    """(seconds on a CPU, seconds runnable but waiting for one, times scheduled)."""
    with open("/proc/%d/task/%d/schedstat" % (pid, tid)) as f:
        a = f.read().split()
    return int(a[0]) / 1e9, int(a[1]) / 1e9, int(a[2])


class Blocked(threading.Thread):
    """Samples the training thread's state every 2 ms: the longest stretch in
    which it was neither running nor runnable (sleeping on a lock, a queue or
    I/O) is a training stall that nllmd caused."""

    def __init__(self, pid, tid):
        super().__init__(daemon=True)
        self.path = "/proc/%d/task/%d/stat" % (pid, tid)
        self.stretches = []  # (start, end) of blocked stretches
        self.stop = threading.Event()

    def run(self):
        start = None
        while not self.stop.is_set():
            try:
                with open(self.path) as f:
                    st = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                return
            t = time.perf_counter()
            if st != "R" and start is None:
                start = t
            elif st == "R" and start is not None:
                self.stretches.append((start, t))
                start = None
            time.sleep(0.002)

    def longest(self, t0, t1):
        return max([min(b, t1) - max(a, t0) for a, b in self.stretches if b > t0 and a < t1] + [0.0])


class Window:
    """A measurement window: steps/s, longest step gap, and the training
    thread's CPU time (to tell CPU contention from nllmd blocking it)."""

    def __init__(self, d, poll, tid, blocked):
        self.d, self.poll, self.tid, self.bl = d, poll, tid, blocked

    def __enter__(self):
        self.t0 = time.perf_counter()
        self.s0 = schedstat(self.d.pid, self.tid)
        self.l0 = schedstat(self.d.pid, self.d.pid)
        return self

    def __exit__(self, *a):
        self.t1 = time.perf_counter()
        s1 = schedstat(self.d.pid, self.tid)
        l1 = schedstat(self.d.pid, self.d.pid)
        wall = self.t1 - self.t0
        self.rate, self.gap = self.poll.window(self.t0, self.t1)
        self.run = s1[0] - self.s0[0]
        self.wait = s1[1] - self.s0[1]
        self.blocked = max(0.0, wall - self.run - self.wait) / wall
        self.stall = self.bl.longest(self.t0, self.t1)
        self.per_cpu_s = self.rate * wall / self.run if self.run > 0 else float("nan")
        # the loop thread (nllmd's main thread): mean wait for a CPU per wake-up
        n = l1[2] - self.l0[2]
        self.loop_wait_ms = 1e3 * (l1[1] - self.l0[1]) / n if n else 0.0
        self.loop_cpu = (l1[0] - self.l0[0]) / wall


def burn_proc(seconds, cpu):
    """A control load that is not nllmd: interpreter work (dicts, strings,
    lists: the clients' kind of work) on one CPU for `seconds`."""
    os.sched_setaffinity(0, {cpu})
    t_end = time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        d = {}
        for i in range(2000):
            d[str(i)] = [i] * 8
        "".join(d.keys()).encode()


def burn(seconds):
    p = mp.Process(target=burn_proc, args=(seconds, 1))
    p.start()
    p.join()
    return [], 0


def alternate(R, d, poll, label, rate, nrounds, secs, work=None):
    """Base / load windows, alternating; returns figures. The load is 64
    clients at `rate` (0: flat out), or work(secs) when given."""
    lat_all, errs = [], 0
    tid = training_tid(d)
    bl = Blocked(d.pid, tid)
    bl.start()
    base, loaded = [], []
    for _ in range(nrounds):
        with Window(d, poll, tid, bl) as w:
            time.sleep(secs)
        base.append(w)
        ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        with Window(d, poll, tid, bl) as w:
            lat, e = work(secs) if work else run_clients(d.sock, "J", secs, rate)
        ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        w.clients_cpu = (ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime) / (
            w.t1 - w.t0)
        loaded.append(w)
        lat_all += lat
        errs += e
    with Window(d, poll, tid, bl) as w:
        time.sleep(secs)
    base.append(w)
    bl.stop.set()
    bl.join()
    base_rates = [w.rate for w in base]
    load_rates = [w.rate for w in loaded]
    base_gaps = [w.gap for w in base]
    load_gaps = [w.gap for w in loaded]
    # each load window against the mean of the base windows around it
    losses = [1 - load_rates[i] / ((base_rates[i] + base_rates[i + 1]) / 2)
              for i in range(nrounds)]
    losses.sort()
    loss = losses[len(losses) // 2]
    total_s = nrounds * secs
    f = {"requests": len(lat_all), "req_per_s": round(len(lat_all) / total_s),
         "p50_ms": round(1e3 * percentile(lat_all, 50), 3),
         "p99_ms": round(1e3 * percentile(lat_all, 99), 3),
         "max_ms": round(1e3 * max(lat_all), 1) if lat_all else None,
         "errors": errs, "steps_per_s_base": round(sum(base_rates) / len(base_rates), 1),
         "steps_per_s_load": round(sum(load_rates) / len(load_rates), 1),
         "tokens_per_s_loss_pct": round(100 * loss, 1),
         "step_gap_max_base_ms": round(1e3 * max(base_gaps)),
         "step_gap_max_load_ms": round(1e3 * max(load_gaps)),
         # steps per second of the training thread's own CPU time: unchanged
         # when the loss is CPU taken by others, lower if nllmd got in its way
         "steps_per_cpu_s_base": round(sum(w.per_cpu_s for w in base) / len(base), 1),
         "steps_per_cpu_s_load": round(sum(w.per_cpu_s for w in loaded) / len(loaded), 1),
         "train_cpu_share_base_pct": round(100 * sum(w.run for w in base) / (len(base) * secs)),
         "train_cpu_share_load_pct": round(100 * sum(w.run for w in loaded) / (len(loaded) * secs)),
         "train_blocked_load_pct": round(100 * max(w.blocked for w in loaded), 1),
         "train_stall_max_base_ms": round(1e3 * max(w.stall for w in base)),
         "train_stall_max_load_ms": round(1e3 * max(w.stall for w in loaded)),
         "loop_cpu_wait_per_wakeup_ms": round(sum(w.loop_wait_ms for w in loaded) / len(loaded), 2),
         "loop_cpu_pct": round(100 * sum(w.loop_cpu for w in loaded) / len(loaded)),
         "clients_cpu_pct": round(100 * sum(w.clients_cpu for w in loaded) / len(loaded))}
    R.note("%s: %d requests (%d/s), p50 %.2f ms, p99 %.2f ms, max %.1f ms; training %.1f -> %.1f "
           "steps/s (median loss %.1f%%), longest step gap %d ms (no load: %d ms); training "
           "thread on a CPU %d%% -> %d%% of the time, %.0f -> %.0f steps per CPU second, "
           "blocked at most %.1f%%, longest blocked stretch %d ms (no load: %d ms); nllmd's "
           "loop thread used %d%% of a CPU and waited %.2f ms for one per wake-up; the "
           "clients used %d%% of a CPU" % (
               label, f["requests"], f["req_per_s"], f["p50_ms"], f["p99_ms"],
               f["max_ms"] if f["max_ms"] is not None else float("nan"),
               f["steps_per_s_base"], f["steps_per_s_load"], f["tokens_per_s_loss_pct"],
               f["step_gap_max_load_ms"], f["step_gap_max_base_ms"],
               f["train_cpu_share_base_pct"], f["train_cpu_share_load_pct"],
               f["steps_per_cpu_s_base"], f["steps_per_cpu_s_load"], f["train_blocked_load_pct"],
               f["train_stall_max_load_ms"], f["train_stall_max_base_ms"], f["loop_cpu_pct"],
               f["loop_cpu_wait_per_wakeup_ms"], f["clients_cpu_pct"]))
    R.check(errs == 0, "%s: every request answered without error (%d errors)" % (label, errs))
    return f


# ---------------------------------------------------------------- connection churn


def churn(sock, n, seed):
    rnd = random.Random(seed)
    hello = rlib.request_bytes(1, "hello")
    fails = 0
    for i in range(n):
        k = rnd.random()
        s = socket.socket(socket.AF_UNIX)
        try:
            s.connect(sock)
            if k < 0.8:
                s.sendall(hello)
                u = rlib.Unpacker()
                while True:
                    b = s.recv(65536)
                    if not b:
                        fails += 1
                        break
                    u.feed(b)
                    if any(True for _ in u):
                        break
            elif k < 0.9:
                s.sendall(hello[:5])  # half a request, then gone
            else:
                s.sendall(hello)  # gone before the reply
        except OSError:
            fails += 1
        finally:
            s.close()
    return fails


def run_churn(sock, n, nthreads=4):
    res = [0] * nthreads
    ths = [threading.Thread(target=lambda i=i: res.__setitem__(i, churn(sock, n // nthreads, i)))
           for i in range(nthreads)]
    t = time.perf_counter()
    for x in ths:
        x.start()
    for x in ths:
        x.join()
    return sum(res), time.perf_counter() - t


# ---------------------------------------------------------------- stalled consumers


def stalled_watchers(sock, n):
    out = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(sock)
        s.sendall(rlib.request_bytes(1, "watch", {"name": "J"}))
        out.append(s)
    return out


def flooding_consumers(sock, n, timeout=60):
    """Watch, then pipeline requests whose replies are never read; returns
    (dropped count, seconds until the last drop, bytes sent)."""
    req = rlib.request_bytes(9, "checkpoints", {"name": "J", "all": True}) + \
        rlib.request_bytes(9, "list", {})
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_UNIX)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(sock)
        s.sendall(rlib.request_bytes(1, "watch", {"name": "J"}))
        s.settimeout(0.2)
        socks.append(s)
    dropped = [False] * n
    t0 = time.perf_counter()
    sent = 0
    while not all(dropped) and time.perf_counter() - t0 < timeout:
        for i, s in enumerate(socks):
            if dropped[i]:
                continue
            try:
                s.sendall(req * 64)
                sent += len(req) * 64
            except (BrokenPipeError, ConnectionResetError):
                dropped[i] = True
            except socket.timeout:
                pass
    dt = time.perf_counter() - t0
    for s in socks:
        s.close()
    return sum(dropped), dt, sent


# ---------------------------------------------------------------- main


def start_daemon(tmp, lines=4000, name="state"):
    """A job whose epochs take about 3 s (4000 lines) or 0.4 s (600 lines)."""
    data = os.path.join(tmp, "train%d.txt" % lines)
    rlib.corpus(data, lines, 4)
    d = Daemon(os.path.join(tmp, name), os.path.join(tmp, name + ".sock"),
               os.path.join(tmp, name + ".log"))
    rc, _, err = d.ctl("start", "J", "--data", data, "--epochs", "1000000", "--save-every", "5",
                       "--keep", "3", *rlib.MODEL)
    if rc != 0:
        raise RuntimeError("start J: " + err)
    t = time.time()
    while time.time() - t < 60 and d.status("J")["epoch"] < 1:
        time.sleep(0.05)
    return d


def pin_training(d):
    """Training thread (the most CPU so far) on CPU 0, nllmd's other threads and
    this process (and the client processes it forks) on CPU 1."""
    best, tids = None, os.listdir("/proc/%d/task" % d.pid)
    for tid in tids:
        with open("/proc/%d/task/%s/stat" % (d.pid, tid)) as f:
            ut = int(f.read().rsplit(")", 1)[1].split()[11])
        if best is None or ut > best[1]:
            best = (int(tid), ut)
    for tid in tids:
        os.sched_setaffinity(int(tid), {0} if int(tid) == best[0] else {1})
    os.sched_setaffinity(0, {1})


def unpin(d):
    every = set(range(os.cpu_count()))
    for tid in os.listdir("/proc/%d/task" % d.pid):
        os.sched_setaffinity(int(tid), every)
    os.sched_setaffinity(0, every)


LOAD0 = 0.0


def load_campaign(R, tmp):
    global LOAD0
    with open("/proc/loadavg") as f:
        LOAD0 = float(f.read().split()[0])
    d = start_daemon(tmp)
    poll = Poller(d.sock, "J")
    poll.start()
    time.sleep(1.0)
    fd0, rss0 = d.nfds(), d.rss_kb()
    stalled = stalled_watchers(d.sock, 4)
    time.sleep(0.5)
    nr, secs = (2, 4.0) if QUICK else (3, 8.0)
    f_fast = alternate(R, d, poll, "64 clients, as fast as they can", 0, nr, secs)
    f_rate = alternate(R, d, poll, "64 clients at 10 req/s each", 10, nr, secs)
    for k, v in f_fast.items():
        R.fig("fast_" + k, v)
    for k, v in f_rate.items():
        R.fig("rate_" + k, v)
    f_pin = None
    if not QUICK and os.cpu_count() >= 2:
        # the same with the training thread alone on CPU 0 and everything else
        # (nllmd's loop, the clients) on CPU 1: what the daemon itself costs
        pin_training(d)
        try:
            f_pin = alternate(R, d, poll, "64 clients as fast as they can, training pinned", 0,
                              nr, secs)
            # the control: CPU 1 as busy, with work that is not nllmd's --
            # what a busy neighbour CPU costs on this machine by itself
            # (shared caches and memory bandwidth; on a VM perhaps the host
            # core's other hardware thread)
            f_burn = alternate(R, d, poll, "control: CPU 1 busy with other work, training pinned",
                               0, nr, secs, work=burn)
        finally:
            unpin(d)
        for k, v in f_burn.items():
            R.fig("pinned_control_" + k, v)
        for k, v in f_pin.items():
            R.fig("pinned_" + k, v)
    # control: the same daemon with the job paused (no training, no epoch ends)
    d.ctl("pause", "J")
    d.wait_state("J", ["paused"], 60)
    lat, e = run_clients(d.sock, "J", secs, 10)
    R.fig("idle_rate_p50_ms", round(1e3 * percentile(lat, 50), 3))
    R.fig("idle_rate_p99_ms", round(1e3 * percentile(lat, 99), 3))
    R.fig("idle_rate_max_ms", round(1e3 * max(lat), 1))
    R.note("control, job paused: 64 clients at 10 req/s each: p50 %.2f ms, p99 %.2f ms, max "
           "%.1f ms" % (1e3 * percentile(lat, 50), 1e3 * percentile(lat, 99), 1e3 * max(lat)))
    d.ctl("resume", "J")
    d.wait_state("J", ["running"], 60)
    time.sleep(1.0)
    idle_p99 = 1e3 * percentile(lat, 99)
    # nllmd's own effect: the training thread is never blocked for long (its
    # steps per CPU second are reported: sharing a core, or its SMT sibling,
    # with the clients costs some); absolute figures against the aims count as
    # failures only where the machine itself allows them
    for lab, f in (("as fast as possible", f_fast), ("fixed rate", f_rate)):
        R.check(f["train_stall_max_load_ms"] <= max(100, f["train_stall_max_base_ms"] + 50),
                "%s: no training step stalled (longest blocked stretch %d ms, %d ms without "
                "load)" % (lab, f["train_stall_max_load_ms"], f["train_stall_max_base_ms"]))
    # the aims are asserted where the machine is ours: nothing else ran (load
    # average before the campaign, before its job started, under 0.5), the
    # training thread got 90% of a CPU without load and p99 was under 5 ms with
    # the job paused; never in --quick (CI machines are shared). The pinned run
    # (training alone on a CPU) is asserted whenever it ran.
    contended = QUICK or LOAD0 >= 0.5 or f_rate["train_cpu_share_base_pct"] < 90 or \
        idle_p99 >= 5
    if f_pin is not None:
        # other jobs on this machine still run on the training thread's CPU;
        # what nllmd costs it is its work per CPU second (and blocked time)
        pin_loss = 100 * (1 - f_pin["steps_per_cpu_s_load"] / f_pin["steps_per_cpu_s_base"])
        burn_loss = 100 * (1 - f_burn["steps_per_cpu_s_load"] / f_burn["steps_per_cpu_s_base"])
        R.fig("pinned_steps_per_cpu_s_loss_pct", round(pin_loss, 1))
        R.fig("pinned_control_steps_per_cpu_s_loss_pct", round(burn_loss, 1))
        R.check(pin_loss - burn_loss < 5,
                "flat out, training thread on its own CPU: training steps per CPU second drop "
                "%.1f%%, within 5 points of the same drop with CPU 1 busy with other work "
                "(%.1f%%; the rate itself %.1f%%, on a CPU %d%% -> %d%% of the time)" % (
                    pin_loss, burn_loss, f_pin["tokens_per_s_loss_pct"],
                    f_pin["train_cpu_share_base_pct"], f_pin["train_cpu_share_load_pct"]))
    R.fig("machine", "load average %.2f before the campaign; the training thread got %d%% of a "
          "CPU without load; control p99 %.1f ms" % (LOAD0, f_rate["train_cpu_share_base_pct"],
                                                     idle_p99))
    R.fig("aim_p99_met", f_rate["p99_ms"] < 10)
    R.fig("aim_loss_met", f_rate["tokens_per_s_loss_pct"] < 5)
    R.check(f_rate["p99_ms"] < 10 or contended,
            "fixed rate: p99 latency < 10 ms (%.2f; with the job paused %.2f)" % (
                f_rate["p99_ms"], idle_p99))
    R.check(f_rate["tokens_per_s_loss_pct"] < 5 or contended,
            "fixed rate: training rate loss < 5%% (%.1f%%)" % f_rate["tokens_per_s_loss_pct"])
    if contended:
        R.note("fixed-rate aims reported, not asserted (%s): load average %.2f before the "
               "campaign, the training thread got %d%% of a CPU without load, p99 %.1f ms with the "
               "job paused" % ("--quick" if QUICK else "a shared machine", LOAD0,
                               f_rate["train_cpu_share_base_pct"], idle_p99))
    # connection churn
    n = 10000 if QUICK else 100000
    fd1 = d.nfds()
    t0 = time.perf_counter()
    fails, dt = run_churn(d.sock, n)
    r, gap = poll.window(t0, time.perf_counter())
    time.sleep(0.5)
    fd2 = d.nfds()
    R.fig("churn_cycles", n)
    R.fig("churn_per_s", round(n / dt))
    R.fig("churn_failures", fails)
    R.fig("churn_fd_growth", fd2 - fd1)
    R.fig("churn_step_gap_max_ms", round(1e3 * gap))
    R.check(fails == 0, "connect/disconnect: %d cycles, %d failed" % (n, fails))
    R.check(fd2 - fd1 <= 0, "connect/disconnect: no fd growth (%d -> %d)" % (fd1, fd2))
    R.note("%d connect/disconnect cycles in %.1f s (%d/s), %d failed, fds %d -> %d, longest step "
           "gap %d ms" % (n, dt, n / dt, fails, fd1, fd2, 1e3 * gap))
    # flooding consumers
    tid = training_tid(d)
    bl = Blocked(d.pid, tid)
    bl.start()
    time.sleep(1.0)
    t0 = time.perf_counter()
    log0 = d.log_text().count("client too slow")
    s0 = schedstat(d.pid, tid)
    dropped, dt, sent = flooding_consumers(d.sock, 4)
    t1 = time.perf_counter()
    s1 = schedstat(d.pid, tid)
    gap = bl.longest(t0, t1)
    base_stall = bl.longest(t0 - 1.0, t0)
    bl.stop.set()
    bl.join()
    time.sleep(0.5)
    too_slow = d.log_text().count("client too slow") - log0
    R.fig("flood_dropped", "%d/4" % dropped)
    R.fig("flood_seconds", round(dt, 2))
    R.fig("flood_train_stall_max_ms", round(1e3 * gap))
    R.fig("flood_train_cpu_share_pct", round(100 * (s1[0] - s0[0]) / (t1 - t0)))
    R.check(dropped == 4 and too_slow >= 4,
            "consumers that never read are dropped at the write-queue bound (%d dropped, %d "
            "logged, %.1f s, %d MB sent)" % (dropped, too_slow, dt, sent >> 20))
    R.check(gap <= max(0.1, base_stall + 0.05),
            "training went on while they were dropped (longest blocked stretch %d ms, on a CPU "
            "%d%% of the time)" % (1e3 * gap, 100 * (s1[0] - s0[0]) / (t1 - t0)))
    # the stalled watchers held for the whole run: nllmd still fine
    st = d.status("J")
    R.check(st["state"] == "running", "job still running (%s)" % st["state"])
    for s in stalled:
        s.close()
    poll.stop.set()
    poll.join()
    time.sleep(0.5)
    fd3, rss3 = d.nfds(), d.rss_kb()
    R.fig("fds_before_after", "%d -> %d" % (fd0, fd3))
    R.fig("rss_kb_before_after", "%d -> %d" % (rss0, rss3))
    R.check(fd3 <= fd0, "open fds back to where they were (%d -> %d)" % (fd0, fd3))
    R.note("nllmd fds %d -> %d, VmRSS %d -> %d kB over the load campaign" % (fd0, fd3, rss0, rss3))
    R.check(d.shutdown() == 0, "shutdown exit 0")
    if not QUICK:
        # worst case for latency: 0.4 s epochs, so that epoch ends (catalog
        # commits, curves, checkpoints on the loop thread) come 2.5 times a second
        d = start_daemon(tmp, 600, "short")
        poll = Poller(d.sock, "J")
        poll.start()
        time.sleep(1.0)
        f = alternate(R, d, poll, "0.4 s epochs, 64 clients at 10 req/s each", 10, nr, secs)
        for k, v in f.items():
            R.fig("short_epochs_" + k, v)
        poll.stop.set()
        poll.join()
        d.shutdown()


def soak(R, tmp, minutes):
    d = start_daemon(tmp)
    poll = Poller(d.sock, "J")
    poll.start()
    time.sleep(1.0)
    fd0, rss0 = d.nfds(), d.rss_kb()
    samples = [(0, fd0, rss0)]
    lat_all, errs, cycles, dropped_total = [], 0, 0, 0
    tid = training_tid(d)
    bl = Blocked(d.pid, tid)
    bl.start()
    loads = []
    s0 = schedstat(d.pid, tid)
    t_start = time.perf_counter()
    t_end = t_start + 60 * minutes
    while time.perf_counter() < t_end:
        lat, e = run_clients(d.sock, "J", min(25.0, max(1.0, t_end - time.perf_counter())), 10)
        lat_all += lat
        errs += e
        f, _ = run_churn(d.sock, 2000)
        cycles += 2000
        errs += f
        dropped, _, _ = flooding_consumers(d.sock, 1)
        dropped_total += dropped
        samples.append((round(time.perf_counter() - t_start), d.nfds(), d.rss_kb()))
        with open("/proc/loadavg") as f:
            loads.append(float(f.read().split()[0]))
        print("     soak %ds: fds %d, VmRSS %d kB, load average %.2f" % (samples[-1] + (
            loads[-1],)), flush=True)
    t_stop = time.perf_counter()
    s1 = schedstat(d.pid, tid)
    stall = bl.longest(t_start, t_stop)
    bl.stop.set()
    bl.join()
    rate, gap = poll.window(t_start, time.perf_counter())
    poll.stop.set()
    poll.join()
    time.sleep(0.5)
    fd1, rss1 = d.nfds(), d.rss_kb()
    R.fig("soak_minutes", minutes)
    R.fig("soak_requests", len(lat_all))
    R.fig("soak_p50_ms", round(1e3 * percentile(lat_all, 50), 3))
    R.fig("soak_p99_ms", round(1e3 * percentile(lat_all, 99), 3))
    R.fig("soak_max_ms", round(1e3 * max(lat_all), 1))
    R.fig("soak_connect_cycles", cycles)
    R.fig("soak_slow_consumers_dropped", dropped_total)
    R.fig("soak_fds", "%d -> %d" % (fd0, fd1))
    R.fig("soak_rss_kb", "%d -> %d (max %d)" % (rss0, rss1, max(s[2] for s in samples)))
    R.fig("soak_rss_samples", samples)
    R.fig("soak_step_gap_max_ms", round(1e3 * gap))
    R.fig("soak_train_stall_max_ms", round(1e3 * stall))
    R.fig("soak_train_cpu_share_pct", round(100 * (s1[0] - s0[0]) / (t_stop - t_start)))
    R.fig("soak_load_average", "mean %.2f, max %.2f" % (sum(loads) / max(1, len(loads)),
                                                       max(loads + [0])))
    R.check(stall < 0.2, "soak: the training thread was never blocked for long (longest %d ms)"
            % (1e3 * stall))
    R.fig("soak_steps_per_s", round(rate, 1))
    R.check(errs == 0, "soak: no failed request or connection (%d)" % errs)
    R.check(fd1 <= fd0, "soak: fds %d -> %d" % (fd0, fd1))
    half = [s[2] for s in samples if s[0] >= 30 * minutes]
    R.check(not half or max(half) - min(half) < 20000,
            "soak: VmRSS flat over the second half (%s kB)" % ((half and (min(half), max(half))),))
    R.note("soak %g min: %d requests p50 %.2f ms p99 %.2f ms, %d connect cycles, %d slow consumers "
           "dropped, fds %d -> %d, VmRSS %d -> %d kB, longest step gap seen by status %d ms, "
           "longest training-thread block %d ms, training thread on a CPU %d%% of the time, "
           "load average mean %.2f" % (
               minutes, len(lat_all), 1e3 * percentile(lat_all, 50),
               1e3 * percentile(lat_all, 99), cycles, dropped_total, fd0, fd1, rss0, rss1,
               1e3 * gap, 1e3 * stall, 100 * (s1[0] - s0[0]) / (t_stop - t_start),
               sum(loads) / max(1, len(loads))))
    R.check(d.shutdown() == 0, "soak: shutdown exit 0")


def main():
    out = arg("--out", ".")
    minutes = arg("--soak")
    R = rlib.Results("soak" if minutes else "load", out)
    tmp = tempfile.mkdtemp(prefix="nllm-rel-load-", dir=arg("--tmp"))

    def body():
        if minutes:
            soak(R, tmp, float(minutes))
        else:
            load_campaign(R, tmp)

    return rlib.run_campaign(R, tmp, body)


if __name__ == "__main__":
    mp.set_start_method("fork")
    sys.exit(main())
