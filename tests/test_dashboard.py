#!/usr/bin/python3
"""test_dashboard.py -- nllmd's dashboard page (daemon/dashboard.html, served
by daemon/http.c) in headless Chromium while a job trains.

Starts build/nllmd with --metrics 127.0.0.1:PORT, starts a tiny job through
build/nllmctl, waits for two finished epochs, then loads http://.../ with
`chromium --headless --dump-dom` (virtual time budget 5 s: the page's
fetches and its 2 s polling run) and checks the rendered DOM: the job's row
in #jobs, svg#loss-curve with a train and a validation polyline of >= 2
points and the best-epoch marker, svg#ppl-curve, the checkpoints table, the
job's peak device memory and the live status. Also saves a screenshot
(1280x900) as BUILD_DIR/dashboard.png and prints its path. Exits 77 (skip)
when chromium is not installed.

Usage: test_dashboard.py BUILD_DIR (meson passes it). Prints "N passed, M failed".
"""
import html.parser
import os
import shutil
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemonlib as dl  # noqa: E402

BUILD, NLLMD, NLLMCTL = dl.programs()
check = dl.check


def find_chromium():
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        p = shutil.which(name)
        if p:
            return p
    return None


class Dom(html.parser.HTMLParser):
    """Elements as (tag, attrs, ancestors' (tag, attrs)), and text per id."""

    def __init__(self):
        super().__init__()
        self.stack, self.elems, self.text = [], [], {}

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.elems.append((tag, a, list(self.stack)))
        if tag not in ("meta", "link", "br", "img", "input", "hr"):
            self.stack.append((tag, a))

    def handle_startendtag(self, tag, attrs):
        self.elems.append((tag, dict(attrs), list(self.stack)))

    def handle_endtag(self, tag):
        for i in range(len(self.stack) - 1, -1, -1):
            if self.stack[i][0] == tag:
                del self.stack[i:]
                break

    def handle_data(self, data):
        for _, a in self.stack:
            if "id" in a:
                self.text[a["id"]] = self.text.get(a["id"], "") + data

    def inside(self, tag, elem_id, **want):
        """Elements of this tag under the element with id elem_id."""
        out = []
        for t, a, anc in self.elems:
            if t == tag and any(x.get("id") == elem_id for _, x in anc) and \
                    all(a.get(k) == v for k, v in want.items()):
                out.append(a)
        return out


def npoints(points):
    return len([p for p in (points or "").split() if "," in p])


def chromium_cmd(chrome, profile, *extra):
    return [chrome, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
            "--no-first-run", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--disable-dev-shm-usage", "--user-data-dir=" + profile,
            "--virtual-time-budget=5000"] + list(extra)


def run(tmp, chrome):
    data = os.path.join(tmp, "train.txt")
    dl.corpus(data, 1500, 1)
    port = dl.free_port()
    base = "http://127.0.0.1:%d" % port
    d = dl.Daemon(NLLMD, NLLMCTL, tmp, "d", ["--metrics", "127.0.0.1:%d" % port])
    try:
        # long enough to keep training while the page loads; stopped at the end
        rc = d.ctl("start", "dash", "--data", data, "--epochs", "2000", "--patience", "0",
                   "--vocab", "30", "--embed-dim", "8", "--hidden-dim", "16", "--context-dim",
                   "8", "--layers", "2", "--seq-len", "16", "--batch", "4", "--save-every", "2",
                   "--threads", "1").rc
        check(rc == 0, "start job dash")
        job = dl.poll(lambda: dl.http_json(port, "/api/jobs/dash"),
                      lambda j: len(j.get("history", [])) >= 3 and j.get("checkpoints"), 300, 0.1)
        check(len(job.get("history", [])) >= 3, "job dash has %d epochs" %
              len(job.get("history", [])))

        profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp)
        r = subprocess.run(chromium_cmd(chrome, profile, "--dump-dom", base + "/"),
                           capture_output=True, text=True, timeout=180)
        dom = Dom()
        dom.feed(r.stdout)
        check(r.returncode == 0 and "<html" in r.stdout, "chromium --dump-dom (rc %d, %d bytes)"
              % (r.returncode, len(r.stdout)))
        rows = dom.inside("tr", "jobs")
        check(any(a.get("data-job") == "dash" for a in rows), "#jobs has the row of job dash")
        lines = {a.get("data-series"): npoints(a.get("points"))
                 for a in dom.inside("polyline", "loss-curve")}
        check(lines.get("train_loss", 0) >= 2 and lines.get("val_loss", 0) >= 2,
              "svg#loss-curve: train and val polylines with >= 2 points %s" % lines)
        check(len(dom.inside("circle", "loss-curve", **{"class": "best-marker"})) == 1,
              "svg#loss-curve: the best epoch is marked")
        ppl = {a.get("data-series"): npoints(a.get("points"))
               for a in dom.inside("polyline", "ppl-curve")}
        check(ppl.get("val_ppl", 0) >= 2, "svg#ppl-curve: val PPL polyline %s" % ppl)
        cks = [a.get("data-checkpoint") for a in dom.inside("tr", "checkpoints")
               if a.get("data-checkpoint")]
        check(len(cks) >= 1, "#checkpoints lists %s" % cks)
        check("dash" in dom.text.get("detail-title", ""), "the detail panel shows job dash")
        check(len(dom.inside("div", "jobs", **{"class": "small mem-peak"})) == 1 and
              "Peak device memory" in r.stdout,
              "the job's peak device memory in its row and in the detail panel")
        check(dom.text.get("status", "").startswith("live"),
              "status line: %r" % dom.text.get("status", ""))

        shot = os.path.abspath(os.path.join(BUILD, "dashboard.png"))
        if os.path.exists(shot):
            os.unlink(shot)
        profile = tempfile.mkdtemp(prefix="chromium-", dir=tmp)
        r = subprocess.run(chromium_cmd(chrome, profile, "--screenshot=" + shot,
                                        "--window-size=1280,900", base + "/"),
                           capture_output=True, text=True, timeout=180)
        ok = os.path.exists(shot) and os.path.getsize(shot) > 10000
        if ok:
            with open(shot, "rb") as f:
                ok = f.read(8) == b"\x89PNG\r\n\x1a\n"
        check(ok, "screenshot %s" % shot)
        print("screenshot: " + shot)

        check(d.ctl("stop", "dash").rc == 0, "stop job dash")
    finally:
        check(d.shutdown() == 0, "nllmd shutdown: exit 0")
        d.close()
        check(dl.sanitizer_clean(d.log_text()), "no sanitizer report in the daemon log")


if __name__ == "__main__":
    CHROME = find_chromium()
    if not CHROME:
        dl.skip("chromium is not installed (Debian package chromium)")
    sys.exit(dl.main(lambda tmp: run(tmp, CHROME), "nllm-dashboard-test-", NLLMD, NLLMCTL))
