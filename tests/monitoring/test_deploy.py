"""Kubernetes manifests: valid against the Kubernetes API schemas (offline), and consistent with the service."""

from __future__ import annotations

import dataclasses
import json
import os
import re
from pathlib import Path

import pytest
import yaml

from bento import Settings
from tests.conftest import load_script

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
        candidates = [
            REPO / name,
            KUBE / name,
            REPO / "deploy" / "kubernetes-sqlite" / name,
            REPO / "monitoring" / name,
        ]
        assert any(p.is_file() for p in candidates) or name == "secret.yaml", name


image_py = load_script(REPO / "deploy" / "image.py")


def _kustomize(folder: Path, tmp_path: Path) -> list[dict]:
    """What `kubectl kustomize` renders for `folder` (in a copy of deploy/ with secret.yaml made from the
    example, as the guide says to), as a list of objects. kubectl is required under CI."""
    import shutil
    import subprocess

    if shutil.which("kubectl") is None:
        if os.environ.get("CI") == "true":
            pytest.fail("kubectl (its kustomize) is required under CI to render the kustomizations")
        pytest.skip("kubectl not installed")
    copy = tmp_path / "deploy"
    shutil.copytree(REPO / "deploy", copy)
    shutil.copy(copy / "kubernetes" / "secret.example.yaml", copy / "kubernetes" / "secret.yaml")
    target = copy / folder.relative_to(REPO / "deploy")
    done = subprocess.run(["kubectl", "kustomize", str(target)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return [doc for doc in yaml.safe_load_all(done.stdout) if doc]


def test_the_manifests_run_the_image_make_image_builds() -> None:
    deployment = next(d for d in by_kind("Deployment") if d["metadata"]["name"] == "knowacq")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image_py.IMAGE_NAME
    kustomization = yaml.safe_load((KUBE / "kustomization.yaml").read_text())
    images = {entry["name"]: entry for entry in kustomization["images"]}
    assert set(images[image_py.IMAGE_NAME]) >= {"newName", "newTag"}


def test_both_kustomizations_render_and_validate_and_the_sqlite_one_keeps_the_store_on_a_claim(
    tmp_path: Path,
) -> None:
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    rendered = {}
    for folder in (KUBE, REPO / "deploy" / "kubernetes-sqlite"):
        objects = _kustomize(folder, tmp_path / folder.name)
        for obj in objects:
            if (obj["apiVersion"], obj["kind"]) not in CRDS:
                kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)
        rendered[folder.name] = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    base, sqlite = rendered["kubernetes"], rendered["kubernetes-sqlite"]
    image = base[("Deployment", "knowacq")]["spec"]["template"]["spec"]["containers"][0]["image"]
    images = yaml.safe_load((KUBE / "kustomization.yaml").read_text())["images"][0]
    assert image == f"{images['newName']}:{images['newTag']}"  # kustomize rewrote the Deployment's `knowacq`
    assert set(base) - set(sqlite) == {("HorizontalPodAutoscaler", "knowacq"), ("PodDisruptionBudget", "knowacq")}
    deployment = sqlite[("Deployment", "knowacq")]
    claim = sqlite[("PersistentVolumeClaim", "knowacq-store")]
    pod = deployment["spec"]["template"]["spec"]
    assert deployment["spec"]["replicas"] == 1 and deployment["spec"]["strategy"] == {"type": "Recreate"}
    (volume,) = pod["volumes"]
    assert volume["persistentVolumeClaim"]["claimName"] == claim["metadata"]["name"]
    container = pod["containers"][0]
    (mount,) = container["volumeMounts"]
    assert mount["name"] == volume["name"] and mount["mountPath"] == image_py.STORE_DIR
    env = {e["name"]: e for e in container["env"]}
    assert env["KNOWACQ_STORE_URL"]["value"] == f"sqlite:///{image_py.STORE_DIR}/feedback.db"
    assert "KNOWACQ_THREADS" in env  # the base's env survives the patch


def test_the_image_package_check_names_each_problem(tmp_path: Path) -> None:
    lock = tmp_path / "constraints.txt"
    lock.write_text("# header\nonnxruntime==1.32.0\nnumpy==2.4.6\nhuggingface-hub==0.36.2\n")
    packages = {
        "onnxruntime": "1.32.0",
        "numpy": "2.4.6",
        "huggingface_hub": "1.33.0",
        "torch": "2.13.0",
        "left-pad": "1.0",
        "pip": "26.0",
    }
    assert image_py.check_packages(packages, lock) == [
        "huggingface_hub==1.33.0: constraints.txt pins 0.36.2",
        "torch==2.13.0: a training package in the serving image",
        "left-pad==1.0: not in constraints.txt",
    ]
    assert image_py.check_packages({"onnxruntime": "1.32.0", "numpy": "2.4.6"}, lock) == []


def test_the_image_build_says_when_no_builder_is_here(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_py.shutil, "which", lambda _: None)
    with pytest.raises(image_py.ImageError, match="apt-get install buildah mmdebstrap"):
        image_py.pick_backend("auto")
    with pytest.raises(image_py.ImageError, match="--backend podman: `podman` is not on PATH"):
        image_py.pick_backend("podman")


def test_the_cuda_bento_is_never_built_on_the_local_debian_base(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(image_py, "pick_backend", lambda asked: "buildah")
    with pytest.raises(image_py.ImageError, match="the CUDA bento: its base is nvidia/cuda"):
        image_py.build(REPO / "runs" / "no-variant", bentofile=REPO / "bentofile.gpu.yaml", backend="buildah")
