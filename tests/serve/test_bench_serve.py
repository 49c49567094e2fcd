"""`knowacq bench-serve` on the tiny model: knowacq's server, the peer and the engine in one short run."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bento import bench_serve
from knowacq.errors import ConfigError

pytest.importorskip("optimum.onnxruntime")


def test_bench_serve_compares_server_peer_and_engine_in_interleaved_rounds(fp32_variant: Path, tmp_path: Path) -> None:
    texts = tmp_path / "texts.tsv"
    texts.write_text("sentence\tlabel\n" + "".join(f"a {'fine ' * (i % 9)}film number {i}\t1\n" for i in range(60)))
    out = tmp_path / "bench" / "serve.json"
    lines: list[str] = []
    result = bench_serve(
        fp32_variant,
        out,
        data=texts,
        concurrencies=(1, 4),
        shapes=(1, 3),
        rounds=2,
        duration_s=1.0,
        warmup_s=0.3,
        settings={"threads": 1},
        log=lines.append,
    )
    saved = json.loads(out.read_text())
    assert saved["served"] == result["served"]
    cells = result["served"]
    assert sorted(cells) == sorted(f"{s}/{n}/{c}" for s in ("knowacq", "peer") for n in (1, 3) for c in (1, 4))
    for key, cell in cells.items():
        assert cell["errors"] == 0 and set(cell["statuses"]) == {"200"}, (key, cell)
        assert 0 < cell["texts_per_s"]["min"] <= cell["texts_per_s"]["median"] <= cell["texts_per_s"]["max"]
        assert cell["x_engine"]["median"] > 0
        assert ("x_peer" in cell) == (cell["server"] == "knowacq")
        # the server's CPU over the measured time: its processes worked (not zero), at most the machine's cores
        cores = cell["server_cores"]
        assert 0 < cell["server_cpu_ms_per_text"]["median"] and 0 < cores["max"] <= (os.cpu_count() or 1) + 0.5, cell
        assert len(result["runs"][key]) == 2  # one row per round, never a best-of
    # the engine is timed in the batch sizes the server can form: min(max_batch_size, concurrency x shape)
    assert sorted(result["engine"], key=int) == ["1", "3", "4", "12"]
    assert len(result["engine_runs"]["12"]) == 2
    assert all(cell["cpu_ms_per_text"]["min"] > 0 for cell in result["engine"].values())
    # the settings are the ones the server reported, not the ones asked for
    assert result["settings_reported_by_server"]["threads"] == 1
    assert result["settings_reported_by_server"]["access_log"] is False
    markdown = out.with_suffix(".md").read_text()
    assert "| knowacq | 1 | 4 |" in markdown and "| peer | 3 | 1 |" in markdown
    assert sum("round 1/2" in line for line in lines) == 8  # every cell driven in round 1


def test_bench_overload_reports_goodput_statuses_and_recovery(fp32_variant: Path, tmp_path: Path) -> None:
    from bento import bench_overload

    texts = tmp_path / "texts.tsv"
    texts.write_text("sentence\tlabel\n" + "".join(f"a {'dull ' * (i % 7)}film {i}\t0\n" for i in range(50)))
    out = tmp_path / "overload.json"
    result = bench_overload(
        fp32_variant,
        out,
        data=texts,
        factors=(2.0,),
        texts_per_request=4,
        concurrency=8,
        rounds=1,
        duration_s=2.0,
        capacity_s=1.5,
        # a bound the tiny model meets even when the in-process client, not the server, lags (CI's 2 cores)
        settings={"threads": 1, "max_latency_ms": 10_000},
        log=lambda _line: None,
    )
    assert json.loads(out.read_text())["summary"] == result["summary"]
    (row,) = result["runs"]
    assert row["factor"] == 2.0 and row["capacity_texts_per_s"] > 0
    offered = row["offered_requests"]
    assert offered == int(2.0 * row["capacity_texts_per_s"] / 4 * 2.0)  # paced: rate x duration, sent on time
    assert sum(row["statuses"].values()) == offered and row["statuses"].get("200", 0) > 0
    assert set(row["statuses"]) <= {"200", "429", "503"}, row["statuses"]  # refused, never failed
    assert 0 < row["goodput_share"] and row["recovery_s"] is not None
    assert "| 2x |" in out.with_suffix(".md").read_text()


def test_bench_contenders_drives_servers_in_turn_and_pairs_ratios_by_round(fp32_variant: Path, tmp_path: Path) -> None:
    from bento import bench_contenders

    texts = tmp_path / "texts.tsv"
    texts.write_text("sentence\tlabel\n" + "".join(f"a {'slow ' * (i % 5)}film {i}\t0\n" for i in range(40)))
    out = tmp_path / "contenders.json"
    lines: list[str] = []
    result = bench_contenders(
        fp32_variant,
        out,
        {"base": {"threads": "1"}, "sleeping": {"threads": "1", "spinning": "false"}},
        data=texts,
        concurrency=4,
        duration_s=1.0,
        warmup_s=0.3,
        rounds=2,
        texts_per_request=2,
        log=lines.append,
    )
    assert json.loads(out.read_text())["summary"] == result["summary"]
    base, sleeping = result["summary"]["base"], result["summary"]["sleeping"]
    assert base["ratio_to_baseline_median"] == 1.0 and sleeping["settings"] == {"threads": "1", "spinning": "false"}
    for row in (base, sleeping):
        assert row["errors"] == 0 and row["texts_per_s_min"] > 0 and row["server_cpu_ms_per_text_median"] > 0
    # in turn, the order rotating: round 1 base then sleeping, round 2 sleeping then base
    driven = [line.split()[2].rstrip(":") for line in lines if line.startswith("round")]
    assert driven == ["base", "sleeping", "sleeping", "base"], lines
    ratios = [s["texts_per_s"] / b["texts_per_s"] for s, b in zip(result["runs"]["sleeping"], result["runs"]["base"])]
    assert sleeping["ratio_to_baseline_min"] == pytest.approx(min(ratios))
    with pytest.raises(ConfigError, match="at least two contenders"):
        bench_contenders(fp32_variant, out, {"alone": {}}, data=texts)
