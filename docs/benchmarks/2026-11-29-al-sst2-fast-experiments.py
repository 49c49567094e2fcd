"""Offline experiments behind docs/benchmarks/2026-11-29-al-sst2-fast.md (not part of the package or the tests).

Needs the embedding cache of a first `knowacq al simulate` run in runs/al-sim/cache (same pool split). The
tuning metric is accuracy on 6,000 TRAINING rows: the 1,000 held-out rows plus 5,000 pool rows withdrawn
from the pool in these experiments; dev accuracy is printed too but was not used to choose anything.

    python docs/benchmarks/2026-11-29-al-sst2-fast-experiments.py variants none 1.0 random,margin,diversity,badge,density
    python docs/benchmarks/2026-11-29-al-sst2-fast-experiments.py ceiling
"""
import hashlib
import sys
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
from knowacq.base import load_tsv  # noqa: E402
from knowacq.train import default_base_model  # noqa: E402
from knowacq.loop._embeddings import cached_embeddings as _cached_embeddings  # noqa: E402
from knowacq.loop._learners import fit_predict as _fit_predict  # noqa: E402
from knowacq.loop import Selection, select, strategy  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "sst2"
CACHE = ROOT / "runs" / "al-sim" / "cache"

def load():
    train = load_tsv(DATA / "train.tsv"); dev = load_tsv(DATA / "dev.tsv", label_names=train.label_names)
    order = np.random.default_rng(12345).permutation(len(train))
    held_idx, pool_idx = order[:1000], order[1000:]
    pool, held = train.subset(pool_idx), train.subset(held_idx)
    md = default_base_model()
    xp = _cached_embeddings(list(pool.texts), md, CACHE, False, print)
    xd = _cached_embeddings(list(dev.texts), md, CACHE, False, print)
    xh = _cached_embeddings(list(held.texts), md, CACHE, False, print)
    return dict(pool=pool, held=held, dev=dev, xp=xp, xd=xd, xh=xh, yp=np.asarray(pool.labels),
                yd=np.asarray(dev.labels), yh=np.asarray(held.labels))

def split_tune(D, n=5000):
    """tune = held + n pool rows; returns experiment pool indices (into D['pool'])."""
    perm = np.random.default_rng(777).permutation(len(D["yp"]))
    tune_pool, exp_pool = perm[:n], np.sort(perm[n:])
    xt = np.concatenate([D["xh"], D["xp"][tune_pool]]); yt = np.concatenate([D["yh"], D["yp"][tune_pool]])
    return exp_pool, xt, yt

def run(D, names, *, c=1.0, seeds=3, seed_labels=200, batch=200, rounds=9, near=None, tune=True, fit=None,
        log=True):
    xp_all, yp_all = D["xp"], D["yp"]
    if tune:
        idx, xt, yt = split_tune(D)
    else:
        idx, xt, yt = np.arange(len(yp_all)), D["xh"], D["yh"]
    xp, yp = xp_all[idx], yp_all[idx]
    texts = [D["pool"].texts[i] for i in idx]
    hashes = [hashlib.sha256(t.encode()).hexdigest() for t in texts]
    fit = fit or (lambda xl, yl, *t: _fit_predict(xl, yl, 2, c, *t))
    res = {}
    for name in names:
        dev_c, tune_c, picks = [], [], []
        for seed in range(seeds):
            rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
            labelled = np.zeros(len(yp), bool)
            labelled[np.random.default_rng(seed).choice(len(yp), seed_labels, replace=False)] = True
            dc, tc = [], []
            for r in range(rounds + 1):
                lab = np.flatnonzero(labelled)
                pd_, pt, pp = fit(xp[lab], yp[lab], D["xd"], xt, xp)
                dc.append(float(np.mean(pd_.argmax(1) == D["yd"]))); tc.append(float(np.mean(pt.argmax(1) == yt)))
                if r == rounds: break
                cand = np.flatnonzero(~labelled)
                got = select(strategy(name), pp[cand], batch, rng=rng, embeddings=xp[cand],
                             text_hashes=[hashes[i] for i in cand], options=Selection(near_duplicate_cosine=near))
                labelled[cand[got]] = True
                picks.append(dict(seed=seed, round=r, idx=idx[cand[got]].tolist(), p=pp[cand[got]][:, 1].tolist()))
            dev_c.append(dc); tune_c.append(tc)
        res[name] = dict(dev=np.mean(dev_c, 0).tolist(), tune=np.mean(tune_c, 0).tolist(), dev_seeds=dev_c,
                         tune_seeds=tune_c, picks=picks)
        if log:
            print(f"{name:>16} tune " + " ".join(f"{a:.3f}" for a in res[name]["tune"]) +
                  f" | auc {np.mean(res[name]['tune']):.4f}", flush=True)
            print(f"{'':>16}  dev " + " ".join(f"{a:.3f}" for a in res[name]["dev"]) +
                  f" | auc {np.mean(res[name]['dev']):.4f}", flush=True)
    return res

def reach(res, key):
    labels = [200 + 200 * r for r in range(10)]
    target = res["random"][key][-1]
    out = {}
    for n, v in res.items():
        hit = [l for l, a in zip(labels, v[key]) if a >= target - 1e-12]
        out[n] = hit[0] if hit else None
    return target, out


def ceiling(D):
    from sklearn.linear_model import LogisticRegression

    idx, xt, yt = split_tune(D)
    for c in (0.1, 1.0, 10.0, 100.0):
        m = LogisticRegression(C=c, max_iter=2000).fit(D["xp"][idx], D["yp"][idx])
        print(f"C={c}: tune {m.score(xt, yt):.4f} held {m.score(D['xh'], D['yh']):.4f} dev {m.score(D['xd'], D['yd']):.4f}")


def picks_report(D, res):
    from sklearn.linear_model import LogisticRegression

    idx, _, _ = split_tune(D)
    pf = LogisticRegression(C=1.0, max_iter=2000).fit(D["xp"][idx], D["yp"][idx]).predict_proba(D["xp"])[:, 1]
    L = np.array([len(t.split()) for t in D["pool"].texts])
    y, x = D["yp"], D["xp"]
    for name, r in res.items():
        allp = np.concatenate([np.array(p["idx"]) for p in r["picks"]])
        near = []
        for p in r["picks"]:
            u = x[p["idx"]]
            s = u @ u.T
            np.fill_diagonal(s, 0)
            near.append(np.mean(s.max(1) >= 0.98))
        print(f"{name:>10}: words mean {L[allp].mean():.1f}, full-pool model disagrees with the label "
              f"{np.mean((pf[allp] > 0.5) != y[allp]):.3f}, in-batch near-duplicates {np.mean(near):.3f}")


if __name__ == "__main__":
    D = load()
    if sys.argv[1] == "ceiling":
        ceiling(D)
    else:
        near = None if sys.argv[2] == "none" else float(sys.argv[2])
        res = run(D, sys.argv[4].split(","), c=float(sys.argv[3]), near=near)
        for key in ("tune", "dev"):
            print(key, "random final %.4f" % res["random"][key][-1], reach(res, key)[1])
        picks_report(D, res)
