"""`knowacq predict` against the engine figure of `knowacq bench`, on the same texts, interleaved.

    python benchmarks/predict_pool.py VARIANT --data ../shared/data/sst2/train.tsv --out docs/benchmarks/NAME.json

Each round times both contenders on the same rows, the order alternating by round:
- engine: the variant's `Predictor` over the texts held in memory, in batches of 32 sorted by length, exactly as
  `knowacq bench` times its throughput (tokenisation included, nothing read or written);
- predict: `knowacq predict VARIANT --data FILE --out OUT.parquet --json` as a user runs it (a subprocess: its
  own peak memory; its texts/s is its scoring loop: reading, scoring and writing, after the model has loaded).
It reports the median texts/s of each with the [min, max] of the rounds, the ratio paired by round, and the
peak memory of the predict process; JSON beside Markdown, with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from export import Predictor
from knowacq.base import length_sorted_batches, load_tsv, machine_info


def engine_round(predictor: Predictor, texts: list[str]) -> float:
    batches = length_sorted_batches(np.array([len(t) for t in texts]), 32)
    started = time.perf_counter()
    for idx in batches:
        predictor.logits([texts[i] for i in idx])
    return len(texts) / (time.perf_counter() - started)


def predict_round(variant: Path, data: Path, out: Path, threads: int) -> dict:
    command = [sys.executable, "-m", "knowacq", "predict", str(variant), "--data", str(data), "--out", str(out)]
    command += ["--json", "--no-progress", "--threads", str(threads)]
    done = subprocess.run(
        command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, check=False
    )
    if done.returncode != 0:
        raise SystemExit(f"knowacq predict failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout)


def summary(values: list[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(min(values)), "max": float(max(values)), "rounds": values}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variant", type=Path)
    parser.add_argument("--data", type=Path, required=True, help="A TSV with a 'sentence' and a 'label' column.")
    parser.add_argument("--out", type=Path, required=True, help="JSON results (.md beside).")
    parser.add_argument("--rows", type=int, default=0, help="Rows of --data to use (0: all).")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()

    texts = list(load_tsv(args.data).texts)
    if args.rows:
        texts = texts[: args.rows]
    predictor = Predictor(args.variant, threads=args.threads, max_batch_size=32)
    work = Path(tempfile.mkdtemp(prefix="knowacq-predict-bench-"))
    pool = work / "pool.tsv"
    pool.write_text("text\n" + "".join(t.replace("\t", " ").replace("\n", " ") + "\n" for t in texts))
    engine, predict, ratios, memory = [], [], [], []
    engine_round(predictor, texts[:512])  # warm-up
    for r in range(args.rounds):
        order = ("engine", "predict") if r % 2 == 0 else ("predict", "engine")
        got = {}
        for name in order:
            if name == "engine":
                got[name] = engine_round(predictor, texts)
            else:
                figures = predict_round(args.variant, pool, work / f"scored-{r}.parquet", args.threads)
                got[name] = figures["texts_per_s"]
                memory.append(figures["peak_rss_mb"])
                if figures["rows"] != len(texts):
                    raise SystemExit(f"predict scored {figures['rows']} of {len(texts)} rows")
        engine.append(got["engine"])
        predict.append(got["predict"])
        ratios.append(got["predict"] / got["engine"])
        print(f"round {r + 1}: engine {got['engine']:.1f}, predict {got['predict']:.1f} texts/s ({ratios[-1]:.3f}x)")
    result = {
        "machine": machine_info(args.threads),
        "variant": str(args.variant),
        "data": str(args.data.resolve()),
        "rows": len(texts),
        "rounds": args.rounds,
        "engine_texts_per_s": summary(engine),
        "predict_texts_per_s": summary(predict),
        "ratio": summary(ratios),
        "predict_peak_rss_mb": summary(memory),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")

    def cell(s: dict, fmt: str = ".1f") -> str:
        return f"{s['median']:{fmt}} [{s['min']:{fmt}}, {s['max']:{fmt}}]"

    cpu = result["machine"].get("cpu", "")
    md = (
        f"`knowacq predict` against `knowacq bench`'s engine figure: {args.variant.name}, {len(texts)} rows of "
        f"`{args.data}`, {args.rounds} rounds (order alternating), {args.threads} threads; {cpu}. "
        "Median [min, max].\n\n"
        "| contender | texts/s |\n|---|---:|\n"
        "| engine (bench's throughput: in memory, batches of 32 sorted by length) | "
        f"{cell(result['engine_texts_per_s'])} |\n"
        f"| knowacq predict (TSV in, Parquet out, in chunks) | {cell(result['predict_texts_per_s'])} |\n\n"
        f"predict / engine, paired by round: **{cell(result['ratio'], '.3f')}**; peak memory of the predict "
        f"process {cell(result['predict_peak_rss_mb'], '.0f')} MiB.\n"
    )
    args.out.with_suffix(".md").write_text(md)
    print(md)


if __name__ == "__main__":
    main()
