"""AG News (4 classes) with tiny encoders built from configs: does a non-BERT architecture learn a real multi-class
task through `knowacq train`, `knowacq optimize` and `knowacq eval` as BERT does? (Issue 20, deliverable 5.)

    python benchmarks/agnews_archs.py [--archs bert,distilbert,roberta] [--train-rows 6000] [--seeds 3]
        [--out docs/benchmarks/DATE-agnews-archs.json]

The shared AG News file is its test split (7,600 rows); a fixed permutation (seed 0) gives `--train-rows` rows to
train on and the remaining rows as dev. Each architecture is the tests' tiny randomly initialised encoder (width
32, 2 layers, 2 heads; tests/export/_archs.py) with its own tokenizer kind: WordPiece over the tests' common-word
vocabulary for BERT and DistilBERT, byte-level BPE trained on the synthetic corpus for RoBERTa. Nothing is
pretrained, so the figures say whether the pipeline trains and exports the architecture, not how good a real
checkpoint is. Per (architecture, seed): dev accuracy and macro-F1 of the trained model, of its cpu-int8 variant,
the training wall time; then per architecture the mean with a t interval over seeds.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

from export import GateResult, evaluate_variant, optimize, preset
from knowacq.base import load_tsv, machine_info, mean_interval, write_tsv
from knowacq.errors import KnowacqError
from knowacq.train import TrainConfig, evaluate, fine_tune
from tests.export._archs import tiny_encoder

CONFIG = TrainConfig(epochs=6, batch_size=32, learning_rate=2e-3, max_length=64, patience=100, save_checkpoints=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data" / "agnews" / "test.tsv")
    parser.add_argument("--archs", default="bert,distilbert,roberta")
    parser.add_argument("--train-rows", type=int, default=6000)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=CONFIG.epochs)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--resume", type=Path, help="A log of an earlier run of the same command: its finished rows are kept"
    )
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    news = load_tsv(args.data)
    order = np.random.default_rng(0).permutation(len(news))
    rows: list[dict] = []
    if args.resume is not None:  # the JSON lines an interrupted run printed, one per (arch, seed)
        rows = [json.loads(line) for line in args.resume.read_text().splitlines() if line.startswith("{")]
    with tempfile.TemporaryDirectory(prefix="knowacq-agnews-") as tmp:
        folder = Path(tmp)
        (folder / "labels.txt").write_text("\n".join(news.label_names) + "\n")
        names = [news.label_names[i] for i in news.labels]
        for split, idx in (("train", order[: args.train_rows]), ("dev", order[args.train_rows :])):
            write_tsv(folder / f"{split}.tsv", [news.texts[i] for i in idx], [names[i] for i in idx])
        train, dev = load_tsv(folder / "train.tsv"), load_tsv(folder / "dev.tsv")
        for seed in range(args.seeds):  # seeds outermost: the architectures interleave
            for arch in args.archs.split(","):
                if any(r["arch"] == arch and r["seed"] == seed for r in rows):
                    continue
                rows.append(_one(arch, seed, train, dev, folder, args.epochs))
                print(json.dumps(rows[-1]), flush=True)
    summary = {}
    for arch in args.archs.split(","):
        mine = [r for r in rows if r["arch"] == arch]
        summary[arch] = {
            key: mean_interval([r[key] for r in mine if r[key] is not None]).as_dict()
            for key in ("source_accuracy", "source_macro_f1", "int8_accuracy", "train_seconds")
        }
        summary[arch]["int8_refused"] = sum(r["int8_accuracy"] is None for r in mine)
    result = {
        "command": " ".join(sys.argv),
        "data": {"file": str(args.data), "train_rows": len(train), "dev_rows": len(dev), "split_seed": 0},
        "train_config": {**CONFIG.to_dict(), "epochs": args.epochs, "seed": "0..seeds-1"},
        "machine": machine_info(threads=2),
        "runs": rows,
        "summary": summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def _one(arch: str, seed: int, train, dev, folder: Path, epochs: int) -> dict:
    import dataclasses

    base = tiny_encoder(arch, folder / f"{arch}-base")
    model = folder / f"{arch}-{seed}"
    config = dataclasses.replace(CONFIG, seed=seed, epochs=epochs)
    started = time.perf_counter()
    fine_tune(train, dev, model, base=base, config=config, progress=False, overwrite=True, log=lambda _: None)
    seconds = time.perf_counter() - started
    source = evaluate(model, dev)
    out = folder / f"{arch}-{seed}-int8"
    try:
        variant = optimize(model, preset("cpu-int8"), out, overwrite=True, progress=False, log=lambda _: None)
        int8_accuracy: float | None = evaluate_variant(variant.out_dir, folder / "dev.tsv").accuracy
    except KnowacqError:  # a gate refused the variant: the manifest written alone is the report
        int8_accuracy = None
    manifest = json.loads((out / "manifest.json").read_text())
    return {
        "arch": arch,
        "seed": seed,
        "source_accuracy": source.accuracy,
        "source_macro_f1": source.macro_f1,
        "int8_accuracy": int8_accuracy,
        "int8_variant_accuracy_if_refused": manifest["metrics"].get("accuracy") if int8_accuracy is None else None,
        "int8_gates": [str(GateResult(**g)) for g in manifest["gates"]],
        "train_seconds": round(seconds, 1),
        "parameters": manifest["metrics"].get("params_before"),
    }


if __name__ == "__main__":
    main()
