"""Monitoring as code: promtool checks and unit tests, a real Prometheus scraping the real service, and every
metric named by a dashboard or a rule exported by the running service."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from bento import ServerProcess, free_port

REPO = Path(__file__).resolve().parents[2]
MONITORING = REPO / "monitoring"
RULES = MONITORING / "rules" / "knowacq.rules.yml"
DASHBOARDS = sorted((MONITORING / "dashboards").glob("*.json"))


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{name} is required under CI (Debian package 'prometheus'); .ci/run installs it")
        pytest.skip(f"{name} not installed (apt-get install prometheus)")
    return path


def test_promtool_checks_the_rules_and_the_config() -> None:
    promtool = _tool("promtool")
    for args in (["check", "rules", str(RULES)], ["check", "config", str(MONITORING / "prometheus.yml")]):
        done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stdout + done.stderr


def test_promtool_unit_tests_cover_every_alert_firing_and_quiet() -> None:
    promtool = _tool("promtool")
    done = subprocess.run(
        [promtool, "test", "rules", str(MONITORING / "tests" / "knowacq.test.yml")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    alerts = {r["alert"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load((MONITORING / "tests" / "knowacq.test.yml").read_text())["tests"]
    fired = {t["alert_rule_test"][0]["alertname"] for t in tests if t["alert_rule_test"][0]["exp_alerts"]}
    quiet = {t["alert_rule_test"][0]["alertname"] for t in tests if not t["alert_rule_test"][0]["exp_alerts"]}
    assert fired == alerts and quiet == alerts


def test_every_alert_has_a_runbook_and_every_dashboard_a_stable_uid() -> None:
    for group in yaml.safe_load(RULES.read_text())["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                assert rule["annotations"].get("runbook"), rule["alert"]
                assert rule["labels"]["severity"] in ("page", "ticket"), rule["alert"]
    uids = set()
    for path in DASHBOARDS:
        board = json.loads(path.read_text())
        assert board["uid"].startswith("knowacq-") and board["uid"] not in uids
        uids.add(board["uid"])
        assert [v["name"] for v in board["templating"]["list"]] == ["datasource"]
        for p in board["panels"]:
            assert p["datasource"]["uid"] == "${datasource}" and p["targets"], (path.name, p["title"])
    assert len(uids) == 3


def _named_metrics() -> set[str]:
    """Every exported metric a dashboard or rule names (recording-rule names, with ':', are not exported)."""
    exprs = [r["expr"] for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]
    for path in DASHBOARDS:
        exprs += [t["expr"] for p in json.loads(path.read_text())["panels"] for t in p["targets"]]
    names = set()
    for expr in exprs:
        names.update(re.findall(r"\b((?:knowacq|bentoml)_[a-z0-9_]+)\b", expr))
    return names


@pytest.fixture(scope="module")
def service(fp32_variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    folder = tmp_path_factory.mktemp("monitoring")
    # The tiny model is near-certain about everything (scores > 0.996); a threshold of 1.0 makes its answers
    # count as low-confidence, so that the low-confidence alert has something to see. Drift gauges from the
    # first text on (the default waits for 200), so that the scrape after one request holds them.
    settings = {
        "model": str(fp32_variant),
        "api_token": "t",
        "store_url": f"sqlite:///{folder / 's.db'}",
        "threads": 1,
        "min_confidence": 1.0,
        "reload_poll_s": 1,
        "drift_min_texts": 1,
    }
    # A BentoML home of its own: BentoML keeps the multiprocess metrics in $BENTOML_HOME/prometheus_multiproc_dir
    # and clears it when a server starts, so with the shared ~/bentoml any other server on the machine would
    # wipe or add to the counters this module's Prometheus reads.
    with pytest.MonkeyPatch.context() as env:
        env.setenv("BENTOML_HOME", str(folder / "bentoml"))
        with ServerProcess(settings, log_file=folder / "server.log", cwd=folder) as server:
            yield server


def test_every_metric_named_by_dashboards_and_rules_is_exported(service: ServerProcess) -> None:
    httpx.post(f"{service.url}/classify", json={"texts": ["great film"]}, timeout=30)
    httpx.post(f"{service.url}/classify", content=b"{bad", headers={"content-type": "application/json"}, timeout=30)
    scrape = httpx.get(f"{service.url}/metrics", timeout=30).text
    exported = {m.group(1) for m in re.finditer(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)[{ ]", scrape, re.MULTILINE)}
    named = _named_metrics()
    assert len(named) >= 15
    missing = sorted(n for n in named if n not in exported)
    assert not missing, f"named in monitoring/ but not exported by the service: {missing}"


def test_real_prometheus_scrapes_records_and_alerts(service: ServerProcess, tmp_path: Path) -> None:
    prometheus = _tool("prometheus")
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        yaml.safe_dump(
            {
                "global": {"scrape_interval": "2s", "evaluation_interval": "2s"},
                "rule_files": [str(RULES)],
                "scrape_configs": [
                    {"job_name": "knowacq", "static_configs": [{"targets": [service.url.split("//")[1]]}]}
                ],
            }
        )
    )
    log = open(tmp_path / "prometheus.log", "wb")
    proc = subprocess.Popen(
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    api = f"http://127.0.0.1:{port}/api/v1"
    stop = threading.Event()
    phase = {"texts": ["a great lovely superb film"]}

    def traffic() -> None:
        with httpx.Client(base_url=service.url, timeout=30) as client:
            while not stop.is_set():
                client.post("/classify", json={"texts": phase["texts"] * 4})
                time.sleep(0.05)

    def query(expr: str) -> list[dict]:
        return httpx.get(f"{api}/query", params={"query": expr}, timeout=10).json()["data"]["result"]

    def alerts() -> dict[str, str]:
        data = httpx.get(f"{api}/alerts", timeout=10).json()["data"]["alerts"]
        return {a["labels"]["alertname"]: a["state"] for a in data}

    workers = [threading.Thread(target=traffic) for _ in range(2)]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/-/ready", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        for w in workers:
            w.start()
        time.sleep(45)  # a baseline of positive predictions
        phase["texts"] = ["an awful boring dull terrible plot"]  # then a negative-heavy burst
        deadline = time.monotonic() + 120
        seen: dict[str, str] = {}
        while time.monotonic() < deadline:
            seen = alerts()
            if {"KnowacqLowConfidenceRateHigh", "KnowacqWatchedLabelSurge", "KnowacqDriftHigh"} <= set(seen):
                break
            time.sleep(2)
        targets = httpx.get(f"{api}/targets", timeout=10).json()["data"]["activeTargets"]
        assert [t["health"] for t in targets] == ["up"]
        assert query("knowacq_predictions_total"), "the service's metrics were not scraped"
        assert query('knowacq:requests:rate5m{endpoint="classify"}'), "recording rules produced nothing"
        assert query("knowacq:estimated_accuracy:ratio_rate30m")
        assert seen.get("KnowacqLowConfidenceRateHigh") in ("pending", "firing"), seen
        assert seen.get("KnowacqWatchedLabelSurge") in ("pending", "firing"), seen
        # One repeated sentence at a time, against the dev set of 5 to 13 words the profile was measured on.
        assert {r["metric"]["signal"] for r in query("knowacq_drift_psi > 0.25")} >= {"length"}
        assert seen.get("KnowacqDriftHigh") in ("pending", "firing"), seen
        assert "KnowacqErrorRatioHigh" not in seen and "KnowacqFallbackProvider" not in seen
    finally:
        stop.set()
        for w in workers:
            if w.is_alive():
                w.join(30)
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()
