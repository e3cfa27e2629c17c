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
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemonlib as dl  # noqa: E402

BUILD, NLLMD, NLLMCTL = dl.programs()
SRC = os.environ.get("NLLM_SOURCE_ROOT",
                     os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BASH_COMPLETION = os.path.join(SRC, "ops", "completion", "nllmctl.bash")
ZSH_COMPLETION = os.path.join(SRC, "ops", "completion", "_nllmctl")
check = dl.check


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
    missing = os.path.join(tmp, "none.sock")
    rc, got, err = complete("nllmctl", "--socket", missing, "status", "")
    check(rc == 0 and got == [] and not err, "no daemon: no names, quietly (%s)" % err.strip())
    data = os.path.join(tmp, "train.txt")
    dl.corpus(data, 300, 1)
    with dl.Daemon(NLLMD, NLLMCTL, tmp, "d", ["--metrics", "none"]) as d:
        sock = d.sock
        tiny = ["--epochs", "1", "--vocab", "30", "--embed-dim", "8", "--hidden-dim", "16",
                "--context-dim", "8", "--layers", "2", "--seq-len", "16", "--batch", "4",
                "--threads", "1"]
        check(d.ctl("start", "alpha", "--data", data, *tiny).rc == 0 and
              d.ctl("start", "beta.2", "--data", data, *tiny).rc == 0,
              "start jobs alpha and beta.2")
        rc, got, _ = complete("nllmctl", "--socket", sock, "status", "")
        check(sorted(got) == ["alpha", "beta.2"], "nllmctl status <TAB> -> %s" % got)
        rc, got, _ = complete("nllmctl", "--socket=" + sock, "watch", "be")
        check(got == ["beta.2"], "nllmctl --socket=S watch be -> %s" % got)
        rc, got, _ = complete("nllmctl", "--socket", sock, "status", "alpha", "")
        check(got == [], "a second name is not offered (%s)" % got)
        got = dl.poll(lambda: complete("nllmctl", "--socket", sock, "resume", "alpha", "")[1],
                      lambda g: "final" in g, 120, 0.2)
        check("best" in got and "final" in got, "nllmctl resume alpha <TAB> -> %s" % got)
        rc, got, _ = complete("nllmctl", "--socket", sock, "generate", "alpha", "--checkpoint",
                              "b")
        check(got == ["best"], "generate alpha --checkpoint b -> %s" % got)
        if shutil.which("zsh"):
            rc, got, err = zcomplete("nllmctl", "--socket", sock, "status", "")
            check(sorted(got) == ["alpha", "beta.2"], "zsh: nllmctl status <TAB> -> %s %s" %
                  (got, err.strip()))
        check(d.shutdown() == 0, "nllmd shut down cleanly")

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
    if not shutil.which("bash"):
        dl.skip("bash is not installed")
    sys.exit(dl.main(run, "nllm-completion-test-", NLLMD, NLLMCTL))
