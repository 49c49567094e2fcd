"""In-process cost of a shadow candidate by its ONNX Runtime session options (2026-12-02).

The serving core classifies 64-text batches of SST-2 dev for 8 s per contender, 4 rounds in turn; the
shadow scores 10% of the batches with the same variant in a background thread. Run from the repository root
after `make demo`: `.venv/bin/python docs/benchmarks/2026-12-02-shadow-session-options.py`.
"""
import time, json, sys, tempfile, numpy as np
from pathlib import Path
from prometheus_client import CollectorRegistry
from bento import ClassifierCore, ServiceMetrics, Settings
from bento._shadow import ShadowScorer
from export import Predictor
from knowacq.base import FeedbackStore, load_tsv, machine_info, cpu_threads
V = "runs/variants/cpu-int8-pruned"
texts = list(load_tsv("../shared/data/sst2/dev.tsv").texts)
settings = Settings(model=V, shadow_share=0.1)
tmp = Path(tempfile.mkdtemp())
store = FeedbackStore(f"sqlite:///{tmp/'s.db'}")
core = ClassifierCore(Predictor(V, max_batch_size=64, bucket_tokens=8), settings, store=store, metrics=ServiceMetrics(("negative","positive"), registry=CollectorRegistry()))
def rate(seconds=8):
    n=0; t0=time.perf_counter(); i=0
    while time.perf_counter()-t0 < seconds:
        batch=[texts[(i*64+j)%len(texts)] for j in range(64)]; i+=1
        core.classify(batch); n+=64
    return n/(time.perf_counter()-t0)
contenders = {"none": None, "default": {}, "nospin": {"spinning": False}, "1thread-nospin": {"threads": 1, "spinning": False}}
out = {k: [] for k in contenders}
rate(3)
for r in range(4):
    for name, kw in contenders.items():
        if kw is None:
            core.shadow = None
        else:
            run = store.start_shadow(V)
            core.shadow = ShadowScorer(Predictor(V, max_batch_size=64, bucket_tokens=8, **kw), run.id, settings, store=store, metrics=core.metrics)
        out[name].append(rate())
        if core.shadow: core.shadow.close(timeout=10); core.shadow=None
        print(r, name, round(out[name][-1],1), flush=True)
base = np.array(out["none"])
summary = {}
for k,v in out.items():
    ratios = np.array(v)/base
    summary[k] = {"texts_per_s": v, "texts_per_s_median": float(np.median(v)), "ratio_median": float(np.median(ratios)), "ratio_min": float(ratios.min()), "ratio_max": float(ratios.max()), "options": contenders[k]}
    print(k, "median", round(float(np.median(v)),1), "ratio median", round(float(np.median(ratios)),3), [round(x,3) for x in ratios])
Path("docs/benchmarks/2026-12-02-shadow-session-options.json").write_text(json.dumps({"machine": machine_info(cpu_threads()), "variant": V, "batch": 64, "seconds_per_run": 8, "rounds": 4, "shadow_share": 0.1, "results": summary}, indent=2) + "\n")
