#!/usr/bin/python3
"""ckpt_torch.py -- a checkpoint written by nllm loads into the research
code's PyTorch model and reproduces the validation loss nllm recorded.

Trains a small job with `nllmd run` (train and validation files given), loads
`{job}_final.safetensors` with tests/st.py into bench/torch_model.py's
ContextVectorLM by the model.md names, re-tokenizes the validation text with
the checkpoint's own vocabulary (model.md rules), and compares the
token-weighted validation loss and accuracy with the last entries of
val_losses / val_accs in the checkpoint's metadata (1e-4 relative).

Usage: ckpt_torch.py BUILD_DIR. Exit 77 (skip) without python3-torch/numpy.
"""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(HERE, "..", "bench"))
try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch_model import ContextVectorLM
except ImportError as e:  # pragma: no cover
    print("SKIP: PyTorch/numpy not available (%s): install python3-torch" % e)
    sys.exit(77)
import st  # noqa: E402


def windows(ids, S):
    if len(ids) <= S:
        return [ids + [0] * (S - len(ids))]
    return [ids[s:s + S] for s in range(0, len(ids) - S + 1, S // 2)]


def main():
    build = sys.argv[1] if len(sys.argv) > 1 else "build"
    nllmd = os.path.join(build, "nllmd")
    if not os.access(nllmd, os.X_OK):
        print("SKIP: %s not built" % nllmd)
        return 77
    tmp = tempfile.mkdtemp(prefix="nllm-ckpt-torch-")
    rnd = random.Random(5)
    words = ("Alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi "
             "omicron pi rho sigma tau upsilon phi chi psi omega").split()
    for name, n in (("train.txt", 900), ("val.txt", 120)):
        with open(os.path.join(tmp, name), "w") as f:
            for _ in range(n):
                f.write(" ".join(rnd.choice(words) for _ in range(rnd.randint(3, 30))) + "\n")
    S = 12
    cmd = [nllmd, "run", "--state-dir", os.path.join(tmp, "state"), "tj",
           "--data", os.path.join(tmp, "train.txt"), "--val", os.path.join(tmp, "val.txt"),
           "--vocab", "20", "--embed-dim", "8", "--hidden-dim", "16", "--context-dim", "8",
           "--layers", "2", "--seq-len", str(S), "--batch", "8", "--epochs", "3",
           "--lr", "0.003", "--dropout", "0.2", "--threads", "1"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    if r.returncode != 0:
        print("FAIL nllmd run exited %d: %s %s" % (r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
        return 1
    path = os.path.join(tmp, "state", "jobs", "tj", "checkpoints", "tj_final.safetensors")
    tensors, meta = st.read(path)
    cfg = json.loads(meta["config"])
    vocab = json.loads(meta["tokenizer"])
    model = ContextVectorLM.from_config(cfg)
    sd = {k: torch.from_numpy(np.array(v)) for k, v in tensors.items()
          if not k.startswith("optimizer.")}
    missing = model.load_state_dict(sd, strict=True)
    print("ok   state_dict loads strictly (%s)" % (missing,))
    model.eval()
    ids_of = {w: i + 4 for i, w in enumerate(vocab["words"])}
    wins = []
    with open(os.path.join(tmp, "val.txt"), encoding="utf-8") as f:
        for line in f.read().split("\n"):
            ws = line.lower().split()
            if len(ws) < 5:
                continue
            wins += windows([2] + [ids_of.get(w, 1) for w in ws] + [3], S)
    x = torch.tensor(wins, dtype=torch.long)
    with torch.no_grad():
        logits = model(x[:, :-1])
        tgt = x[:, 1:]
        V = logits.shape[-1]
        loss_sum = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1), ignore_index=0,
                                   reduction="sum").item()
        n = int((tgt != 0).sum())
        hits = int(((logits.argmax(-1) == tgt) & (tgt != 0)).sum())
    loss, acc = loss_sum / n, hits / n
    rec_loss = json.loads(meta["val_losses"])[-1]
    rec_acc = json.loads(meta["val_accs"])[-1]
    rel = abs(loss - rec_loss) / abs(rec_loss)
    ok1 = rel < 1e-4
    ok2 = abs(acc - rec_acc) < 1e-9 or abs(acc - rec_acc) <= 1.0 / n
    print("%s validation loss: PyTorch %.8f, nllm recorded %.8f (rel err %.2e, %d windows)" %
          ("ok  " if ok1 else "FAIL", loss, rec_loss, rel, len(wins)))
    print("%s validation accuracy: PyTorch %.6f, nllm recorded %.6f" %
          ("ok  " if ok2 else "FAIL", acc, rec_acc))
    good = ok1 and ok2
    print("%d passed, %d failed" % (int(ok1) + int(ok2) + 1, 2 - int(ok1) - int(ok2)))
    if good:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
