#!/usr/bin/python3
"""parity.py -- nllm against PyTorch on the model of docs/model.md (fixture test).

Builds small cases (random weights, pad targets, dropout with nllm's Philox
masks, contexts that hit the +-10 clamp, weight decay, clipping), writes each
as IN.safetensors, runs `nllm-parity IN OUT`, and compares loss, accuracy,
logits, grad_norm, every gradient and every parameter after Adam against
bench/torch_model.py (reference in float64 by default). Relative error of a
tensor = max|a-b| / max(max|b|, 1e-6); pass if <= --tol (1e-4).
Usage: parity.py [NLLM_PARITY] (or env NLLM_PARITY); --self checks the harness
against the float32 PyTorch model instead of the C tool. Exit 0/1, 77 = skip.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(HERE), "bench"))

try:
    import numpy as np
    import torch
except ImportError as e:  # meson: 77 = skipped
    print("parity: skipped, needs numpy and torch (%s); run with /usr/bin/python3" % e)
    sys.exit(77)

import st  # noqa: E402
from torch_model import ContextVectorLM, lm_accuracy, lm_loss, make_adam  # noqa: E402

TINY = dict(vocab_size=37, embed_dim=8, hidden_dim=16, context_dim=12, num_layers=3,
            max_seq_length=9)


def case_list():
    """Each case: config, batch, weight init, window shape, run settings."""
    c = []

    def add(name, dropout=0.0, train=1, std=0.02, bias_std=0.0, gamma=1.0, beta=0.0,
            lr=1e-3, max_norm=0.5, wd=0.0, adam_steps=3, seed=42, step=0, batch=4,
            rng=0, cfg=None, pads="tail", want_clamp=False):
        conf = dict(TINY if cfg is None else cfg)
        conf["dropout"] = dropout
        c.append(dict(name=name, cfg=conf, batch=batch, std=std, bias_std=bias_std,
                      gamma=gamma, beta=beta, lr=lr, max_norm=max_norm, wd=wd,
                      adam_steps=adam_steps, seed=seed, step=step, train=train, rng=rng,
                      pads=pads, want_clamp=want_clamp))

    # model.md init (std 0.02, biases 0, LN 1/0), no dropout
    add("init-p0", rng=1)
    # larger random weights and biases, dropout 0.3 with Philox masks, 64-bit seed
    add("drop-p0.3", dropout=0.3, std=0.2, bias_std=0.1, seed=0x1234567890AB, step=17, rng=2)
    # same dropout setting but eval mode: dropout must be the identity
    add("eval-p0.3", dropout=0.3, train=0, std=0.2, bias_std=0.1, rng=3)
    # gamma 5, beta 4: normalised contexts above 10 get clamped
    add("clamp-p0", std=0.3, bias_std=0.2, gamma=5.0, beta=4.0, rng=4, want_clamp=True)
    add("clamp-p0.3", dropout=0.3, std=0.3, bias_std=0.2, gamma=5.0, beta=4.0, seed=7,
        step=1000, rng=5, want_clamp=True)
    # weight decay; max_norm large so the clip factor is 1
    add("wd-noclip", dropout=0.1, std=0.1, bias_std=0.05, wd=0.01, max_norm=100.0, seed=3,
        step=2, rng=6)
    # odd sizes: one layer, B*T*H not a multiple of 4, pads inside the window
    add("odd-L1", dropout=0.25, std=0.3, bias_std=0.1, batch=3, seed=11, step=5, rng=7,
        cfg=dict(vocab_size=50, embed_dim=5, hidden_dim=7, context_dim=3, num_layers=1,
                 max_seq_length=6), pads="inner")
    # deeper, longer window
    add("deep-L5", dropout=0.1, std=0.15, bias_std=0.05, batch=2, seed=99, step=3, rng=8,
        cfg=dict(vocab_size=23, embed_dim=6, hidden_dim=10, context_dim=9, num_layers=5,
                 max_seq_length=17), adam_steps=2)
    return c


def build_inputs(case):
    """Random weights (float32) and windows for one case -> (tensors, metadata)."""
    cfg = case["cfg"]
    gen = torch.Generator().manual_seed(1000 + case["rng"])
    m = ContextVectorLM.from_config(cfg)
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name == "context_norm.weight":
                p.fill_(case["gamma"])
            elif name == "context_norm.bias":
                p.fill_(case["beta"])
            elif name.endswith("bias"):
                p.normal_(0.0, case["bias_std"], generator=gen) if case["bias_std"] else p.zero_()
            else:
                p.normal_(0.0, case["std"], generator=gen)
    B, S, V = case["batch"], cfg["max_seq_length"], cfg["vocab_size"]
    win = torch.randint(1, V, (B, S), generator=gen, dtype=torch.int64)
    if case["pads"] == "tail":
        win[1, S // 2:] = 0               # a short paragraph, right-padded
        if B > 2:
            win[2, -1] = 0
    else:
        win[0, 2] = 0                     # pad ids anywhere, as input and target
        win[B - 1, -2:] = 0
    tensors = {k: v.detach().numpy().astype(np.float32) for k, v in m.state_dict().items()}
    tensors["input_ids"] = win.numpy().astype(np.int32)
    meta = {
        "config": json.dumps(cfg),
        "seed": str(case["seed"]),
        "step": str(case["step"]),
        "train": str(case["train"]),
        "lr": repr(case["lr"]),
        "max_norm": repr(case["max_norm"]),
        "weight_decay": repr(case["wd"]),
        "adam_steps": str(case["adam_steps"]),
    }
    return tensors, meta


def reference(tensors, meta, dtype=torch.float64):
    """What nllm-parity must produce, computed with PyTorch (+ clamp count)."""
    cfg = json.loads(meta["config"])
    m = ContextVectorLM.from_config(cfg, dropout_mode="philox").to(dtype)
    m.load_state_dict({k: torch.from_numpy(v.astype(np.float32)).to(dtype)
                       for k, v in tensors.items() if k != "input_ids"})
    train = meta["train"] == "1"
    m.train(train)
    win = torch.from_numpy(tensors["input_ids"].astype(np.int64))
    x, y = win[:, :-1], win[:, 1:]
    opt = make_adam(m, lr=float(meta["lr"]), weight_decay=float(meta["weight_decay"]))
    seed, step = int(meta["seed"]), int(meta["step"])
    out = {}
    clamped = [0]
    hook = m.context_norm.register_forward_hook(
        lambda mod, inp, o: clamped.__setitem__(0, clamped[0] + int((o.abs() > 10).sum())))
    nsteps = int(meta["adam_steps"])

    def fwd_bwd(i):
        m.set_philox(seed, step + i)
        logits = m(x)
        loss = lm_loss(logits, y)
        opt.zero_grad(set_to_none=False)
        loss.backward()
        return logits, loss

    logits, loss = fwd_bwd(0)
    hook.remove()
    f32 = lambda t: t.detach().to(torch.float32).numpy().copy()  # noqa: E731
    out["loss"] = np.array([float(loss)], np.float32)
    out["accuracy"] = np.array([lm_accuracy(logits, y)], np.float32)
    out["logits"] = f32(logits)
    for name, p in m.named_parameters():
        out["grad." + name] = f32(p.grad)
    gn = torch.nn.utils.clip_grad_norm_(m.parameters(), float(meta["max_norm"]))
    out["grad_norm"] = np.array([float(gn)], np.float32)
    for i in range(nsteps):
        if i > 0:
            fwd_bwd(i)
            torch.nn.utils.clip_grad_norm_(m.parameters(), float(meta["max_norm"]))
        opt.step()
    for name, p in m.named_parameters():
        out["updated." + name] = f32(p)
    return out, clamped[0]


def rel_err(a, b):
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(float(np.max(np.abs(b))), 1e-6))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("nllm_parity", nargs="?", default=os.environ.get("NLLM_PARITY"),
                    help="path of the nllm-parity tool (default: $NLLM_PARITY)")
    ap.add_argument("--self", dest="self_check", action="store_true",
                    help="compare the float32 PyTorch model instead of nllm-parity")
    ap.add_argument("--ref", choices=["float64", "float32"], default="float64")
    ap.add_argument("--tol", type=float, default=1e-4)
    ap.add_argument("--keep", metavar="DIR", help="write the IN/OUT files to DIR and keep them")
    ap.add_argument("--case", action="append", help="run only the named case(s)")
    a = ap.parse_args(argv)
    if not a.self_check:
        if not a.nllm_parity:
            ap.error("give the path of nllm-parity (argument or NLLM_PARITY), or --self")
        if not os.access(a.nllm_parity, os.X_OK):
            print("parity: %s is not an executable file" % a.nllm_parity)
            return 1
    torch.set_num_threads(1)
    ref_dtype = torch.float64 if a.ref == "float64" else torch.float32
    tmp = None
    if a.keep:
        os.makedirs(a.keep, exist_ok=True)
        workdir = a.keep
    else:
        tmp = tempfile.TemporaryDirectory(prefix="nllm-parity-")
        workdir = tmp.name
    passed = failed = 0

    def verdict(ok, line):
        nonlocal passed, failed
        passed += ok
        failed += not ok
        print("%s  %s" % ("ok  " if ok else "FAIL", line), flush=True)

    for case in case_list():
        if a.case and case["name"] not in a.case:
            continue
        name = case["name"]
        tensors, meta = build_inputs(case)
        inp = os.path.join(workdir, name + ".in.safetensors")
        outp = os.path.join(workdir, name + ".out.safetensors")
        st.write(inp, tensors, meta)
        if os.path.exists(outp):
            os.unlink(outp)
        print("# case %s: %s B=%d train=%s seed=%s step=%s lr=%s max_norm=%s wd=%s adam_steps=%s"
              % (name, meta["config"], case["batch"], meta["train"], meta["seed"], meta["step"],
                 meta["lr"], meta["max_norm"], meta["weight_decay"], meta["adam_steps"]),
              flush=True)
        try:
            if a.self_check:
                t_in, m_in = st.read(inp)
                got32, _ = reference(t_in, m_in, torch.float32)
                st.write(outp, got32)
            else:
                r = subprocess.run([a.nllm_parity, inp, outp], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True, timeout=300)
                if r.returncode != 0:
                    verdict(False, "%s: nllm-parity exited %d: %s" % (
                        name, r.returncode, r.stdout.strip()[-2000:]))
                    continue
            got, _ = st.read(outp)
        except Exception as e:  # a crash or a corrupt OUT is one failure, not a traceback
            verdict(False, "%s: %s: %s" % (name, type(e).__name__, e))
            continue
        t_in, m_in = st.read(inp)          # the reference reads what nllm read
        want, clamped = reference(t_in, m_in, ref_dtype)
        if case["want_clamp"]:
            verdict(clamped > 0, "%s: %d context entries beyond +-10 (clamp exercised)"
                    % (name, clamped))
        for key, b in want.items():
            if key not in got:
                verdict(False, "%s %-32s missing from OUT" % (name, key))
                continue
            g = got[key]
            if g.dtype != np.float32 or tuple(g.shape) != tuple(b.shape):
                verdict(False, "%s %-32s is %s %s, want F32 %s"
                        % (name, key, g.dtype, list(g.shape), list(b.shape)))
                continue
            if not np.all(np.isfinite(g)):
                verdict(False, "%s %-32s has non-finite values" % (name, key))
                continue
            e = rel_err(g, b)
            verdict(e <= a.tol, "%s %-32s rel err %.3e" % (name, key, e))
    print("%d passed, %d failed" % (passed, failed))
    if tmp is not None:
        tmp.cleanup()
    return 1 if failed or passed == 0 else 0


if __name__ == "__main__":
    sys.exit(main())
