#!/usr/bin/env python3
"""Decode speed side by side: juris (candle, quantized weights) vs llama.cpp (llama-cpp-python)
on the same GGUF files, the same prompt token ids and the same thread count.

Run from the repository root after building the example:

    cargo build --release -p juris-ml --example generate_speed
    bench/.venv/bin/python bench/generate_speed.py [--threads 2] [--runs 3] \
        [--prompt-tokens 256] [--new-tokens 128] [smollm2 gemma3 ...]

For each model: a ~256-token prompt (a legal text, tokenized by llama.cpp with BOS) is
processed in one batch (prompt tokens/s), then 128 new tokens are chosen greedily one at a
time (decode tokens/s over the 127 single-token steps after the first new token, which
comes from the prompt's logits), not stopped at an end token. Runs alternate juris,
llama.cpp, juris, ...; medians of `--runs` each. Wall clock around the calls on both sides:
juris in the example binary (RAYON_NUM_THREADS=threads; model load not timed), llama.cpp
around `Llama.eval` (n_threads=threads, n_batch=512, its default F16 KV cache, model
loaded once, the context reset before each run).

The memory-bandwidth floor: a streaming read (numpy sum over a 1 GiB float32 array, best
of 3) gives bytes/s; dividing by the bytes of weights one decode step reads (every matrix,
and the whole embedding when it doubles as the output projection) gives the most tokens/s
a bandwidth-bound decoder could reach. (These models are small enough that part of the
weights may stay in cache, so the floor is indicative, not a hard bound.)

Writes bench/out/generate_speed.json and prints a Markdown table.
"""

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "target", "release", "examples", "generate_speed")

MODELS = {
    "smollm2": "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    "gemma3": "models/gemma3-270m/gemma-3-270m-q4_k_m.gguf",
}

TEXT = (
    "Article 1. This Act governs contracts for the sale of goods between merchants and "
    "consumers. Article 2. A contract is formed when an offer is accepted; the acceptance "
    "takes effect when it reaches the offeror. Article 3. A party who fails to perform an "
    "obligation is liable for the damage caused, unless the failure is due to an impediment "
    "beyond its control that it could not reasonably have foreseen. Article 4. The buyer "
    "shall examine the goods within a short period and give notice of any lack of conformity "
    "within a reasonable time after discovering it. Article 5. Claims under this Act are "
    "barred three years after the creditor knew or ought to have known of the claim. "
)


def bandwidth_gbs(gib=1):
    a = np.ones(gib * (1 << 30) // 4, dtype=np.float32)
    a.sum()  # touch every page once
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        a.sum()
        best = max(best, a.nbytes / (time.perf_counter() - t))
    del a
    return best / 1e9


def weight_bytes_per_token(path):
    import gguf

    r = gguf.GGUFReader(path)
    tied = not any(t.name == "output.weight" for t in r.tensors)
    total = 0
    for t in r.tensors:
        if t.name == "token_embd.weight" and not tied:
            continue  # only one row is read per token
        total += int(t.n_bytes)
    return total


def prompt_ids(llm, n):
    ids = llm.tokenize(TEXT.encode("utf-8"), add_bos=True)
    while len(ids) < n:
        ids += llm.tokenize(TEXT.encode("utf-8"), add_bos=False)
    return ids[:n]


def run_llamacpp(llm, ids, new_tokens):
    import llama_cpp

    llm.reset()
    t0 = time.perf_counter()
    llm.eval(ids)
    logits = np.ctypeslib.as_array(
        llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)
    )
    tok = int(np.argmax(logits))
    t1 = time.perf_counter()
    out = [tok]
    for _ in range(new_tokens - 1):
        llm.eval([tok])
        logits = np.ctypeslib.as_array(
            llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)
        )
        tok = int(np.argmax(logits))
        out.append(tok)
    t2 = time.perf_counter()
    return {"prefill_s": t1 - t0, "decode_s": t2 - t1, "decode_tokens": new_tokens - 1, "ids": out}


def run_juris(path, ids_file, new_tokens, threads):
    env = dict(os.environ, RAYON_NUM_THREADS=str(threads))
    p = subprocess.run(
        [EXAMPLE, path, ids_file, str(new_tokens)],
        env=env, capture_output=True, text=True, check=True,
    )
    return json.loads(p.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--prompt-tokens", type=int, default=256)
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("models", nargs="*", default=list(MODELS))
    a = ap.parse_args()
    if not os.path.exists(EXAMPLE):
        sys.exit(f"{EXAMPLE} missing: cargo build --release -p juris-ml --example generate_speed")
    import llama_cpp

    bw = bandwidth_gbs()
    results = {
        "machine": {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(),
                    "load_avg": os.getloadavg(), "stream_read_gb_s": round(bw, 2)},
        "settings": {"threads": a.threads, "runs": a.runs, "prompt_tokens": a.prompt_tokens,
                     "new_tokens": a.new_tokens,
                     "llama_cpp": f"llama-cpp-python {llama_cpp.__version__}, n_batch=512, default KV cache (F16)",
                     "juris": "examples/generate_speed, quantized weights, F32 KV cache"},
        "models": {},
    }
    rows = []
    for name in a.models:
        path = os.path.join(ROOT, MODELS[name])
        if not os.path.exists(path):
            print(f"skipped {name}: {path} missing; run bash scripts/fetch-models.sh")
            continue
        llm = llama_cpp.Llama(model_path=path, n_ctx=a.prompt_tokens + a.new_tokens + 8,
                              n_batch=512, n_threads=a.threads, n_threads_batch=a.threads,
                              verbose=False)
        ids = prompt_ids(llm, a.prompt_tokens)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump(ids, f)
            ids_file = f.name
        runs = {"juris": [], "llama.cpp": []}
        for _ in range(a.runs):
            runs["juris"].append(run_juris(path, ids_file, a.new_tokens, a.threads))
            runs["llama.cpp"].append(run_llamacpp(llm, ids, a.new_tokens))
        os.unlink(ids_file)
        del llm
        wbytes = weight_bytes_per_token(path)
        floor = bw * 1e9 / wbytes
        entry = {"weight_bytes_per_token": wbytes, "bandwidth_floor_tok_s": round(floor, 1)}
        for side, rs in runs.items():
            pf = statistics.median(len(ids) / r["prefill_s"] for r in rs)
            dc = statistics.median(r["decode_tokens"] / r["decode_s"] for r in rs)
            entry[side] = {"prompt_tok_s": round(pf, 1), "decode_tok_s": round(dc, 1),
                           "runs": [{k: r[k] for k in ("prefill_s", "decode_s")} for r in rs]}
        same = sum(x == y for x, y in zip(runs["juris"][0]["ids"], runs["llama.cpp"][0]["ids"]))
        entry["greedy_ids_identical_prefix"] = next(
            (i for i, (x, y) in enumerate(zip(runs["juris"][0]["ids"], runs["llama.cpp"][0]["ids"])) if x != y),
            a.new_tokens)
        entry["greedy_ids_same_positions"] = same
        results["models"][name] = entry
        j, l = entry["juris"], entry["llama.cpp"]
        rows.append(f"| {name} ({os.path.basename(path)}) | {j['prompt_tok_s']:.0f} | {l['prompt_tok_s']:.0f} | "
                    f"{j['prompt_tok_s'] / l['prompt_tok_s']:.2f} | {j['decode_tok_s']:.1f} | {l['decode_tok_s']:.1f} | "
                    f"{j['decode_tok_s'] / l['decode_tok_s']:.2f} | {floor:.0f} |")
    os.makedirs(os.path.join(ROOT, "bench", "out"), exist_ok=True)
    out = os.path.join(ROOT, "bench", "out", "generate_speed.json")
    with open(out, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    print(f"{a.threads} threads, prompt {a.prompt_tokens} tokens, {a.new_tokens} new tokens (greedy), "
          f"median of {a.runs} alternating runs; stream read {bw:.1f} GB/s\n")
    print("| model | juris prompt tok/s | llama.cpp prompt tok/s | ratio | juris decode tok/s | "
          "llama.cpp decode tok/s | ratio | bandwidth floor tok/s |")
    print("|---|---|---|---|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
