#!/usr/bin/env python3
"""Dump llama.cpp's intermediate tensors for one prompt, for op-by-op comparisons with
juris (crates/juris-ml/examples/parity_probe.rs applies one of our quantized matmuls to
the same rows, or writes our logits).

    bench/.venv/bin/python scripts/diag/llamacpp_tensors.py MODEL.gguf OUT_DIR \
        '[id, id, ...]' [NEXT_ID]

llama.cpp (llama-cpp-python's bundled library; CPU, F32 KV cache, no flash attention,
2 threads) evaluates the prompt in one batch; its eval callback sees every graph node and
this writes each F32 node as OUT_DIR/<order>_<name>.npy (names like attn_norm-0, Qcur-0,
ffn_out-0, l_out-0, result_output; a name repeats when a node is reshaped or rotated, the
order tells them apart) and the last position's logits as OUT_DIR/LOGITS.npy. With NEXT_ID
the token is then decoded alone and its nodes go to OUT_DIR_step/.

The ggml_tensor layout below is ggml's (type, buffer, ne[4], nb[4], op, op_params[16],
flags, src[10], view_src, view_offs, data, name[64], extra); a mismatch shows as an
assertion on the node names.
"""

import ctypes
import json
import os
import sys

import numpy as np
import llama_cpp as L

model_path, outdir, ids = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
state = {"dir": outdir, "n": 0}
os.makedirs(outdir, exist_ok=True)
base = ctypes.CDLL(os.path.join(os.path.dirname(L.__file__), "lib", "libggml-base.so"))
base.ggml_get_name.restype = ctypes.c_char_p
base.ggml_get_name.argtypes = [ctypes.c_void_p]


class Tensor(ctypes.Structure):
    _fields_ = [
        ("type", ctypes.c_int32), ("pad", ctypes.c_int32), ("buffer", ctypes.c_void_p),
        ("ne", ctypes.c_int64 * 4), ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int32),
        ("op_params", ctypes.c_int32 * 16), ("flags", ctypes.c_int32),
        ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
        ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p),
        ("name", ctypes.c_char * 64), ("extra", ctypes.c_void_p),
    ]


@L.ggml_backend_sched_eval_callback
def callback(t, ask, _user):
    if ask:
        return True
    s = Tensor.from_address(t)
    name = s.name.decode()
    assert name == base.ggml_get_name(t).decode(), "ggml_tensor layout changed"
    state["n"] += 1
    if s.type == 0:  # F32
        first = np.ctypeslib.as_array((ctypes.c_float * 1).from_address(s.data))
        arr = np.lib.stride_tricks.as_strided(
            first, shape=list(s.ne)[::-1], strides=list(s.nb)[::-1]
        ).copy()
        safe = name.replace("/", "_").replace(" ", "_")
        np.save(f"{state['dir']}/{state['n']:04d}_{safe}.npy", arr)
    return True


L.llama_backend_init()
model = L.llama_model_load_from_file(model_path.encode(), L.llama_model_default_params())
cp = L.llama_context_default_params()
cp.n_ctx, cp.n_batch, cp.n_ubatch = 1024, 512, 512
cp.n_threads = cp.n_threads_batch = 2
cp.type_k = cp.type_v = 0  # F32
cp.flash_attn_type = 0  # disabled
cp.cb_eval, cp.cb_eval_user_data = callback, None
ctx = L.llama_init_from_model(model, cp)
n_vocab = L.llama_vocab_n_tokens(L.llama_model_get_vocab(model))


def decode(tokens):
    arr = (L.llama_token * len(tokens))(*tokens)
    assert L.llama_decode(ctx, L.llama_batch_get_one(arr, len(tokens))) == 0
    ptr = L.llama_get_logits_ith(ctx, -1)
    np.save(f"{state['dir']}/LOGITS.npy", np.ctypeslib.as_array(ptr, shape=(n_vocab,)).copy())


decode(ids)
print(state["n"], "nodes written to", outdir)
if len(sys.argv) > 4:
    state["dir"], state["n"] = outdir.rstrip("/") + "_step", 0
    os.makedirs(state["dir"], exist_ok=True)
    decode([int(sys.argv[4])])
    print(state["n"], "nodes written to", state["dir"])
