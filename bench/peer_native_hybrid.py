"""The Python stack of issue 3's reference figures, in its most natural form: bm25s with its
own tokenizer (English stopwords, PyStemmer) at its default BM25 (Lucene, k1 1.5, b 0.75),
sentence-transformers all-MiniLM-L6-v2 (CPU, max length 256), per-query min-max scores of
both top-100 lists summed with alpha chosen on train by nDCG@10 (0, 0.05, ..., 1), reported on
dev. Prints the train choice and dev nDCG@10 of BM25, dense and hybrid.

usage: bench/.venv/bin/python bench/peer_native_hybrid.py [DATASET_DIR]
       (default ../shared/data/coliee_statute_en; needs bm25s, PyStemmer, sentence-transformers)
"""
import json, sys
from pathlib import Path

import bm25s
import numpy as np
import Stemmer
from sentence_transformers import SentenceTransformer

ROOT = Path(__file__).resolve().parent.parent
D = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "coliee_statute_en"
if not D.is_dir():
    sys.exit(f"skipped: {D} not found (the evaluation data lives in shared/data)")
docs=[json.loads(l) for l in open(D / "corpus.jsonl")]; queries=[json.loads(l) for l in open(D / "queries.jsonl")]
def qrels(s):
    q={}
    for l in open(D / "qrels" / f"{s}.tsv"):
        p=l.rstrip("\n").split("\t")
        if p[0]=="query-id": continue
        q.setdefault(p[0],{})[p[1]]=int(p[2])
    return q
Q={s:qrels(s) for s in ["train","dev"]}
ids=[d["_id"] for d in docs]
texts=[(d.get("title","")+"\n"+d["text"]).strip() for d in docs]
st=Stemmer.Stemmer("english")
bm=bm25s.BM25(); bm.index(bm25s.tokenize(texts,stopwords="en",stemmer=st,show_progress=False),show_progress=False)
m=SentenceTransformer(str(ROOT / "models" / "minilm"), device="cpu")
dv=m.encode(texts,batch_size=32,normalize_embeddings=True); qv=m.encode([q["text"] for q in queries],batch_size=32,normalize_embeddings=True)
qt=bm25s.tokenize([q["text"] for q in queries],stopwords="en",stemmer=st,show_progress=False,return_ids=False)
def ndcg(run,qr):
    t=0
    for q,rel in qr.items():
        r=run.get(q,[])[:10]
        dcg=sum((2**rel.get(d,0)-1)/np.log2(i+2) for i,d in enumerate(r))
        idcg=sum((2**g-1)/np.log2(i+2) for i,g in enumerate(sorted(rel.values(),reverse=True)[:10]))
        t+=dcg/idcg
    return t/len(qr)
lists={}
for qi,q in enumerate(queries):
    lex=bm.get_scores(qt[qi]); den=dv@qv[qi]
    lt=[i for i in np.argsort(-lex,kind="stable")[:100] if lex[i]>0]; dt=np.argsort(-den,kind="stable")[:100]
    lists[q["_id"]]=({int(i):float(lex[i]) for i in lt},{int(i):float(den[i]) for i in dt})
def mm(s):
    if not s: return {}
    lo,hi=min(s.values()),max(s.values()); return {k:(v-lo)/max(hi-lo,1e-9) for k,v in s.items()}
def run_for(a):
    run={}
    for q,(l,d) in lists.items():
        ln,dn=mm(l),mm(d); f={k:a*ln.get(k,0)+(1-a)*dn.get(k,0) for k in set(ln)|set(dn)}
        run[q]=[ids[k] for k,_ in sorted(f.items(),key=lambda kv:(-kv[1],kv[0]))[:100]]
    return run
res=[(ndcg(run_for(s/20),Q["train"]),s/20) for s in range(21)]
best=max(res); print("train best",best)
for a in [1.0,0.0,best[1]]: print(a, "dev ndcg", round(ndcg(run_for(a),Q["dev"]),4))
