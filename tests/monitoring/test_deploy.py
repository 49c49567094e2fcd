"""Kubernetes manifests: valid against the Kubernetes API schemas (offline), and consistent with the service."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import pytest
import yaml

from bento import Settings

REPO = Path(__file__).resolve().parents[2]
KUBE = REPO / "deploy" / "kubernetes"
CRDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}
KUBERNETES_VERSION = "1.30.0"


def documents() -> list[tuple[Path, dict]]:
    docs = []
    for path in sorted(KUBE.glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            if doc:
                docs.append((path, doc))
    return docs


def by_kind(kind: str) -> list[dict]:
    return [d for _, d in documents() if d.get("kind") == kind]


def test_manifests_validate_against_the_kubernetes_schemas() -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    checked = 0
    for path, doc in documents():
        if doc.get("kind") == "Kustomization":
            continue
        if (doc["apiVersion"], doc["kind"]) in CRDS:
            assert set(doc) >= {"metadata", "spec"}, path.name
            continue
        kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        checked += 1
    assert checked >= 8


def test_settings_in_manifests_are_settings_the_service_reads() -> None:
    known = {f"KNOWACQ_{f.name.upper()}" for f in dataclasses.fields(Settings)}
    names = set(by_kind("ConfigMap")[0]["data"]) | set(
        yaml.safe_load((KUBE / "secret.example.yaml").read_text())["stringData"]
    )
    for deployment in by_kind("Deployment"):
        names |= {e["name"] for e in deployment["spec"]["template"]["spec"]["containers"][0].get("env", [])}
    knowacq = {n for n in names if n.startswith("KNOWACQ_")}
    assert knowacq and knowacq <= known, knowacq - known
    Settings.from_env({k: v for k, v in by_kind("ConfigMap")[0]["data"].items() if k.startswith("KNOWACQ_")})


def test_deployments_probe_drain_and_limit_threads() -> None:
    for deployment in by_kind("Deployment"):
        spec = deployment["spec"]["template"]["spec"]
        container = spec["containers"][0]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
        assert container["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
        assert spec["terminationGracePeriodSeconds"] > int(container["lifecycle"]["preStop"]["exec"]["command"][1])
        assert spec["securityContext"]["runAsNonRoot"] is True
        assert {"configMapRef": {"name": "knowacq-settings"}} in container["envFrom"]
        assert {"secretRef": {"name": "knowacq-secrets"}} in container["envFrom"]
    cpu = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "knowacq")
    cpu = cpu["spec"]["template"]["spec"]["containers"][0]
    threads = next(e for e in cpu["env"] if e["name"] == "KNOWACQ_THREADS")
    assert threads["valueFrom"]["resourceFieldRef"]["resource"] == "limits.cpu"
    gpu = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "knowacq-gpu")
    assert gpu["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == "1"


def test_hpa_scales_on_the_adapter_metric_with_a_measured_target() -> None:
    hpa = by_kind("HorizontalPodAutoscaler")[0]
    metric = hpa["spec"]["metrics"][0]["pods"]
    adapter = yaml.safe_load(by_kind("ConfigMap")[1]["data"]["config.yaml"])
    assert metric["metric"]["name"] == adapter["rules"][0]["name"]["as"]
    target = metric["target"]["averageValue"]
    assert re.fullmatch(r"\d+", str(target)), f"the HPA target must be a measured number, got {target!r}"
    assert "knowacq bench-serve" in (KUBE / "hpa.yaml").read_text()


def test_hpa_target_is_70_percent_of_a_bench_serve_run_with_the_configmaps_settings() -> None:
    """The run hpa.yaml names served with the ConfigMap's KNOWACQ_* settings, and the target is 70% of what it
    served with one text per request at concurrency 32 (the shape most online callers send)."""
    text = (KUBE / "hpa.yaml").read_text()
    named = re.findall(r"docs/benchmarks/[\w.-]+\.json", text)
    assert len(set(named)) == 1, f"hpa.yaml must name the one bench-serve run its target comes from: {named}"
    run = json.loads((REPO / named[0]).read_text())
    configmap = next(d for d in by_kind("ConfigMap") if d["metadata"]["name"] == "knowacq-settings")["data"]
    deployed = Settings.from_env({k: v for k, v in configmap.items() if k not in ("KNOWACQ_MODEL", "KNOWACQ_PROVIDER")})
    served = run["settings_reported_by_server"]
    for key in configmap:
        name = key.removeprefix("KNOWACQ_").lower()
        if key.startswith("KNOWACQ_") and name not in ("model", "provider"):
            assert served[name] == getattr(deployed, name), f"{key}: the run served {served[name]!r}"
    one_text = run["served"]["knowacq/1/32"]
    assert one_text["errors"] == 0
    target = int(by_kind("HorizontalPodAutoscaler")[0]["spec"]["metrics"][0]["pods"]["target"]["averageValue"])
    assert target == round(0.7 * one_text["texts_per_s"]["median"]), (target, one_text["texts_per_s"])


def test_service_targets_the_container_port_and_kustomization_lists_files() -> None:
    service = by_kind("Service")[0]
    assert service["spec"]["ports"][0]["targetPort"] == "http"
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    for resource in kustomization["resources"]:
        assert (KUBE / resource).is_file() or resource == "secret.yaml", resource


def test_the_deployment_guide_names_only_files_that_exist() -> None:
    guide = (REPO / "deploy" / "README.md").read_text()
    named = set(re.findall(r"`([a-z0-9.-]+\.ya?ml)`", guide)) | set(
        re.findall(r"(deploy/kubernetes/[a-z0-9.-]+\.yaml)", guide)
    )
    named |= set(re.findall(r"-f (bentofile[a-z.]*\.yaml)", guide))
    assert len(named) >= 10
    for name in named:
        candidates = [REPO / name, KUBE / name, REPO / "monitoring" / name]
        assert any(p.is_file() for p in candidates) or name == "secret.yaml", name
