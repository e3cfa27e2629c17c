#!/usr/bin/python3
"""test_python_client.py -- drives a real nllmd with raw msgpack-RPC, as any
third-party client would, using only Debian's python3-msgpack (no proto/).

Starts NLLMD (argv[1] or $NLLMD) on a temporary state dir and socket, trains
a tiny 3-epoch job while watching it, checks every read method against
proto/PROTOCOL.md, the error codes, a resume, a malformed message, and a
clean shutdown. When NLLMCTL (argv[2] or $NLLMCTL) is given, also runs the
real client against the same daemon. Exit 77 (skip) when python3-msgpack or
the daemon is missing. Prints "N passed, M failed" last.
"""
import json
import os
import random
import re
import socket
import subprocess
import sys
import time
import traceback

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemonlib as dl  # noqa: E402

try:
    import msgpack
except ImportError:
    print("SKIP: python3-msgpack is not installed (apt-get install python3-msgpack)")
    sys.exit(77)

NLLMD = sys.argv[1] if len(sys.argv) > 1 else os.environ.get("NLLMD", "")
NLLMCTL = sys.argv[2] if len(sys.argv) > 2 else os.environ.get("NLLMCTL", "")
if not NLLMD or not os.access(NLLMD, os.X_OK):
    print(f"SKIP: nllmd is not built (looked for {NLLMD or 'argv[1] / $NLLMD'})")
    sys.exit(77)

JOB = "tiny"
TERMINAL = {"completed", "stopped", "paused", "interrupted", "failed"}


def check(name, fn):
    """Runs one named check; an exception or a false assert is a failure."""
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - report every kind of failure
        dl.check(False, name, str(e))
        if not isinstance(e, AssertionError):
            traceback.print_exc()
        return
    dl.check(True, name)


class RpcError(Exception):
    def __init__(self, err):
        self.code = err.get("code") if isinstance(err, dict) else None
        self.message = err.get("message") if isinstance(err, dict) else str(err)
        super().__init__(f"{self.code}: {self.message}")


class Client:
    """One connection: calls wait for their msgid; notifications are kept."""

    def __init__(self, path, timeout=60.0):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(timeout)
        self.sock.connect(path)
        # invalid UTF-8 must not wreck the stream: it is replaced, then flagged
        self.unpacker = msgpack.Unpacker(raw=False, strict_map_key=False,
                                         unicode_errors="replace")
        self.msgid = 0
        self.notes = []
        self.responses = {}
        self.bad_utf8 = []  # messages whose strings were not valid UTF-8

    def close(self):
        self.sock.close()

    def send(self, method, params=None):
        self.msgid += 1
        p = [] if params is None else [params]
        self.sock.sendall(msgpack.packb([0, self.msgid, method, p], use_bin_type=True))
        return self.msgid

    def _read(self, deadline):
        """Reads once (up to deadline); files each complete message. False on EOF."""
        self.sock.settimeout(max(0.05, deadline - time.monotonic()))
        data = self.sock.recv(65536)
        if not data:
            return False
        self.unpacker.feed(data)
        for msg in self.unpacker:
            assert isinstance(msg, list) and msg, f"not an RPC message: {msg!r}"
            if "\ufffd" in repr(msg):
                self.bad_utf8.append(msg)
            if msg[0] == 1:
                assert len(msg) == 4, f"response has {len(msg)} elements: {msg!r}"
                self.responses[msg[1]] = msg
            elif msg[0] == 2:
                assert len(msg) == 3, f"notification has {len(msg)} elements: {msg!r}"
                params = msg[2]
                assert isinstance(params, list) and len(params) == 1 and isinstance(
                    params[0], dict), f"notification params not [map]: {msg!r}"
                self.notes.append((msg[1], params[0]))
            else:
                raise AssertionError(f"unexpected message from the daemon: {msg!r}")
        return True

    def wait(self, msgid, timeout=60.0):
        deadline = time.monotonic() + timeout
        while msgid not in self.responses:
            if time.monotonic() > deadline:
                raise AssertionError(f"no response to msgid {msgid} within {timeout}s")
            if not self._read(deadline):
                raise AssertionError(f"connection closed while waiting for msgid {msgid}")
        _, _, err, result = self.responses.pop(msgid)
        if err is not None:
            assert result is None, f"error response with a result: {result!r}"
            assert isinstance(err, dict) and isinstance(err.get("code"), str) and isinstance(
                err.get("message"), str), f"malformed error: {err!r}"
            raise RpcError(err)
        return result

    def call(self, method, params=None, timeout=60.0):
        return self.wait(self.send(method, params), timeout)

    def wait_note(self, pred, timeout):
        """Returns the first kept notification (method, params) matching pred."""
        deadline = time.monotonic() + timeout
        i = 0
        while True:
            while i < len(self.notes):
                if pred(*self.notes[i]):
                    return self.notes[i]
                i += 1
            if time.monotonic() > deadline:
                raise AssertionError(f"no matching notification within {timeout}s; got "
                                     f"{[m for m, _ in self.notes][-20:]}")
            try:
                if not self._read(deadline):
                    raise AssertionError("connection closed while waiting for notifications")
            except socket.timeout:
                pass


def expect_error(code, fn):
    try:
        r = fn()
    except RpcError as e:
        assert e.code == code, f"expected {code}, got {e.code}: {e.message}"
        assert e.message, "error without a message"
        return e
    raise AssertionError(f"expected a {code} error, got result {r!r}")


def ckpt_base(name):
    """`best` from `best` or `tiny_best` (either spelling is accepted)."""
    return name[len(JOB) + 1:] if name.startswith(JOB + "_") else name


def make_text(path, lines, seed):
    rng = random.Random(seed)
    words = ("the of and to in a is that for it as was with be by on not he this are or "
             "his from at which but have an they you were her she there been one all we "
             "their has would when if so no will more can out said what up its about into "
             "them than only other new some could time these two may then do first any my "
             "now such like our over man me even most made after also did many before must "
             "through back years where much your way well down should because each just "
             "those people").split()
    with open(path, "w") as f:
        for _ in range(lines):
            n = rng.randint(6, 10)
            # a skewed draw so word frequencies differ, as in real text
            f.write(" ".join(words[int(rng.random() ** 2 * len(words))] for _ in range(n)) + "\n")


def run(tmp):
    data = os.path.join(tmp, "train.txt")
    make_text(data, 300, 1)
    ctx = {}
    daemon = None
    try:
        # up when its socket accepts a connection (NLLMCTL may be missing)
        daemon = dl.Daemon(NLLMD, None, tmp, "nllmd")
        sock_path, proc = daemon.sock, daemon.p
        c = Client(sock_path)
        ctx["c"] = c

        def t_hello():
            r = c.call("hello")
            assert r["protocol"] == 1, r
            assert isinstance(r["daemon"], str) and r["daemon"].startswith("nllmd"), r
            assert isinstance(r["devices"], list) and r["devices"], r
            names = [d["name"] for d in r["devices"]]
            assert "cpu" in names, f"no cpu device in {names}"
            for d in r["devices"]:
                for k in ("name", "kind", "busy", "memory_total", "memory_free"):
                    assert k in d, f"device lacks {k}: {d}"
            assert isinstance(r["max_jobs"], int) and r["max_jobs"] >= 1, r
            assert r["auth_required"] is False, r
            # params may also be an explicit empty map
            assert c.call("hello", {})["protocol"] == 1
        check("hello", t_hello)

        config = {"vocab_size": 50, "embed_dim": 8, "hidden_dim": 16, "context_dim": 8,
                  "num_layers": 2, "max_seq_length": 16, "batch_size": 4, "num_epochs": 3,
                  "save_every": 1, "data": data, "device": "cpu", "threads": 1,
                  "learning_rate": 1e-3}

        def t_start_and_watch():
            # start and watch in one write: the watch is registered before the job can
            # report anything, so even a job that finishes at once is seen whole
            sid = c.send("start", {"name": JOB, "config": config})
            wid = c.send("watch", {"name": JOB})
            st = c.wait(sid)
            assert st["name"] == JOB and st["state"] in ("queued", "running"), st
            assert st["num_epochs"] == 3 and st["epoch"] == 0, st
            assert st["config"]["vocab_size"] == 50 and st["config"]["data"] == data, st
            w = c.wait(wid)
            assert w["watching"] == JOB and w["status"]["name"] == JOB, w
            ctx["watch_status"] = w["status"]
            _, p = c.wait_note(lambda m, p: m == "state" and p.get("state") in TERMINAL,
                               timeout=300)
            assert p["state"] == "completed", f"job ended {p['state']}: {p.get('error')}"
        check("start + watch until completed", t_start_and_watch)

        def notes(method):
            return [p for m, p in c.notes if m == method and p.get("name") == JOB]

        def t_progress():
            ps = notes("progress")
            secs = sum(e.get("seconds") or 0 for e in notes("epoch"))
            # "at least once a second while training": a job this small may finish
            # its epochs in less than that
            assert ps or secs < 1.5, f"no progress notifications in {secs:.1f} s of training"
            for p in ps:
                for k in ("epoch", "num_epochs", "step", "steps_per_epoch", "global_step",
                          "loss", "tokens_per_s", "elapsed", "eta"):
                    assert k in p, f"progress lacks {k}: {p}"
                assert 0 <= p["epoch"] < 3 and p["num_epochs"] == 3, p
                assert 0 <= p["step"] <= p["steps_per_epoch"], p
        check("progress notifications", t_progress)

        def t_epochs():
            es = notes("epoch")
            assert [e["epoch"] for e in es] == [1, 2, 3], f"epochs {[e['epoch'] for e in es]}"
            for e in es:
                for k in ("num_epochs", "train_loss", "val_loss", "train_ppl", "val_ppl",
                          "val_acc", "seconds", "tokens_per_s", "is_best"):
                    assert k in e, f"epoch lacks {k}: {e}"
                assert isinstance(e["is_best"], bool), e
                assert 0 < e["val_loss"] < 20 and 0 <= e["val_acc"] <= 1, e
            assert es[0]["is_best"], "epoch 1 is always the best so far"
        check("epoch notifications 1..3", t_epochs)

        def t_ckpt_notes():
            ks = notes("checkpoint")
            got = {ckpt_base(k["checkpoint"]) for k in ks}
            for want in ("best", "final", "epoch_1", "epoch_2", "epoch_3"):
                assert want in got, f"no checkpoint notification for {want}; got {sorted(got)}"
            for k in ks:
                for f in ("kind", "epoch", "step", "path", "size"):
                    assert f in k, f"checkpoint notification lacks {f}: {k}"
                assert os.path.isfile(k["path"]) or ckpt_base(k["checkpoint"]).startswith(
                    "epoch_"), f"checkpoint file {k['path']} missing"
        check("checkpoint notifications", t_ckpt_notes)

        def t_state_notes():
            ss = [p["state"] for p in notes("state")]
            assert ss and ss[-1] == "completed", f"states {ss}"
            assert "running" in ss or ctx["watch_status"]["state"] == "running", f"states {ss}"
        check("state notifications", t_state_notes)

        def t_status():
            st = c.call("status", {"name": JOB})
            assert st["state"] == "completed", st
            assert st["epoch"] == 3 and st["num_epochs"] == 3, st
            assert 1 <= st["best_epoch"] <= 3 and isinstance(st["best_val_loss"], float), st
            assert st["attempt"] == 1, st
            for k in ("step", "steps_per_epoch", "global_step", "loss", "train_loss",
                      "val_loss", "val_ppl", "val_acc", "tokens_per_s", "device", "error",
                      "created", "updated", "config"):
                assert k in st, f"status lacks {k}"
            assert st["global_step"] > 0 and st["steps_per_epoch"] > 0, st
            cfg = st["config"]
            for k, v in config.items():
                got = cfg.get(k)
                if isinstance(v, float):
                    assert abs(float(got) - v) < 1e-9, f"config {k} = {got!r}, sent {v!r}"
                else:
                    assert got == v, f"config {k} = {got!r}, sent {v!r}"
            assert "tokenizer" in cfg and "clip" in cfg and "patience" in cfg, cfg
        check("status", t_status)

        def t_list():
            r = c.call("list")
            names = [j["name"] for j in r["jobs"]]
            assert JOB in names, names
            j = r["jobs"][names.index(JOB)]
            assert j["state"] == "completed" and j["epoch"] == 3, j
        check("list", t_list)

        def t_checkpoints():
            r = c.call("checkpoints", {"name": JOB})
            ks = r["checkpoints"]
            names = [ckpt_base(k["name"]) for k in ks]
            assert len(names) == len(set(names)), f"a name listed twice: {names}"
            got = {ckpt_base(k["name"]): k for k in ks}
            for want in ("best", "final", "epoch_1", "epoch_2", "epoch_3"):
                assert want in got, f"{want} not listed; got {sorted(got)}"
            for k in ks:
                for f in ("kind", "epoch", "step", "path", "size", "checksum", "weights_hash",
                          "val_loss", "created", "status", "current", "attempt"):
                    assert f in k, f"checkpoint {k.get('name')} lacks {f}"
                assert re.fullmatch(r"[0-9a-f]{16}", k["checksum"]), f"checksum {k['checksum']!r}"
                assert k["status"] == "ok" and k["current"] is True, k
                assert k["size"] > 0 and os.path.getsize(k["path"]) == k["size"], k
            assert got["final"]["epoch"] == 3 and got["epoch_2"]["epoch"] == 2, got
        check("checkpoints", t_checkpoints)

        def t_history():
            eps = c.call("history", {"name": JOB})["epochs"]
            assert [e["epoch"] for e in eps] == [1, 2, 3], eps
            for e in eps:
                for k in ("attempt", "train_loss", "val_loss", "train_ppl", "val_ppl", "val_acc",
                          "seconds", "tokens_per_s", "superseded"):
                    assert k in e, f"history epoch lacks {k}: {e}"
                assert e["superseded"] is False and e["attempt"] == 1, e
            ws = notes("epoch")
            if len(ws) == 3:
                for e, w in zip(eps, ws):
                    assert abs(e["val_loss"] - w["val_loss"]) < 1e-6, (e, w)
        check("history", t_history)

        def t_events():
            evs = c.call("events", {"name": JOB})["events"]
            assert evs, "no events"
            for e in evs:
                assert isinstance(e["ts"], (int, float)) and e["ts"] > 1e9, e
                assert isinstance(e["kind"], str) and isinstance(e["message"], str), e
            ts = [e["ts"] for e in evs]
            assert ts == sorted(ts), f"events are not newest last: {ts}"
            last = c.call("events", {"name": JOB, "limit": 2})["events"]
            assert len(last) == min(2, len(evs)) and last == evs[-len(last):], last
        check("events (+limit)", t_events)

        def t_verify():
            r = c.call("verify", {"name": JOB})
            assert r["checked"] >= 5 and r["bad"] == 0, r
            for x in r["results"]:
                assert x["job"] == JOB and x["status"] == "ok", x
            assert r["checked"] == len(r["results"]), r
            r = c.call("verify", {"all": True})
            assert r["checked"] >= 5 and r["bad"] == 0, r
        check("verify", t_verify)

        def t_generate():
            r = c.call("generate", {"name": JOB, "prompt": "the", "tokens": 5, "seed": 1})
            assert isinstance(r["text"], str) and r["text"], r
            assert r["tokens"] <= 5 and "checkpoint" in r and "prompt" in r, r
            r2 = c.call("generate", {"name": JOB, "prompt": "the", "tokens": 5, "seed": 1})
            assert r2["text"] == r["text"], "same seed, different text"
        check("generate", t_generate)

        # ---- errors ----
        def t_unknown_method():
            expect_error("bad_request", lambda: c.call("no_such_method", {}))
            assert c.call("hello")["protocol"] == 1, "connection unusable after an error"
        check("unknown method -> bad_request", t_unknown_method)

        def t_not_found():
            e = expect_error("not_found", lambda: c.call("status", {"name": "nope"}))
            assert "nope" in e.message, f"message does not name the job: {e.message}"
            expect_error("not_found", lambda: c.call("checkpoints", {"name": "nope"}))
        check("unknown job -> not_found", t_not_found)

        def t_bad_params():
            for bad in ("../x", "", ".hidden", "a/b", "x" * 65):
                expect_error("bad_request",
                             lambda: c.call("start", {"name": bad, "config": config}))
            expect_error("bad_request", lambda: c.call("status", {}))
            expect_error("bad_request", lambda: c.call("status", {"name": 5}))
            expect_error("bad_request", lambda: c.call(
                "start", {"name": "cfg", "config": dict(config, no_such_key=1)}))
            expect_error("bad_request", lambda: c.call(
                "start", {"name": "cfg", "config": dict(config, hidden_dim=-3)}))
            expect_error("conflict", lambda: c.call("start", {"name": JOB, "config": config}))
        check("bad names and params -> bad_request / conflict", t_bad_params)

        def t_garbage():
            g = Client(sock_path, timeout=10)
            g.sock.sendall(b"\xc1" * 16 + b"garbage")
            g.sock.settimeout(10)
            got = b""
            try:
                while True:
                    d = g.sock.recv(65536)
                    if not d:
                        break  # disconnected: fine
                    got += d
                    u = msgpack.Unpacker(raw=False)
                    u.feed(got)
                    msgs = list(u)
                    if msgs:  # an error response is fine too
                        assert msgs[0][0] == 1 and msgs[0][2] is not None, msgs[0]
                        break
            except socket.timeout:
                raise AssertionError("daemon neither answered nor disconnected garbage")
            except ConnectionResetError:
                pass
            g.close()
            # a well-framed message that is not an RPC message, with a msgid
            h = Client(sock_path, timeout=10)
            h.sock.sendall(msgpack.packb([0, 7, "hello"]))  # 3 elements
            try:
                h.wait(7, timeout=10)
                raise AssertionError("a 3-element request was accepted")
            except RpcError as e:
                assert e.code == "bad_request", e.code
            except AssertionError as e:
                if "closed" not in str(e):
                    raise
            h.close()
            assert c.call("hello")["protocol"] == 1, "daemon unusable after garbage"
        check("malformed messages -> error or disconnect", t_garbage)

        def t_resume():
            c.notes.clear()
            sid = c.send("resume", {"name": JOB, "checkpoint": "final", "num_epochs": 4})
            wid = c.send("watch", {"name": JOB})
            st = c.wait(sid)
            assert st["num_epochs"] == 4 and st["attempt"] == 2, st
            c.wait(wid)
            _, p = c.wait_note(lambda m, p: m == "state" and p.get("state") in TERMINAL,
                               timeout=300)
            assert p["state"] == "completed", f"resumed job ended {p['state']}: {p.get('error')}"
            rf = [p["resumed_from"] for p in notes("state") if p.get("resumed_from")]
            assert rf, "no state notification with resumed_from"
            assert rf[0]["epoch"] == 3 and "best_val_loss" in rf[0] and "checkpoint" in rf[0], rf
            eps = c.call("history", {"name": JOB})["epochs"]
            assert [e["epoch"] for e in eps] == [1, 2, 3, 4], eps
            assert eps[-1]["attempt"] == 2, eps[-1]
            st = c.call("status", {"name": JOB})
            assert st["epoch"] == 4 and st["state"] == "completed", st
        check("resume from final to 4 epochs", t_resume)

        if NLLMCTL:
            run_client_checks(sock_path, data, tmp)

        def t_remove():
            c.call("start", {"name": "gone", "config": dict(config, num_epochs=1)})
            deadline = time.monotonic() + 120
            while c.call("status", {"name": "gone"})["state"] not in TERMINAL:
                assert time.monotonic() < deadline, "job gone did not end"
                time.sleep(0.1)
            r = c.call("remove", {"name": "gone", "delete_files": True})
            assert r["removed"] is True and r["deleted_files"] >= 1, r
            expect_error("not_found", lambda: c.call("status", {"name": "gone"}))
            assert "gone" not in [j["name"] for j in c.call("list")["jobs"]]
        check("remove", t_remove)

        def t_utf8():
            assert not c.bad_utf8, f"invalid UTF-8 from the daemon in {c.bad_utf8[:3]!r}"
        check("every string from the daemon is valid UTF-8", t_utf8)

        def t_shutdown():
            r = c.call("shutdown")
            assert r == {"ok": True}, r
        check("shutdown answers {ok: true}", t_shutdown)

        def t_exit():
            rc = proc.wait(timeout=60)
            assert rc == 0, f"nllmd exited {rc}"
        check("nllmd exits 0 after shutdown", t_exit)
    except Exception as e:  # noqa: BLE001
        dl.check(False, "harness", str(e))
        traceback.print_exc()
    finally:
        if daemon is not None:
            if daemon.p.poll() is None:
                daemon.stop(timeout=30)
            daemon.close()
        if dl.FAILED and os.path.exists(os.path.join(tmp, "nllmd.log")):
            print("---- nllmd log (tail) ----")
            with open(os.path.join(tmp, "nllmd.log"), errors="replace") as f:
                print(f.read()[-4000:])


def run_client_checks(sock_path, data, tmp):
    """The real nllmctl against the same daemon: exit codes, output, --json."""
    env = dict(os.environ)
    env.pop("NO_COLOR", None)

    def ctl(*args, timeout=120, extra_env=None):
        e = dict(env, **(extra_env or {}))
        return subprocess.run([NLLMCTL, "--socket", sock_path, *args], capture_output=True,
                              text=True, timeout=timeout, env=e, stdin=subprocess.DEVNULL)

    def t_ctl_status():
        r = ctl("status", JOB)
        assert r.returncode == 0, r.stderr
        assert re.search(r"^state:\s+completed$", r.stdout, re.M), r.stdout
        r = ctl("--json", "status", JOB)
        assert r.returncode == 0 and json.loads(r.stdout)["name"] == JOB, r
        r = ctl("status", "nope")
        assert r.returncode == 1 and "nope" in r.stderr, (r.returncode, r.stderr)
        r = subprocess.run([NLLMCTL, "--socket", os.path.join(tmp, "none.sock"), "status", JOB],
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 3 and "none.sock" in r.stderr and "nllmd" in r.stderr, r
        r = ctl("status")
        assert r.returncode == 2 and "usage" in r.stderr, r
    check("nllmctl status / exit codes", t_ctl_status)

    def t_ctl_tables():
        r = ctl("list")
        assert r.returncode == 0 and re.search(rf"^{JOB}\s+completed\s+4/4", r.stdout, re.M), r
        r = ctl("history", JOB, "--csv")
        lines = r.stdout.strip().splitlines()
        assert r.returncode == 0 and lines[0] == ("epoch,attempt,train_loss,val_loss,train_ppl,"
                                                  "val_ppl,val_acc,seconds,tokens_per_s,"
                                                  "superseded"), r.stdout
        assert len(lines) == 5 and lines[1].startswith("1,1,"), lines
        r = ctl("checkpoints", JOB)
        assert r.returncode == 0 and re.search(r"^\S*best\s", r.stdout, re.M), r.stdout
        r = ctl("events", JOB, "--limit", "3")
        assert r.returncode == 0 and re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d", r.stdout), r
        r = ctl("--json", "hello")
        assert r.returncode == 0 and json.loads(r.stdout)["protocol"] == 1, r
        r = ctl("generate", JOB, "--tokens", "4", "--seed", "3")
        assert r.returncode == 0 and r.stdout.strip(), r
    check("nllmctl list/history/checkpoints/events/hello/generate", t_ctl_tables)

    def t_ctl_verify():
        r = ctl("verify", "--all")
        assert r.returncode == 0 and "0 bad" in r.stdout, (r.returncode, r.stdout, r.stderr)
    check("nllmctl verify --all", t_ctl_verify)

    def t_ctl_start_watch():
        r = ctl("start", "ctl", "--data", os.path.relpath(data), "--vocab", "50",
                "--embed-dim", "8", "--hidden-dim", "16", "--context-dim", "8", "--layers", "2",
                "--seq-len", "16", "--batch", "4", "--epochs", "2", "--save-every", "1",
                "--device", "cpu", "--threads", "1", "--watch", timeout=300)
        assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
        out = r.stdout
        assert "\r" not in out and "\033[" not in out, "escape codes without a terminal"
        for want in ("Epoch 1/2", "Epoch 2/2", "Val: Loss=", "Saved checkpoint",
                     "Job ctl completed"):
            assert want in out, f"{want!r} not in watch output:\n{out}"
        r = ctl("watch", "ctl")  # already completed: prints and exits 0
        assert r.returncode == 0 and "completed" in r.stdout, r
        r = ctl("--json", "watch", "ctl")
        assert r.returncode == 0 and json.loads(r.stdout.splitlines()[0])["watching"] == "ctl", r
        r = ctl("start", "ctl2", "--data", os.path.join(tmp, "missing.txt"))
        assert r.returncode == 2 and "missing.txt" in r.stderr, r
    check("nllmctl start --watch (plain output)", t_ctl_start_watch)


if __name__ == "__main__":
    sys.exit(dl.main(run, "nllm-pyclient-"))
