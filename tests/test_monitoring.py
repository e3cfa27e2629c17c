#!/usr/bin/python3
"""test_monitoring.py -- the files of ops/ that read nllmd's /metrics.

  test_monitoring.py names BUILD_DIR   the Grafana dashboard
      (ops/grafana/nllm.json) has what Grafana needs (panels with targets,
      the datasource, instance and job_name variables, a repeated job row),
      and every metric and label name in its PromQL and in the alert rules
      (ops/prometheus/nllm.rules.yml) is one a real nllmd exports: nllmd is
      started on a temp state dir with --metrics 127.0.0.1:PORT and a tiny
      job, and its /metrics (# TYPE lines, sample labels) is the reference,
      so renaming a metric in daemon/http.c fails this test.
  test_monitoring.py rules             `promtool check rules` and `promtool
      test rules ops/prometheus/nllm.rules.test.yml` (skip, 77, without
      promtool: Debian's prometheus package, scripts/deps.sh --test).

Prints "N passed, M failed".
"""
import json
import os
import re
import shutil
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import daemonlib as dl  # noqa: E402

SRC = os.environ.get("NLLM_SOURCE_ROOT",
                     os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DASHBOARD = os.path.join(SRC, "ops", "grafana", "nllm.json")
RULES = os.path.join(SRC, "ops", "prometheus", "nllm.rules.yml")
RULES_TEST = os.path.join(SRC, "ops", "prometheus", "nllm.rules.test.yml")
# Names Prometheus itself adds: the scrape's `up` and its target labels.
PROMETHEUS_METRICS = {"up"}
PROMETHEUS_LABELS = {"instance", "job", "__name__"}
# Grafana's own variables.
GRAFANA_VARS = {"__rate_interval", "__interval", "__range", "__all"}
check = dl.check


# ---- PromQL names -----------------------------------------------------------

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left",
            "group_right", "bool", "offset", "inf", "nan"}


def promql_names(expr):
    """(metric names, label names) an expression uses; Grafana variables
    ($x, ${x}) count as opaque values."""
    e = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    labels = set()
    for m in re.finditer(r"\{([^}]*)\}", e):
        labels |= set(re.findall(r"([A-Za-z_]\w*)\s*(?:=~|!~|!=|=)", m.group(1)))
    e = re.sub(r"\{[^}]*\}", " ", e)
    e = re.sub(r"\[[^\]]*\]", " ", e)
    for m in re.finditer(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)", e):
        labels |= {x.strip() for x in m.group(1).split(",") if x.strip()}
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    metrics = set()
    for m in re.finditer(r"(?<![\w$.])([A-Za-z_:][\w:]*)\s*(\()?", e):
        if not m.group(2) and m.group(1).lower() not in KEYWORDS:
            metrics.add(m.group(1))
    return metrics, labels


def label_values_query(q):
    """label_values(EXPR, LABEL) or label_values(LABEL) -> (EXPR or '', LABEL)."""
    m = re.fullmatch(r"\s*label_values\((?:(.*),)?\s*(\w+)\s*\)\s*", q)
    return (m.group(1) or "", m.group(2)) if m else (None, None)


# ---- nllmd's /metrics -------------------------------------------------------

def label_names(text):
    """{family: set of its samples' label names} of /metrics text."""
    fams, samples = dl.parse_metrics(text)
    out = {f: set() for f, h in fams.items() if "type" in h}
    for name, labels, _ in samples:
        if name in out:
            out[name] |= set(labels)
    return out


def exported(nllmd, nllmctl, tmp):
    """{family: set of label names} from a real nllmd with one tiny job."""
    data = os.path.join(tmp, "train.txt")
    dl.corpus(data, 400, 1)
    port = dl.free_port()
    with dl.Daemon(nllmd, nllmctl, tmp, "d", ["--metrics", "127.0.0.1:%d" % port]) as d:
        check(d.ctl("start", "mon", "--data", data, "--epochs", "2", "--vocab", "30",
                    "--embed-dim", "8", "--hidden-dim", "16", "--context-dim", "8",
                    "--layers", "2", "--seq-len", "16", "--batch", "4", "--save-every", "1",
                    "--threads", "1").rc == 0, "start a tiny job")
        # a finished epoch and a checkpoint: every job family has a sample
        fams = dl.poll(lambda: label_names(dl.http_get(port, "/metrics")[2].decode()),
                       lambda f: "job_name" in f.get("nllm_job_val_loss", ()) and
                       "job_name" in f.get("nllm_job_seconds_since_checkpoint", ()), 120, 0.2)
        check(d.shutdown() == 0, "nllmd shut down cleanly")
    return fams


def check_exprs(where, exprs, fams, vars_ok):
    labels_ok = set(PROMETHEUS_LABELS)
    for v in fams.values():
        labels_ok |= v
    bad_m, bad_l, bad_v, empty = set(), set(), set(), []
    for e in exprs:
        ms, ls = promql_names(e)
        if not ms:
            empty.append(e)
        bad_m |= {m for m in ms if m not in fams and m not in PROMETHEUS_METRICS}
        bad_l |= ls - labels_ok
        bad_v |= {v for v in re.findall(r"\$\{?(\w+)", e) if v not in vars_ok}
    check(exprs and not empty, "%s: %d expressions, each names a metric %s" %
          (where, len(exprs), empty or ""))
    check(not bad_m, "%s: every metric is one nllmd exports %s" % (where, sorted(bad_m) or ""))
    check(not bad_l, "%s: every label is one nllmd (or Prometheus) sets %s" %
          (where, sorted(bad_l) or ""))
    check(not bad_v, "%s: every $variable is defined %s" % (where, sorted(bad_v) or ""))


def all_panels(panels):
    for p in panels:
        yield p
        yield from all_panels(p.get("panels", []))


def names(build):
    with open(DASHBOARD) as f:
        dash = json.load(f)
    # ---- structure Grafana needs ----
    check(dash.get("uid") and dash.get("title") and dash.get("id") is None and
          isinstance(dash.get("schemaVersion"), int),
          "dashboard: uid, title, schemaVersion, no id (provisioning)")
    tvars = {v.get("name"): v for v in dash.get("templating", {}).get("list", [])}
    ds = tvars.get("datasource", {})
    check(ds.get("type") == "datasource" and ds.get("query") == "prometheus",
          "dashboard: a Prometheus datasource variable")
    for name in ("instance", "job_name"):
        v = tvars.get(name, {})
        q = v.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        expr, label = label_values_query(q or "")
        check(v.get("type") == "query" and label == name and
              v.get("datasource", {}).get("uid") == "${datasource}",
              "dashboard: variable %s = label_values(..., %s) from ${datasource}" % (name, name))
    panels = list(all_panels(dash.get("panels", [])))
    rows = [p for p in panels if p.get("type") == "row"]
    data = [p for p in panels if p.get("type") != "row"]
    check(len(data) >= 8, "dashboard: %d panels" % len(data))
    check(any(r.get("repeat") == "job_name" for r in rows), "dashboard: a row repeated by job_name")
    ids = [p.get("id") for p in panels]
    check(len(set(ids)) == len(ids) and all(isinstance(i, int) for i in ids),
          "dashboard: panel ids unique")
    geo_ok = all(isinstance(p.get("gridPos"), dict) and
                 p["gridPos"].get("x", -1) >= 0 and p["gridPos"].get("w", 0) > 0 and
                 p["gridPos"]["x"] + p["gridPos"]["w"] <= 24 and p["gridPos"].get("h", 0) > 0
                 for p in panels)
    check(geo_ok, "dashboard: every panel has a gridPos within 24 columns")
    tgt_ok = all(p.get("title") and p.get("targets") and
                 all(t.get("expr") and t.get("refId") and
                     t.get("datasource", p.get("datasource", {})).get("uid") == "${datasource}"
                     for t in p["targets"]) and
                 len({t["refId"] for t in p["targets"]}) == len(p["targets"])
                 for p in data)
    check(tgt_ok, "dashboard: every panel has a title and targets (expr, refId, datasource)")
    titles = " | ".join(p.get("title", "") for p in data).lower()
    for want in ("jobs by state", "tokens per second", "gpu memory", "loss", "perplexity",
                 "epoch progress", "since the last checkpoint", "checkpoint failures"):
        check(want in titles, "dashboard: a panel '%s'" % want)

    exprs = [t["expr"] for p in data for t in p.get("targets", []) if t.get("expr")]
    for name in ("instance", "job_name"):
        q = tvars.get(name, {}).get("query")
        q = q.get("query") if isinstance(q, dict) else q
        expr, _ = label_values_query(q or "")
        if expr:
            exprs.append(expr)
    vars_ok = set(tvars) | GRAFANA_VARS

    # ---- rules file: its expressions ----
    rule_exprs = []
    import yaml  # python3-yaml
    with open(RULES) as f:
        rules = yaml.safe_load(f)
    for g in rules.get("groups", []):
        for r in g.get("rules", []):
            rule_exprs.append(r["expr"])
    alerts = {r.get("alert") for g in rules["groups"] for r in g["rules"]}
    check({"NllmDaemonDown", "NllmJobFailed", "NllmCheckpointFailures", "NllmNoTrainingProgress",
           "NllmCheckpointOverdue", "NllmValLossNotFinite", "NllmGpuMemoryNearlyFull"} <= alerts,
          "rules: the seven alerts")

    # ---- names against a real nllmd ----
    _, nllmd, nllmctl = dl.programs(build)
    dl.need(nllmd, nllmctl)
    with dl.tmpdir("nllm-monitoring-test-") as tmp:
        fams = exported(nllmd, nllmctl, tmp)
        check(len(fams) >= 30 and "job_name" in fams.get("nllm_job_state", ()),
              "nllmd exported %d families, job samples labelled job_name" % len(fams))
        check_exprs("dashboard", exprs, fams, vars_ok)
        check_exprs("rules", rule_exprs, fams, set())


def rules():
    promtool = shutil.which("promtool")
    if not promtool:
        dl.skip("promtool not installed (Debian package prometheus; scripts/deps.sh --test)")
    for args in (["check", "rules", RULES], ["test", "rules", RULES_TEST]):
        r = subprocess.run([promtool] + args, capture_output=True, text=True, timeout=120,
                           cwd=os.path.dirname(RULES))
        print(r.stdout + r.stderr, end="")
        check(r.returncode == 0, "promtool " + " ".join(args[:2]))


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else ""
    if mode == "names":
        names(sys.argv[2] if len(sys.argv) > 2 else "build")
    elif mode == "rules":
        rules()
    else:
        print(__doc__)
        return 2
    return dl.report()


if __name__ == "__main__":
    sys.exit(main())
