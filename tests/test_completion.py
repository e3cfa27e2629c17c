#!/usr/bin/python3
"""test_completion.py -- ops/completion/nllmctl.bash against the real
nllmctl and nllmd: the script is sourced in `bash -c` with COMP_WORDS and
COMP_CWORD set, _nllmctl runs, COMPREPLY is printed. Checks commands
(`nllmctl sta` -> start status), flags (`nllmctl start --ep` -> --epochs,
read from nllmctl's help through `nllmctl __complete`), every command's
flags are ones `nllmctl help CMD` names, job names from a running nllmd
with two jobs, checkpoint names for resume, and nothing (quietly) when no daemon
answers. With zsh installed, the same for ops/completion/_nllmctl (compadd
stubbed).

Usage: test_completion.py BUILD_DIR. Prints "N passed, M failed".
"""
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

BUILD = os.path.abspath(sys.argv[1] if len(sys.argv) > 1 else "build")
SRC = os.environ.get("NLLM_SOURCE_ROOT",
                     os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASH_COMPLETION = os.path.join(SRC, "ops", "completion", "nllmctl.bash")
ZSH_COMPLETION = os.path.join(SRC, "ops", "completion", "_nllmctl")
NLLMD, NLLMCTL = os.path.join(BUILD, "nllmd"), os.path.join(BUILD, "nllmctl")
passed = failed = 0


def check(cond, what):
    global passed, failed
    if cond:
        passed += 1
        print("ok   " + what, flush=True)
    else:
        failed += 1
        print("FAIL " + what, flush=True)
    return cond


def complete(*words):
    """COMPREPLY for the command line words (the last is the word being
    completed), with build/ first on PATH."""
    script = ('source "$1"; shift; COMP_WORDS=("$@"); COMP_CWORD=$((${#COMP_WORDS[@]} - 1)); '
              '_nllmctl; printf "%s\\n" "${COMPREPLY[@]}"')
    env = dict(os.environ, PATH=BUILD + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run(["bash", "-c", script, "x", BASH_COMPLETION] + list(words),
                       capture_output=True, text=True, timeout=60, env=env)
    return r.returncode, [w for w in r.stdout.split("\n") if w], r.stderr


def zcomplete(*words):
    """The same through zsh's _nllmctl, with compadd and _files stubbed
    (they exist only inside a completion widget; the stub keeps, as compadd
    does, the words that start with the one being completed)."""
    script = ('compadd() { [[ $1 == -- ]] && shift; local w; for w in "$@"; do '
              '[[ $w == ${words[CURRENT]}* ]] && print -r -- $w; done; }; _files() { :; }; '
              'f=$1; shift; words=("$@"); CURRENT=$#words; source $f')
    env = dict(os.environ, PATH=BUILD + os.pathsep + os.environ.get("PATH", ""))
    r = subprocess.run(["zsh", "-f", "-c", script, "x", ZSH_COMPLETION] + list(words),
                       capture_output=True, text=True, timeout=60, env=env)
    return r.returncode, [w for w in r.stdout.split("\n") if w], r.stderr


def main():
    if not shutil.which("bash"):
        print("SKIP: bash is not installed")
        return 77
    if not (os.access(NLLMD, os.X_OK) and os.access(NLLMCTL, os.X_OK)):
        print("SKIP: nllmd or nllmctl is not built in " + BUILD)
        return 77
    tmp = tempfile.mkdtemp(prefix="nllm-completion-test-")
    try:
        run(tmp)
    finally:
        if failed == 0:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print("kept " + tmp)
    print("%d passed, %d failed" % (passed, failed))
    return 1 if failed else 0


def run(tmp):
    rc, got, err = complete("nllmctl", "sta")
    check(rc == 0 and sorted(got) == ["start", "status"] and not err,
          "nllmctl sta -> %s %s" % (got, err.strip()))
    rc, got, _ = complete("nllmctl", "start", "--ep")
    check(got == ["--epochs"], "nllmctl start --ep -> %s" % got)
    rc, got, _ = complete("nllmctl", "resume", "j", "--re")
    check(got == ["--reset-patience"], "nllmctl resume j --re -> %s" % got)
    rc, got, _ = complete("nllmctl", "plot", "j", "-")
    check("-o" in got and "--output" in got and "--socket" in got and "--epochs" not in got,
          "nllmctl plot j - -> %s" % got)
    rc, got, _ = complete("nllmctl", "help", "chec")
    check(got == ["checkpoints"], "nllmctl help chec -> %s" % got)
    rc, got, _ = complete("nllmctl", "start", "j", "--precision", "")
    check(sorted(got) == ["bf16", "fp32", "tf32"], "--precision values %s" % got)

    # every command's flags, as the completion offers them, are in its --help
    cmds = subprocess.run([NLLMCTL, "__complete", "commands"], capture_output=True,
                          text=True).stdout.split()
    check(len(cmds) >= 15 and "start" in cmds and "generate" in cmds,
          "__complete commands: %d commands" % len(cmds))
    stale = []
    for c in cmds:
        helptext = subprocess.run([NLLMCTL, "help", c], capture_output=True, text=True).stdout
        flags = subprocess.run([NLLMCTL, "__complete", "flags", c], capture_output=True,
                               text=True).stdout.split()
        stale += ["%s %s" % (c, f) for f in flags if f not in helptext]
        if not flags:
            stale.append(c + " (no flags)")
    check(not stale, "every completed flag is in `nllmctl help CMD` %s" % (stale or ""))

    # job and checkpoint names from a real daemon
    sock = os.path.join(tmp, "d.sock")
    missing = os.path.join(tmp, "none.sock")
    rc, got, err = complete("nllmctl", "--socket", missing, "status", "")
    check(rc == 0 and got == [] and not err, "no daemon: no names, quietly (%s)" % err.strip())
    data = os.path.join(tmp, "train.txt")
    rnd = random.Random(1)
    words = "the king queen lord sword crown river night day sun moon".split()
    with open(data, "w") as f:
        for _ in range(300):
            f.write(" ".join(rnd.choice(words) for _ in range(8)) + "\n")
    log = open(os.path.join(tmp, "d.log"), "a")
    p = subprocess.Popen([NLLMD, "--state-dir", os.path.join(tmp, "state"), "--socket", sock,
                          "--devices", "cpu", "--threads", "1", "--metrics", "none"],
                         stdout=log, stderr=log)

    def ctl(*args):
        return subprocess.run([NLLMCTL, "--socket", sock] + list(args), capture_output=True,
                              text=True, timeout=120).returncode

    try:
        for _ in range(400):
            if p.poll() is not None:
                raise RuntimeError("nllmd exited; see " + log.name)
            if os.path.exists(sock) and ctl("hello") == 0:
                break
            time.sleep(0.05)
        tiny = ["--epochs", "1", "--vocab", "30", "--embed-dim", "8", "--hidden-dim", "16",
                "--context-dim", "8", "--layers", "2", "--seq-len", "16", "--batch", "4",
                "--threads", "1"]
        check(ctl("start", "alpha", "--data", data, *tiny) == 0 and
              ctl("start", "beta.2", "--data", data, *tiny) == 0, "start jobs alpha and beta.2")
        rc, got, _ = complete("nllmctl", "--socket", sock, "status", "")
        check(sorted(got) == ["alpha", "beta.2"], "nllmctl status <TAB> -> %s" % got)
        rc, got, _ = complete("nllmctl", "--socket=" + sock, "watch", "be")
        check(got == ["beta.2"], "nllmctl --socket=S watch be -> %s" % got)
        rc, got, _ = complete("nllmctl", "--socket", sock, "status", "alpha", "")
        check(got == [], "a second name is not offered (%s)" % got)
        t = time.time()
        while time.time() - t < 120:
            rc, got, _ = complete("nllmctl", "--socket", sock, "resume", "alpha", "")
            if "final" in got:
                break
            time.sleep(0.2)
        check("best" in got and "final" in got, "nllmctl resume alpha <TAB> -> %s" % got)
        rc, got, _ = complete("nllmctl", "--socket", sock, "generate", "alpha", "--checkpoint",
                              "b")
        check(got == ["best"], "generate alpha --checkpoint b -> %s" % got)
        if shutil.which("zsh"):
            rc, got, err = zcomplete("nllmctl", "--socket", sock, "status", "")
            check(sorted(got) == ["alpha", "beta.2"], "zsh: nllmctl status <TAB> -> %s %s" %
                  (got, err.strip()))
        ctl("shutdown")
        check(p.wait(120) == 0, "nllmd shut down cleanly")
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
        log.close()

    if not shutil.which("zsh"):
        print("skip zsh: zsh is not installed")
        return
    r = subprocess.run(["zsh", "-n", ZSH_COMPLETION], capture_output=True, text=True)
    check(r.returncode == 0, "zsh -n _nllmctl %s" % r.stderr.strip())
    rc, got, err = zcomplete("nllmctl", "sta")
    check(sorted(got) == ["start", "status"], "zsh: nllmctl sta -> %s %s" % (got, err.strip()))
    rc, got, err = zcomplete("nllmctl", "start", "--ep")
    check(got == ["--epochs"], "zsh: nllmctl start --ep -> %s %s" % (got, err.strip()))

if __name__ == "__main__":
    sys.exit(main())
