#!/usr/bin/env python3
"""make_corpus.py -- writes the seed corpora of tests/fuzz/corpus/<target>/.

A few small valid inputs per target, so the fuzzers start from the shapes
the code expects: msgpack-RPC sessions (rpc), safetensors files (the real
checkpoint of a tiny model made by build/nllm-bench --checkpoint, and
hand-made ones), the same checkpoint and a weights-only copy (ckpt), job
files (jobfile) and HTTP requests (http). Deterministic: running it again
gives the same files. Other files there (inputs that once crashed a
target, kept as regression seeds) are left alone. Usage: tests/fuzz/make_corpus.py [--bench PATH]
"""
import argparse
import json
import os
import shutil
import struct
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
CORPUS = os.path.join(HERE, "corpus")


# ---- a small msgpack encoder (no python3-msgpack needed) -------------------
def mp(o):
    if o is None:
        return b"\xc0"
    if o is True:
        return b"\xc3"
    if o is False:
        return b"\xc2"
    if isinstance(o, int):
        if 0 <= o < 128:
            return bytes([o])
        if -32 <= o < 0:
            return struct.pack("b", o)
        if 0 <= o < 1 << 8:
            return b"\xcc" + struct.pack(">B", o)
        if 0 <= o < 1 << 16:
            return b"\xcd" + struct.pack(">H", o)
        if 0 <= o < 1 << 32:
            return b"\xce" + struct.pack(">I", o)
        if 0 <= o:
            return b"\xcf" + struct.pack(">Q", o)
        return b"\xd3" + struct.pack(">q", o)
    if isinstance(o, float):
        return b"\xcb" + struct.pack(">d", o)
    if isinstance(o, str):
        o = o.encode()
        if len(o) < 32:
            return bytes([0xA0 | len(o)]) + o
        if len(o) < 256:
            return b"\xd9" + bytes([len(o)]) + o
        return b"\xda" + struct.pack(">H", len(o)) + o
    if isinstance(o, bytes):
        return b"\xc4" + bytes([len(o)]) + o
    if isinstance(o, (list, tuple)):
        h = bytes([0x90 | len(o)]) if len(o) < 16 else b"\xdc" + struct.pack(">H", len(o))
        return h + b"".join(mp(x) for x in o)
    if isinstance(o, dict):
        h = bytes([0x80 | len(o)]) if len(o) < 16 else b"\xde" + struct.pack(">H", len(o))
        return h + b"".join(mp(k) + mp(v) for k, v in o.items())
    raise TypeError(o)


def req(msgid, method, params=None):
    return mp([0, msgid, method, [] if params is None else [params]])


def write(target, name, data):
    d = os.path.join(CORPUS, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


# ---- rpc: byte 0 options (1 TCP+token, 2 one read, 4 small max_message),
#      byte 1 split seed, then the stream ----------------------------------
def rpc_seeds():
    cfg = {"data": "/etc/passwd", "epochs": 3, "vocab_size": 50, "embed_dim": 4,
           "hidden_dim": 4, "context_dim": 4, "num_layers": 1, "max_seq_length": 8,
           "batch_size": 2, "tokenizer": "word", "clip": "reference", "seed": 7}
    session = b"".join([
        req(1, "hello"),
        req(2, "start", {"name": "demo", "config": cfg}),
        req(3, "status", {"name": "demo"}),
        req(4, "watch", {"name": "demo"}),
        req(5, "pause", {"name": "demo", "at_epoch_end": False}),
        req(6, "extend", {"name": "demo", "num_epochs": 9}),
        req(7, "checkpoints", {"name": "demo", "all": True}),
        req(8, "history", {"name": "demo", "all": True}),
        req(9, "events", {"name": "demo", "limit": 10}),
        req(10, "resume", {"name": "demo", "checkpoint": "latest", "num_epochs": 5,
                           "reset_patience": True, "config": {"lr": 0.001}}),
        req(11, "unwatch", {"name": "demo"}),
        req(12, "stop", {"name": "demo"}),
        req(13, "list"),
        req(14, "verify", {"name": "demo"}),
        req(15, "generate", {"name": "demo", "prompt": "the", "tokens": 5,
                             "temperature": 0.5, "seed": 1}),
        req(16, "rm", {"name": "demo", "delete_files": True}),
    ])
    write("rpc", "session", b"\x00\x00" + session)
    write("rpc", "session_one_read", b"\x02\x00" + session)
    write("rpc", "session_split", b"\x00\x5a" + session)
    write("rpc", "hello", b"\x02\x00" + req(1, "hello"))
    write("rpc", "tcp_auth", b"\x03\x00" + req(1, "auth", {"token": "fuzz-token-0123456789abcdef"})
          + req(2, "list"))
    write("rpc", "tcp_noauth", b"\x03\x00" + req(1, "list"))
    write("rpc", "tcp_badauth", b"\x03\x00" + req(1, "auth", {"token": "nope"}) + req(2, "list"))
    write("rpc", "start_bad", b"\x02\x00" + req(1, "start", {"name": "x", "config": {
        "data": "/nonexistent", "vocab": -1, "bogus": 1, "dropout": 2.5}}))
    write("rpc", "start_init_from", b"\x02\x00" + req(1, "start", {
        "name": "ft", "init_from": "demo:best", "init_optimizer": True,
        "config": {"data": "/etc/passwd"}}))
    write("rpc", "verify_all", b"\x02\x00" + req(1, "verify", {"all": True}))
    write("rpc", "shutdown", b"\x02\x00" + req(1, "shutdown") + req(2, "hello"))
    write("rpc", "unknown", b"\x02\x00" + req(1, "no_such_method", {"a": [1, 2.5, None, b"x"]}))
    write("rpc", "notification", b"\x02\x00" + mp([2, "hello", []]))
    write("rpc", "response", b"\x02\x00" + mp([1, 1, None, {"ok": True}]))
    write("rpc", "invalid_with_id", b"\x02\x00" + mp([0, 77, 5, []]))
    write("rpc", "params_not_map", b"\x02\x00" + mp([0, 1, "status", [1, 2]]))
    write("rpc", "too_large", b"\x06\x00" + mp([0, 9, "start", [{"name": "x" * 200}]]))
    write("rpc", "deep", b"\x02\x00" + mp([0, 5, "hello", [[[[[[[[]]]]]]]]]))
    write("rpc", "array32_attack", b"\x02\x00" + b"\xdd\xff\xff\xff\xff")
    write("rpc", "str32_attack", b"\x02\x00" + b"\x94\x00\x01\xdb\xff\xff\xff\xff")
    # once failed fuzz_rpc's one-answer-per-request check: a wrong token on the
    # (already trusted) Unix socket closes the connection, by design
    write("rpc", "regress-unix-bad-auth", b"\x00\x00" + req(1, "hello") +
          req(2, "auth", {"token": "nope"}) + req(3, "list"))
    # once failed fuzz_rpc now and then: the unauthorized reply was still on its
    # way over TCP when the harness stopped reading (it now reads up to EOF)
    write("rpc", "regress-tcp-late-reply", bytes.fromhex(
        "0300940001a4776f6664ae72657365745f70617469656e63658585858585850000940001"
        "a5a573746172749182a46e616d65a4646d6fa6636f6e6669678ca5737461729090909090"
        "909090909090909090909090909090909090909090909490909090909090909090909090"
        "909090909090909090909090909090909090909090909090909090909090909002009400"
        "01ae6e416f"))
    # once hung fuzz_rpc (the harness waited on the loop while the last reply was
    # still held by Nagle on its own TCP socket): malformed requests over TCP
    # before auth, with a 80-byte --max-message
    write("rpc", "regress-tcp-invalid-unauthed", bytes.fromhex(
        "0d009400 01a56865 a5770000 940001a5 68656c6c 03009400 01a461df 00030094"
        "0001a461 df000091 00940001 a4618665 0002a663 6464".replace(" ", "")))


def rpc_dict():
    words = ["hello", "auth", "start", "pause", "resume", "extend", "stop", "status", "list",
             "checkpoints", "history", "events", "verify", "remove", "rm", "watch", "unwatch",
             "generate", "shutdown", "name", "config", "init_from", "init_optimizer",
             "at_epoch_end", "checkpoint", "num_epochs", "reset_patience", "all", "limit",
             "delete_files", "token", "prompt", "tokens", "seed", "temperature", "data",
             "/etc/passwd", "demo", "best", "latest", "epochs", "vocab_size", "device",
             "cuda:0", "cpu", "clip", "tokenizer", "byte", "word"]
    lines = ["# msgpack-RPC method names and parameter keys, as fixstr"]
    for w in words:
        b = mp(w)
        lines.append('"' + "".join("\\x%02x" % c for c in b) + '"')
    for b in [b"\x94\x00", b"\x93\x02", b"\x91\x80", b"\xdc\x00", b"\xdd\x00\x00",
              b"\xde\x00", b"\xdf\x00\x00", b"\xd9", b"\xda\x00", b"\xdb\x00\x00\x00"]:
        lines.append('"' + "".join("\\x%02x" % c for c in b) + '"')
    with open(os.path.join(HERE, "rpc.dict"), "w") as f:
        f.write("\n".join(lines) + "\n")


# ---- safetensors ---------------------------------------------------------
def st(tensors, meta=None, pad=True):
    """tensors: list of (name, dtype, shape, bytes) laid out in order."""
    hdr = {}
    if meta is not None:
        hdr["__metadata__"] = meta
    off = 0
    data = b""
    for name, dt, shape, b in tensors:
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
        data += b
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-(len(h) + 8) % 8)
    return struct.pack("<Q", len(h)) + h + data


def parse_st(buf):
    n = struct.unpack("<Q", buf[:8])[0]
    hdr = json.loads(buf[8:8 + n])
    return hdr, buf[8 + n:]


def st_seeds(ckpt):
    write("safetensors", "checkpoint", ckpt)
    write("safetensors", "empty", st([]))
    write("safetensors", "meta_only", st([], {"format": "x", "k": "v\u00e9"}))
    write("safetensors", "f32", st([("a", "F32", [2, 2], struct.pack("<4f", 1, 2, 3, 4))]))
    write("safetensors", "mixed", st([
        ("w", "F64", [2], struct.pack("<2d", 1.5, -2)),
        ("x", "F32", [1], struct.pack("<f", 3)),
        ("i", "I64", [1], struct.pack("<q", -7)),
        ("h", "BF16", [2], b"\x80\x3f\x00\x40"),
        ("b", "BOOL", [3], b"\x01\x00\x01"),
        ("s", "U8", [], b"\x05"),
        ("z", "F32", [0, 3], b""),
    ], {"note": "dtypes"}))
    write("safetensors", "unaligned", st([("b", "U8", [1], b"\x01"),
                                          ("f", "F32", [1], struct.pack("<f", 1))]))


def ckpt_seeds(ckpt):
    write("ckpt", "checkpoint", ckpt)
    hdr, data = parse_st(ckpt)
    meta = hdr.pop("__metadata__")
    # weights only: the model tensors, no optimizer state, no metadata
    keep = sorted(((k, v) for k, v in hdr.items() if not k.startswith("optimizer.")),
                  key=lambda kv: kv[1]["data_offsets"][0])
    ts = [(k, v["dtype"], v["shape"], data[v["data_offsets"][0]:v["data_offsets"][1]])
          for k, v in keep]
    write("ckpt", "weights_only", st(ts))
    # the nllm metadata with the weights only (no Adam moments)
    write("ckpt", "no_optimizer", st(ts, meta))
    # a word tokenizer, as nllmd's checkpoints carry
    m2 = dict(meta)
    m2["tokenizer"] = json.dumps({"kind": "word", "words": ["<pad>", "<bos>", "<eos>", "<unk>",
                                                             "the", "a", "b", "c"]})
    m2["train_losses"] = m2["val_losses"] = m2["train_ppls"] = m2["val_ppls"] = \
        m2["val_accs"] = "[1.5]"
    m2["current_epoch"] = "1"
    write("ckpt", "tokenizer_history", st(ts, m2))
    # once made nllm_ckpt_load calloc 1.2 GB for a 2.5 KB file (ckpt.c): a
    # config claiming a large model over the tiny model's tensors
    m3 = dict(meta)
    cfg = json.loads(m3["config"])
    cfg["vocab_size"], cfg["embed_dim"] = 100000, 1024
    m3["config"] = json.dumps(cfg, separators=(",", ":"))
    write("ckpt", "regress-huge-config", st(ts, m3))


# ---- jobfile -------------------------------------------------------------
def jobfile_seeds():
    write("jobfile", "full", b"""# a job file
[model]
vocab_size = 1000
embed_dim = 256
hidden_dim = 512
context_dim = 512
num_layers = 12
max_seq_length = 64
dropout = 0.1

[data]
data = /srv/corpus/train.txt
val = "/srv/corpus/valid.txt"
tokenizer = word
val_fraction = 0.1

[train]
num_epochs = 50
batch_size = 512
learning_rate = 0.0001
beta1 = 0.9
beta2 = 0.999
eps = 1e-8
weight_decay = 0
clip = reference
patience = 15
min_delta = 0.001
reset_patience = false
seed = 42
save_every = 5
keep = 3
device = cuda:0
threads = 8
""")
    write("jobfile", "aliases", b"train = 'data.txt'\nepochs=3\nbatch=8\nlr=3e-4\nseq_len=32\n"
          b"vocab=256\nlayers=2\ntokenizer=byte\nclip=1.5\n; comment\n")
    write("jobfile", "minimal", b"data=/x\n")
    write("jobfile", "bad_line", b"data=/x\nnot a setting\n")
    write("jobfile", "crlf", b"data = /x\r\nclip = none\r\nseed = 18446744073709551615\r\n")
    # once crashed fuzz_jobfile (config.c): a non-UTF-8 path had no JSON form,
    # and a seed above INT64_MAX came back from JSON negative
    write("jobfile", "regress-non-utf8-path", b"data=t\x9bread/xt")
    write("jobfile", "regress-seed-above-int64", b"data=/x\nseed = 18446744073709551615\n")


# ---- http: byte 0 listener (bits 0-2 address, bit 3 port 80), byte 1 read size
def http_seeds():
    def w(name, b0, b1, text):
        write("http", name, bytes([b0, b1]) + text)
    w("get_root", 0, 0, b"GET / HTTP/1.1\r\nHost: 127.0.0.1:9477\r\n\r\n")
    w("metrics", 0, 0, b"GET /metrics HTTP/1.1\r\nHost: localhost:9477\r\nConnection: close\r\n\r\n")
    w("api_jobs", 0, 7, b"GET /api/jobs HTTP/1.1\r\nHost: localhost\r\n\r\n"
                        b"GET /api/jobs/demo HTTP/1.1\r\nHost: localhost\r\n\r\n"
                        b"GET /api/jobs/a.b_c-1 HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
                        b"HEAD /api/daemon HTTP/1.1\r\nHost: [::1]:9477\r\n\r\n")
    w("api_missing", 1, 0, b"GET /api/jobs/n%6fpe HTTP/1.1\r\nHost: [::1]:9477\r\n\r\n")
    w("absolute", 2, 0, b"GET http://10.0.0.1:9477/metrics HTTP/1.1\r\nHost: 10.0.0.1:9477\r\n\r\n")
    w("hostname", 4, 0, b"GET / HTTP/1.1\r\nHost: nllm-host:9477\r\n\r\n")
    w("rebind", 0, 0, b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n")
    w("post", 0, 0, b"POST /api/jobs HTTP/1.1\r\nHost: localhost\r\nContent-Length: 3\r\n\r\nabc")
    w("http10", 8, 0, b"GET /index.html HTTP/1.0\r\n\r\n")
    w("chunked", 0, 3, b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
                       b"3\r\nabc\r\n0\r\n\r\n")
    w("two_hosts", 0, 0, b"GET / HTTP/1.1\r\nHost: localhost\r\nHost: localhost\r\n\r\n")
    w("upgrade", 0, 0, b"GET / HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n"
                       b"Connection: Upgrade\r\n\r\n")
    w("long_url", 0, 0, b"GET /" + b"a" * 2100 + b" HTTP/1.1\r\nHost: localhost\r\n\r\n")


def write_dict(name, comment, words):
    lines = ["# " + comment]
    for w in words:
        lines.append('"' + "".join("\\x%02x" % c if c < 32 or c > 126 or c in b'"\\'
                                   else chr(c) for c in w) + '"')
    with open(os.path.join(HERE, name), "w") as f:
        f.write("\n".join(lines) + "\n")


def http_dict():
    write_dict("http.dict", "HTTP request pieces for fuzz_http", [
        b"GET ", b"HEAD ", b"POST ", b"OPTIONS ", b" HTTP/1.1\r\n", b" HTTP/1.0\r\n",
        b"\r\n\r\n", b"Host: ", b"Host: localhost\r\n", b"127.0.0.1", b"[::1]", b":9477",
        b"0.0.0.0", b"nllm-host", b"nllm-host.example", b"localhost.",
        b"Connection: close\r\n", b"Connection: keep-alive\r\n", b"Upgrade: h2c\r\n",
        b"Content-Length: ", b"Transfer-Encoding: chunked\r\n", b"/metrics", b"/api/jobs/",
        b"/api/jobs/demo", b"/api/daemon", b"/index.html", b"%2f", b"%00", b"http://", b"?x=1",
        b"#frag"])


def ckpt_dict():
    write_dict("ckpt.dict", "checkpoint metadata keys and values for fuzz_ckpt", [
        b'\\"vocab_size\\":', b'\\"embed_dim\\":', b'\\"num_layers\\":',
        b'\\"tokenizer\\":', b'\\"words\\":', b'\\"kind\\":\\"byte\\"', b'"format"',
        b'"nllm-checkpoint"', b'"format_version"', b'"config"', b'"current_epoch"',
        b'"train_losses"', b'"best_val_loss"', b'"early_stopping"', b'"epoch_partial"',
        b'"tokenizer"', b'"F32"', b'"shape"', b'"data_offsets"', b"optimizer.exp_avg.",
        b"65536", b"16777216", b"-1", b"1e308", b"null"])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bench", default=os.path.join(ROOT, "build", "nllm-bench"))
    a = ap.parse_args()
    if not os.access(a.bench, os.X_OK):
        sys.exit("make_corpus.py: %s not found: build first (ninja -C build)" % a.bench)
    tmp = tempfile.mkdtemp()
    try:
        path = os.path.join(tmp, "tiny.safetensors")
        subprocess.run([a.bench, "--batch", "2", "--seq-len", "4", "--vocab", "8",
                        "--embed-dim", "2", "--hidden-dim", "3", "--context-dim", "2",
                        "--layers", "1", "--steps", "1", "--warmup", "0", "--threads", "1",
                        "--checkpoint", path], check=True, stdout=subprocess.DEVNULL)
        with open(path, "rb") as f:
            ckpt = f.read()
    finally:
        shutil.rmtree(tmp)
    rpc_seeds()
    rpc_dict()
    http_dict()
    ckpt_dict()
    st_seeds(ckpt)
    ckpt_seeds(ckpt)
    jobfile_seeds()
    http_seeds()
    n = sum(len(fs) for _, _, fs in os.walk(CORPUS))
    print("make_corpus.py: %d seed files in %s" % (n, CORPUS))


if __name__ == "__main__":
    main()
