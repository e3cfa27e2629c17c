#!/usr/bin/python3
"""torch_model.py -- the context-vector language model (docs/model.md) in PyTorch.

Owns ContextVectorLM (state_dict names as model.md), a numpy Philox4x32-10
identical to kernels/nllm_math.h (so "philox" dropout masks equal nllm's bit
for bit), the loss/accuracy of model.md and one Adam training step. Used by
bench/torch_bench.py (speed baseline) and tests/parity.py (reference values).
"""
import contextlib
import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

# ---- Philox4x32-10, as nllm_math.h ------------------------------------------

_M32 = np.uint64(0xFFFFFFFF)
_PHILOX_M0 = np.uint64(0xD2511F53)
_PHILOX_M1 = np.uint64(0xCD9E8D57)
_PHILOX_W0 = 0x9E3779B9
_PHILOX_W1 = 0xBB67AE85


def philox4x32_10(c0, c1, c2, c3, k0, k1):
    """Philox4x32-10 on (broadcastable) counter words c0..c3 and key (k0, k1).

    Returns four uint32 arrays. All arithmetic is done in uint64 so the
    32x32->64 products are exact."""
    c0, c1, c2, c3 = (np.asarray(x, dtype=np.uint64) & _M32 for x in (c0, c1, c2, c3))
    c0, c1, c2, c3 = np.broadcast_arrays(c0, c1, c2, c3)
    k0 = int(k0) & 0xFFFFFFFF
    k1 = int(k1) & 0xFFFFFFFF
    for _ in range(10):
        p0 = _PHILOX_M0 * c0
        p1 = _PHILOX_M1 * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0),
                          p1 & _M32,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1),
                          p0 & _M32)
        k0 = (k0 + _PHILOX_W0) & 0xFFFFFFFF
        k1 = (k1 + _PHILOX_W1) & 0xFFFFFFFF
    return tuple(x.astype(np.uint32) for x in (c0, c1, c2, c3))


def rng_block(seed, stream, step, blk):
    """nllm_rng_block: counter {blk lo, blk hi, stream, step}, key {seed lo, seed hi}.
    `blk` may be an array; returns a [..., 4] uint32 array."""
    seed = int(seed) & 0xFFFFFFFFFFFFFFFF
    blk = np.asarray(blk, dtype=np.uint64)
    w = philox4x32_10(blk & _M32, blk >> np.uint64(32), int(stream) & 0xFFFFFFFF,
                      int(step) & 0xFFFFFFFF, seed & 0xFFFFFFFF, seed >> 32)
    return np.stack(w, axis=-1)


def dropout_scale(p):
    """nllm_dropout_scale: 1/(1-p) computed in float32."""
    p = np.float32(p)
    return np.float32(1.0) / (np.float32(1.0) - p) if p > 0 else np.float32(1.0)


def philox_keep_mask(seed, stream, step, B, T, H, p):
    """Boolean [B, T, H] keep mask, equal to nllm_dropout_keep for every element:
    element idx = (b*T + t)*H + j is kept iff u01(word idx%4 of block idx/4) >= p."""
    n = B * T * H
    nblk = (n + 3) // 4
    words = rng_block(seed, stream, step, np.arange(nblk, dtype=np.uint64)).reshape(-1)[:n]
    u = (words >> np.uint32(8)).astype(np.float32) * np.float32(1.0 / 16777216.0)
    return (u >= np.float32(p)).reshape(B, T, H)


# ---- the model -----------------------------------------------------------------

class ContextVectorLM(nn.Module):
    """model.md v1. forward(input_ids [B, T]) -> logits [B, T, V].

    dropout_mode: "torch" uses the nn.Dropout modules (benchmark); "philox"
    uses nllm's counter-based masks for (seed, step) set by set_philox(), stream
    k for the dropout after the k-th Linear. fast=True computes the same
    function with the position-independent work batched over all positions
    (embedding half of layer 0, output head) and the three context heads fused
    into one matmul; fast=False is the literal per-position loop."""

    def __init__(self, vocab_size=1000, embed_dim=256, hidden_dim=512, context_dim=512,
                 num_layers=12, dropout=0.1, fast=False, dropout_mode="torch"):
        super().__init__()
        self.vocab_size = vocab_size
        self.embed_dim = embed_dim
        self.hidden_dim = hidden_dim
        self.context_dim = context_dim
        self.num_layers = num_layers
        self.dropout = float(dropout)
        self.fast = fast
        self.dropout_mode = dropout_mode
        self.philox_seed = 0
        self.philox_step = 0

        self.token_embedding = nn.Embedding(vocab_size, embed_dim)
        layers = []
        for k in range(num_layers):
            layers += [nn.Linear(embed_dim + context_dim if k == 0 else hidden_dim, hidden_dim),
                       nn.ReLU(), nn.Dropout(self.dropout)]
        self.fnn_layers = nn.Sequential(*layers)
        self.token_output = nn.Linear(hidden_dim, vocab_size)
        self.context_update = nn.Linear(hidden_dim, context_dim)
        self.forget_gate = nn.Linear(hidden_dim, context_dim)
        self.input_gate = nn.Linear(hidden_dim, context_dim)
        self.context_norm = nn.LayerNorm(context_dim, eps=1e-5)
        self.init_weights()

    @staticmethod
    def from_config(cfg, **kw):
        return ContextVectorLM(cfg["vocab_size"], cfg["embed_dim"], cfg["hidden_dim"],
                               cfg["context_dim"], cfg["num_layers"], cfg.get("dropout", 0.0),
                               **kw)

    def init_weights(self, generator=None, std=0.02):
        """model.md init: weights and embedding ~ N(0, std), biases 0, LN (1, 0)."""
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("context_norm."):
                    p.fill_(1.0 if name.endswith("weight") else 0.0)
                elif name.endswith("bias"):
                    p.zero_()
                else:
                    p.normal_(0.0, std, generator=generator)

    def set_philox(self, seed, step):
        self.dropout_mode = "philox"
        self.philox_seed = int(seed)
        self.philox_step = int(step)

    def linears(self):
        return [self.fnn_layers[3 * k] for k in range(self.num_layers)]

    def _masks(self, B, T, ref):
        """Per-layer float masks (keep * scale) [B, T, H], or None when dropout is off."""
        if not self.training or self.dropout <= 0.0:
            return None
        if self.dropout_mode != "philox":
            return "torch"
        scale = float(dropout_scale(self.dropout))
        out = []
        for k in range(self.num_layers):
            keep = philox_keep_mask(self.philox_seed, k, self.philox_step, B, T,
                                    self.hidden_dim, self.dropout)
            out.append(torch.from_numpy(keep.astype(np.float64) * scale)
                       .to(dtype=ref.dtype, device=ref.device))
        return out

    def _drop(self, x, k, t, masks):
        if masks is None:
            return x
        if masks == "torch":
            return self.fnn_layers[3 * k + 2](x)
        return x * masks[k][:, t]

    def forward(self, input_ids):
        B, T = input_ids.shape
        De, Dc = self.embed_dim, self.context_dim
        lin = self.linears()
        w0 = lin[0].weight
        emb = self.token_embedding(input_ids)                      # (B, T, De)
        c = emb.new_zeros(B, Dc)                                    # c(-1) = 0
        masks = self._masks(B, T, emb)
        if self.fast:
            pre0 = F.linear(emb, w0[:, :De], lin[0].bias)           # (B, T, H)
            w0c = w0[:, De:]
            wh = torch.cat([self.context_update.weight, self.forget_gate.weight,
                            self.input_gate.weight], 0)             # (3Dc, H)
            bh = torch.cat([self.context_update.bias, self.forget_gate.bias,
                            self.input_gate.bias], 0)
        hs, logits = [], []
        for t in range(T):
            if self.fast:
                x = pre0[:, t] + F.linear(c, w0c)
            else:
                x = lin[0](torch.cat([emb[:, t], c], dim=1))
            x = self._drop(F.relu(x), 0, t, masks)
            for k in range(1, self.num_layers):
                x = self._drop(F.relu(lin[k](x)), k, t, masks)
            h = x                                                   # (B, H)
            if self.fast:
                hs.append(h)
                z = F.linear(h, wh, bh)
                d, f, g = z[:, :Dc], torch.sigmoid(z[:, Dc:2 * Dc]), torch.sigmoid(z[:, 2 * Dc:])
            else:
                logits.append(self.token_output(h))
                d = self.context_update(h)
                f = torch.sigmoid(self.forget_gate(h))
                g = torch.sigmoid(self.input_gate(h))
            s = f * c + g * d
            c = torch.clamp(self.context_norm(s), -10.0, 10.0)
        if self.fast:
            return self.token_output(torch.stack(hs, dim=1))       # (B, T, V)
        return torch.stack(logits, dim=1)


def lm_loss(logits, targets):
    """Cross-entropy averaged over non-pad (id 0) targets."""
    V = logits.shape[-1]
    return F.cross_entropy(logits.reshape(-1, V), targets.reshape(-1), ignore_index=0)


def lm_accuracy(logits, targets):
    """Share of non-pad positions whose argmax equals the target."""
    mask = targets != 0
    hit = (logits.argmax(dim=-1) == targets) & mask
    return float(hit.sum()) / max(int(mask.sum()), 1)


def flops_per_token(V, De, H, Dc, L):
    """Useful training FLOPs per predicted token: 3 x forward, 2 FLOP per MAC."""
    return 6 * ((De + Dc) * H + (L - 1) * H * H + H * V + 3 * H * Dc)


def make_adam(model, lr=1e-4, weight_decay=0.0):
    """Adam as model.md's recipe (single-tensor path, like nllm_adam_update)."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8,
                            weight_decay=weight_decay, foreach=False)


def train_step(model, opt, window, max_norm, amp=contextlib.nullcontext):
    """One step on windows [B, S]: forward, backward, clip by global norm, Adam;
    the forward and the loss inside amp() (e.g. an autocast context factory).
    Returns (loss, grad_norm before clipping) as Python floats."""
    with amp():
        logits = model(window[:, :-1])
        loss = lm_loss(logits, window[:, 1:])
    opt.zero_grad(set_to_none=False)
    loss.backward()
    gn = torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm)
    opt.step()
    return float(loss), float(gn)


# ---- self-test: python3 bench/torch_model.py ---------------------------------

_KAT = [((0, 0, 0, 0), (0, 0), (0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8)),
        ((0xffffffff,) * 4, (0xffffffff,) * 2, (0x408f276d, 0x41c83b0e, 0xa20bc7c6, 0x6d5451fd)),
        ((0x243f6a88, 0x85a308d3, 0x13198a2e, 0x03707344), (0xa4093822, 0x299f31d0),
         (0xd16cfe09, 0x94fdcceb, 0x5001e420, 0x24126ea1))]


def _self_test():
    fails = 0

    def check(ok, what):
        nonlocal fails
        fails += not ok
        print("%s  %s" % ("ok  " if ok else "FAIL", what))

    for ctr, key, want in _KAT:
        got = tuple(int(x) for x in philox4x32_10(*ctr, *key))
        check(got == want, "philox4x32_10 KAT ctr=%s -> %s" % (
            "/".join("%08x" % x for x in ctr), " ".join("%08x" % x for x in got)))

    # mask statistics against torch's own dropout
    p, B, T, H = 0.1, 64, 63, 512
    keep = philox_keep_mask(42, 0, 0, B, T, H, p)
    torch.manual_seed(0)
    tk = (F.dropout(torch.ones(B, T, H), p, training=True) != 0).numpy()
    n = keep.size
    tol = 5 * math.sqrt(p * (1 - p) / n)
    check(abs(keep.mean() - (1 - p)) < tol and abs(tk.mean() - (1 - p)) < tol,
          "keep rate philox %.5f torch %.5f (want %.2f +- %.5f)" % (keep.mean(), tk.mean(), 1 - p, tol))
    f = keep.reshape(-1).astype(np.float64)
    for lag in (1, 4, H):
        r = np.corrcoef(f[:-lag], f[lag:])[0, 1]
        check(abs(r) < 5 / math.sqrt(n), "lag-%d autocorrelation %.5f" % (lag, r))
    other = [philox_keep_mask(42, 1, 0, B, T, H, p), philox_keep_mask(42, 0, 1, B, T, H, p),
             philox_keep_mask(43, 0, 0, B, T, H, p), philox_keep_mask(42 + (1 << 32), 0, 0, B, T, H, p)]
    agree = [float((keep == o).mean()) for o in other]
    want = (1 - p) ** 2 + p * p
    check(all(abs(a - want) < 5 * math.sqrt(want * (1 - want) / n) for a in agree),
          "independent across stream/step/seed lo/seed hi: agreement %s (want %.4f)"
          % (" ".join("%.4f" % a for a in agree), want))
    for p2 in (0.3, 0.5):
        k2 = philox_keep_mask(7, 3, 9, 16, 31, 64, p2)
        check(abs(k2.mean() - (1 - p2)) < 5 * math.sqrt(p2 * (1 - p2) / k2.size),
              "keep rate p=%.1f: %.4f" % (p2, k2.mean()))
    check(dropout_scale(0.1) == np.float32(1) / np.float32(0.9) and dropout_scale(0.0) == 1,
          "dropout scale in float32 (%.9g)" % dropout_scale(0.1))

    # autograd gradient of the loss, float64, tiny config, through dropout and clamp
    V, De, H, Dc, L, B, S = 11, 4, 6, 5, 3, 2, 6
    for clamp, p in ((False, 0.0), (False, 0.3), (True, 0.0), (True, 0.3)):
        torch.manual_seed(1)
        m = ContextVectorLM(V, De, H, Dc, L, p).double()
        m.init_weights(std=0.4)
        with torch.no_grad():
            for name, q in m.named_parameters():
                if name.endswith("bias"):
                    q.normal_(0.0, 0.3)   # biases 0 put ReLU inputs exactly at the kink
            if clamp:
                m.context_norm.weight.fill_(5.0)
                m.context_norm.bias.fill_(4.0)
        m.train()
        m.set_philox(99, 3)
        win = torch.randint(0, V, (B, S))
        win[0, -2:] = 0                                   # pad targets
        names = [nm for nm, _ in m.named_parameters()]
        fc = torch.nn.utils.stateless.functional_call

        def loss_of(*ps):
            return lm_loss(fc(m, dict(zip(names, ps)), (win[:, :-1],)), win[:, 1:])
        ok = torch.autograd.gradcheck(
            loss_of, tuple(q.detach().clone().requires_grad_() for q in m.parameters()),
            eps=1e-6, atol=1e-7, rtol=1e-5)
        # count clamped context entries
        clamped = [0]
        hook = m.context_norm.register_forward_hook(
            lambda mod, inp, out: clamped.__setitem__(0, clamped[0] + int((out.abs() > 10).sum())))
        with torch.no_grad():
            y1 = m(win[:, :-1])
        hook.remove()
        m2 = ContextVectorLM(V, De, H, Dc, L, p, fast=True).double()
        m2.load_state_dict(m.state_dict())
        m2.train()
        m2.set_philox(99, 3)
        with torch.no_grad():
            dd = float((m2(win[:, :-1]) - y1).abs().max())
        check(ok and dd < 1e-12, "gradcheck float64 clamp=%d p=%.1f (clamped entries %d), "
              "fast-naive %.1e" % (clamp, p, clamped[0], dd))
    print("%s" % ("all passed" if not fails else "%d FAILED" % fails))
    return 1 if fails else 0


if __name__ == "__main__":
    import sys
    sys.exit(_self_test())
