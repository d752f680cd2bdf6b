"""Single-thread BM25 speed, juris beside bm25s (numba backend) in the same run.

Corpora: scifact (5,183 docs) and scifact x97 (502,751 docs: 97 copies, ids suffixed '#c').
For each: index build time and peak RSS (one process per build, raw corpus.jsonl in, index on
disk out, tokenization included for both), then queries/s and peak RSS of a search process
(queries tokenized inside the timed loop for both; juris times its loop internally and prints
it, bm25s's loop is timed after numba's JIT warm-up). Each search process runs the batch
3 times and reports its median pass, on both sides (bm25s_speed.py REPS 3, juris
`--passes 3`; until 2026-11-24 20:50 UTC juris timed a single pass). k = 10. Medians of
--runs runs.
Writes bench/out/speed.json and prints a Markdown table with juris/bm25s ratios.

usage: bench/.venv/bin/python bench/speed.py [--runs 3] [--copies 97] [--skip-large] [--search-only]
--search-only reuses the indexes of an earlier run (bench/out/speed) and times only the
searches, both sides, in the same run.
"""
import argparse
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
JURIS = ROOT / "target" / "release" / "juris"
OUT = ROOT / "bench" / "out" / "speed"
ENV = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
           MKL_NUM_THREADS="1", RAYON_NUM_THREADS="1")


def run(cmd):
    """Runs cmd single-threaded; returns (wall seconds, stdout, stderr)."""
    t0 = time.perf_counter()
    p = subprocess.Popen([str(c) for c in cmd], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV, text=True)
    out, err = p.communicate()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.exit(f"failed: {' '.join(map(str, cmd))}\n{err[-3000:]}")
    return wall, out, err


def timed(cmd):
    """Runs cmd under /usr/bin/time; returns (wall s, peak RSS MiB of that process, stdout, stderr)."""
    wall, out, err = run(["/usr/bin/time", "-f", "MAXRSS_KB=%M"] + [str(c) for c in cmd])
    rss = int(re.search(r"MAXRSS_KB=(\d+)", err).group(1)) / 1024
    return wall, rss, out, err


def repeat_queries(src, reps, dst):
    with open(src, encoding="utf-8") as f:
        qs = [json.loads(l) for l in f if l.strip()]
    with open(dst, "w", encoding="utf-8") as f:
        for r in range(reps):
            for q in qs:
                f.write(json.dumps({"_id": f"{q['_id']}#{r}", "text": q["text"]}, ensure_ascii=False) + "\n")
    return len(qs) * reps


def measure(name, corpus, queries, n_queries, runs, search_only=False):
    work = OUT / name
    work.mkdir(parents=True, exist_ok=True)
    res = {"corpus": name, "queries": n_queries}
    jb, jr, bb, br = [], [], [], []
    if search_only and not ((work / "juris-index").is_dir() and (work / "bm25s-index").is_dir()):
        sys.exit(f"--search-only: no indexes under {work}; run without it first")
    for i in range(0 if search_only else runs):
        idx = work / "juris-index"
        shutil.rmtree(idx, ignore_errors=True)
        wall, rss, _, _ = timed([JURIS, "--threads", "1", "-q", "index", "--corpus", corpus, "--out", idx, "--lang", "en"])
        jb.append(wall); jr.append(rss)
        bidx = work / "bm25s-index"
        shutil.rmtree(bidx, ignore_errors=True)
        wall, rss, out, _ = timed([sys.executable, ROOT / "bench" / "bm25s_speed.py", "build", corpus, bidx])
        bb.append(wall); br.append(rss)
        print(f"  {name} build run {i + 1}: juris {jb[-1]:.2f}s {jr[-1]:.0f}MiB, bm25s {bb[-1]:.2f}s {br[-1]:.0f}MiB", flush=True)
    if not search_only:
        res.update(juris_build_s=statistics.median(jb), juris_build_rss_mib=statistics.median(jr),
                   bm25s_build_s=statistics.median(bb), bm25s_build_rss_mib=statistics.median(br))
    jq, jsr, bq, bsr = [], [], [], []
    for i in range(runs):
        _, rss, _, err = timed([JURIS, "--threads", "1", "-q", "search", "--index", work / "juris-index",
                                "--queries", queries, "--output", work / "run.trec", "-k", "10", "--passes", "3"])
        m = re.search(r"searched (\d+) queries in ([0-9.]+)s", err)
        jq.append(int(m.group(1)) / float(m.group(2))); jsr.append(rss)
        _, rss, out, _ = timed([sys.executable, ROOT / "bench" / "bm25s_speed.py", "search", work / "bm25s-index", queries, "3"])
        passes = json.loads(out.strip().splitlines()[-1])["pass_s"]
        bq.append(n_queries / statistics.median(passes)); bsr.append(rss)
        print(f"  {name} search run {i + 1}: juris {jq[-1]:.0f} q/s {jsr[-1]:.0f}MiB, bm25s {bq[-1]:.0f} q/s {bsr[-1]:.0f}MiB", flush=True)
    res.update(juris_qps=statistics.median(jq), juris_search_rss_mib=statistics.median(jsr),
               bm25s_qps=statistics.median(bq), bm25s_search_rss_mib=statistics.median(bsr))
    res["qps_ratio"] = res["juris_qps"] / res["bm25s_qps"]
    if not search_only:
        res["build_speedup"] = res["bm25s_build_s"] / res["juris_build_s"]
        res["build_rss_ratio"] = res["juris_build_rss_mib"] / res["bm25s_build_rss_mib"]
    res["search_rss_ratio"] = res["juris_search_rss_mib"] / res["bm25s_search_rss_mib"]
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--copies", type=int, default=97)
    ap.add_argument("--skip-large", action="store_true")
    ap.add_argument("--search-only", action="store_true")
    a = ap.parse_args()
    sci = Path(a.data) / "scifact"
    if not sci.is_dir():
        sys.exit(f"skipped: {sci} not found (the evaluation data lives in shared/data)")
    OUT.mkdir(parents=True, exist_ok=True)
    results = []
    q20 = OUT / "queries-x20.jsonl"
    n = repeat_queries(sci / "queries.jsonl", 20, q20)
    results.append(measure("scifact", sci / "corpus.jsonl", q20, n, a.runs, a.search_only))
    if not a.skip_large:
        big = OUT / f"scifact-x{a.copies}.jsonl"
        if not big.exists():
            subprocess.run([sys.executable, ROOT / "bench" / "make_copies.py", sci / "corpus.jsonl", str(a.copies), big], check=True)
        q1 = OUT / "queries-x1.jsonl"
        n1 = repeat_queries(sci / "queries.jsonl", 1, q1)
        results.append(measure(f"scifact-x{a.copies}", big, q1, n1, a.runs, a.search_only))
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "command": "bench/.venv/bin/python bench/speed.py " + " ".join(sys.argv[1:]), "runs": a.runs}
    (OUT.parent / "speed.json").write_text(json.dumps({"meta": meta, "results": results}, indent=1))
    print("\n| corpus | queries per pass | juris build s | bm25s build s | build speed-up | juris q/s | bm25s q/s | q/s ratio | build RSS MiB juris / bm25s | search RSS MiB juris / bm25s |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---|")
    na = lambda r, k, f: format(r[k], f) if k in r else "–"
    for r in results:
        print(f"| {r['corpus']} | {r['queries']} q | {na(r, 'juris_build_s', '.2f')} | {na(r, 'bm25s_build_s', '.2f')} | "
              f"{na(r, 'build_speedup', '.1f')}× | {r['juris_qps']:.0f} | {r['bm25s_qps']:.0f} | {r['qps_ratio']:.1f}× | "
              f"{na(r, 'juris_build_rss_mib', '.0f')} / {na(r, 'bm25s_build_rss_mib', '.0f')} | "
              f"{r['juris_search_rss_mib']:.0f} / {r['bm25s_search_rss_mib']:.0f} |")

if __name__ == "__main__":
    main()
