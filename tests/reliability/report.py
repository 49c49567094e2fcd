"""Turns the reliability suite's figures (one JSON per test, in KNOWACQ_RELIABILITY_OUT) into Markdown.

python tests/reliability/report.py runs/reliability > runs/reliability/summary.md
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def render(folder: Path) -> str:
    records = {p.stem: json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))}
    if not records:
        raise SystemExit(f"no figures in {folder}: run the suite with KNOWACQ_RELIABILITY_OUT={folder}")
    mode = {r.get("mode") for r in records.values()}
    lines = [f"Mode: {', '.join(sorted(m for m in mode if m))}; {len(records)} tests with figures.", ""]

    def get(prefix: str) -> list[dict]:
        return [r for name, r in records.items() if name.startswith(prefix)]

    rows: list[tuple[str, str, str, str]] = []
    for r in get("test_schemathesis"):
        rows.append(
            (
                "fuzzing: schemathesis (OpenAPI, with and without token)",
                f"{r.get('cases')} cases",
                f"{r.get('server_errors')} 5xx",
                r["outcome"],
            )
        )
    for r in get("test_the_server_survived"):
        rows.append(
            (
                "fuzzing: hypothesis properties over HTTP",
                f"{r.get('property_requests')} requests (status counts {r.get('status_counts')})",
                f"{r.get('server_errors')} 5xx; no text or token in the log",
                r["outcome"],
            )
        )
    for r in get("test_load"):
        s, m, o = r.get("steady", {}), r.get("max", {}), r.get("overload", {})
        rows.append(
            (
                "load: maximum (32 users, no wait)",
                f"{_fmt(m.get('rps'))} req/s, {r.get('texts_per_request', 4)} texts each",
                f"p50/p95/p99 {m.get('p50_ms')}/{m.get('p95_ms')}/{m.get('p99_ms')} ms",
                r["outcome"],
            )
        )
        rows.append(
            (
                f"load: {_fmt(r.get('steady_fraction_of_max'))}x of the maximum for {s.get('seconds')} s",
                f"{s.get('requests')} requests, {sum((s.get('failures') or {}).values())} errors",
                f"p50/p95/p99 {s.get('p50_ms')}/{s.get('p95_ms')}/{s.get('p99_ms')} ms",
                r["outcome"],
            )
        )
        rows.append(
            (
                f"overload: {_fmt(r.get('overload_offered_x_max'))}x the maximum for {o.get('seconds')} s",
                f"{o.get('requests')} requests; refused {r.get('overload_refused')}",
                f"other errors {r.get('overload_other_errors') or 0}; back to normal in "
                f"{_fmt(r.get('recovery_seconds'))} s",
                r["outcome"],
            )
        )
    for r in get("test_acknowledged"):
        rows.append(
            (
                f"crash: kill -9 x {r.get('kill_cycles')} ({r.get('backend')})",
                f"{r.get('acknowledged_captures')} captures, {r.get('acknowledged_labels')} labels acknowledged",
                f"lost {r.get('lost_captures')} + {r.get('lost_labels')}; integrity ok: {r.get('integrity_ok')}",
                r["outcome"],
            )
        )
    for r in get("test_sigterm"):
        rows.append(
            (
                f"drain: SIGTERM x {r.get('rounds')}",
                f"{r.get('requests')} requests in flight",
                f"{r.get('failed')} failed; exit within {_fmt(r.get('max_exit_seconds'))} s "
                f"(grace {r.get('grace_seconds')} s)",
                r["outcome"],
            )
        )
    for r in get("test_no_request_fails"):
        rows.append(
            (
                f"hot swap under load: {r.get('swaps')} swaps",
                f"{r.get('requests')} requests, {r.get('client_threads')} client threads",
                f"{r.get('failed')} failed; {r.get('version_changes_seen')} version changes seen",
                r["outcome"],
            )
        )
    for r in get("test_protected"):
        rows.append(
            (
                f"auth: {r.get('path')}",
                f"{r.get('wrong_or_missing_tried')} missing/wrong tokens",
                f"{r.get('refused_401')} answered 401",
                r["outcome"],
            )
        )
    for r in get("test_every_labelled"):
        rows.append(
            (
                "PII: labelled set",
                f"{r.get('strings')} strings {r.get('per_kind')}",
                f"recall {_fmt(r.get('recall'))}",
                r["outcome"],
            )
        )
    for r in get("test_false_positive"):
        dev, train = r.get("sst2_dev", {}), r.get("sst2_train", {})
        rows.append(
            (
                "PII: false positives on SST-2",
                f"dev {dev.get('changed')}/{dev.get('texts')}, "
                f"train {train.get('changed')}/{train.get('texts')} texts changed",
                f"rate dev {_fmt(dev.get('false_positive_rate'))}, train {_fmt(train.get('false_positive_rate'))}",
                r["outcome"],
            )
        )
    lines += ["| part | work | result | test |", "|---|---|---|---|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    print(render(Path(sys.argv[1] if len(sys.argv) > 1 else "runs/reliability")), end="")
