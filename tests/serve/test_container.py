"""The OCI image, built by `deploy/image.py build` (what `make image` runs) and served from a container: checked from
outside over loopback against the same variant served outside the container.

Marked `container` and left out of the default run (a build takes a minute or more); `make test-container` runs it
and `.ci/run` calls that. The container runs under `buildah run --isolation chroot` (the host's network, so its
server answers on loopback); Podman or Docker run the same image with `-p 3000:3000`.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import yaml

from bento import ServerProcess, free_port
from tests.conftest import load_script

pytestmark = [pytest.mark.container, pytest.mark.timeout(1800)]

REPO = Path(__file__).resolve().parents[2]
TOKEN = "container-token-123"
TEXTS = ["great lovely film", "awful boring plot", "a film", "lovely but boring", "so-so"]
GRACE_S = 30.0


image_py = load_script(REPO / "deploy" / "image.py")
STORE_DIR = image_py.STORE_DIR


def _require_buildah() -> None:
    missing = [tool for tool in ("buildah", "mmdebstrap") if shutil.which(tool) is None]
    if missing:
        reason = f"{' and '.join(missing)} not installed (apt-get install buildah mmdebstrap)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the container test is required under CI but {reason}")
        pytest.skip(reason)


@pytest.fixture(scope="module")
def image(fp32_variant: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The image of the tiny variant's bento, built as `make image` builds one; its build report."""
    _require_buildah()
    folder = tmp_path_factory.mktemp("image")
    report = folder / "report.json"
    env = {**os.environ, "BENTOML_HOME": str(folder / "bentoml")}
    tag = "localhost/knowacq:container-test"
    before = subprocess.run(["buildah", "images", "--format", "{{.ID}}", tag], capture_output=True, text=True)
    started = time.monotonic()
    built = subprocess.run(
        [sys.executable, str(REPO / "deploy" / "image.py"), "build", str(fp32_variant), "--backend", "buildah"]
        + ["--tag", tag, "--report", str(report)],
        env=env,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    assert built.returncode == 0, built.stdout[-3000:] + built.stderr[-3000:]
    result = json.loads(report.read_text())
    result["wall_s"] = round(time.monotonic() - started, 1)
    print(f"image build: {result['wall_s']} s, {result['size']}, steps {result['seconds']}")
    # The previous run's image, now untagged: removed, so that runs do not pile up images. Not this one: removing
    # it would take the layers it shares with the build cache along (the next build took twice as long).
    for old in set(before.stdout.split()) if before.returncode == 0 else ():
        subprocess.run(["buildah", "rmi", old], capture_output=True)
    return result


class Container:
    """`buildah run --isolation chroot` of the image's entrypoint, serving on loopback with `data` at STORE_DIR."""

    def __init__(self, image: str, data: Path, port: int, env: dict[str, str], log: Path) -> None:
        self.image, self.data, self.port, self.env, self.log = image, data, port, env, log
        self.url = f"http://127.0.0.1:{port}"
        self.name = ""
        self.process: subprocess.Popen[bytes] | None = None
        self.tree: list = []

    def start(self, timeout: float = 120.0) -> None:
        self.name = subprocess.run(
            ["buildah", "from", self.image], capture_output=True, text=True, check=True
        ).stdout.strip()
        envs = [arg for name, value in self.env.items() for arg in ("--env", f"{name}={value}")]
        cmd = ["buildah", "run", "--isolation", "chroot", "--user", "bentoml", "-v", f"{self.data}:{STORE_DIR}"]
        entrypoint = ["/home/bentoml/bento/env/docker/entrypoint.sh", "serve", "--host", "127.0.0.1"]
        with open(self.log, "ab") as out:
            self.process = subprocess.Popen(
                [*cmd, *envs, self.name, "--", *entrypoint, "--port", str(self.port)],
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process.poll() is None, self.log.read_text(errors="replace")[-3000:]
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    self.tree = self._processes()
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        self.tree = self._processes()
        raise AssertionError(f"the container was not ready in {timeout} s:\n{self.log.read_text()[-3000:]}")

    def main_pid(self) -> int:
        """The container's first process (the entrypoint, exec'd into `bentoml serve`): what `docker stop` and
        Kubernetes send SIGTERM to. `buildah run` itself kills its child on SIGTERM instead of passing it on."""
        import psutil

        assert self.process is not None

        def argv0(process: psutil.Process) -> str:
            return (process.cmdline() or [""])[0]

        for child in psutil.Process(self.process.pid).children(recursive=True):
            parent = child.parent()
            if parent is not None and argv0(parent) == "buildah-chroot-exec":
                return int(child.pid)
        raise AssertionError("the container's main process was not found")

    def wait(self, timeout: float) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def _processes(self) -> list:
        import psutil

        assert self.process is not None
        try:
            root = psutil.Process(self.process.pid)
            return [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def left_running(self) -> list[str]:
        """The container's processes still alive. A killed `buildah run` leaves its chroot's processes running
        (they are reparented to init), so they are tracked from the moment the server was ready."""
        return [" ".join(p.cmdline()[:3]) for p in self.tree if p.is_running() and p.status() != "zombie"]

    def remove(self) -> None:
        import psutil

        for process in reversed(self.tree):
            try:
                if process.is_running():
                    process.kill()
            except psutil.NoSuchProcess:
                pass
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
        if self.process is not None:
            self.process.wait(30)
        if self.name:
            subprocess.run(["buildah", "rm", self.name], capture_output=True)


@pytest.fixture
def container_factory(image: dict, tmp_path: Path) -> Iterator:
    made: list[Container] = []
    data = tmp_path / "data"
    data.mkdir()
    if os.geteuid() == 0:
        os.chown(data, 1034, 1034)  # the image's user (BentoML's bentoml, uid 1034)
    else:
        data.chmod(0o777)
    port = free_port()
    env = {
        "KNOWACQ_API_TOKEN": TOKEN,
        "KNOWACQ_STORE_URL": f"sqlite:///{STORE_DIR}/feedback.db",
        "KNOWACQ_THREADS": "1",
        "KNOWACQ_RECORD": "all",
        "KNOWACQ_RELOAD_POLL_S": "0",
    }

    def make() -> Container:
        container = Container(image["image"], data, port, env, tmp_path / f"container-{len(made)}.log")
        made.append(container)
        return container

    yield make
    for container in made:
        container.remove()


def test_the_image_holds_the_locked_runtime_only_and_runs_as_the_manifests_user(image: dict) -> None:
    assert image["problems"] == []
    names = {image_py._lock().normalise(name) for name in image["packages"]}
    assert {"bentoml", "onnxruntime", "tokenizers", "sqlalchemy", "psycopg"} <= names
    assert not names & {"torch", "transformers", "optimum", "onnx"}
    user = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.OCIv1.Config.User}}", image["image"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    assert user == "bentoml"
    env = subprocess.run(
        ["buildah", "inspect", "--type", "image", "--format", "{{.OCIv1.Config.Env}}", image["image"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "KNOWACQ_MODEL=" in env
    assert not [name for name in image_py.CA_ENV if f"{name}=" in env], env  # the build host's CA stays out
    deployment = yaml.safe_load((REPO / "deploy" / "kubernetes" / "deployment.yaml").read_text())
    pod = deployment["spec"]["template"]["spec"]
    name = subprocess.run(
        ["buildah", "from", image["image"]], capture_output=True, text=True, check=True
    ).stdout.strip()
    try:
        uid = subprocess.run(
            ["buildah", "run", "--isolation", "chroot", name, "--", "id", "-u", "bentoml"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    finally:
        subprocess.run(["buildah", "rm", name], capture_output=True)
    assert int(uid) == pod["securityContext"]["runAsUser"]


# long: one container life after another, each checked from outside
def test_container_serves_like_the_host_drains_on_sigterm_and_keeps_its_store(
    container_factory, fp32_variant: Path, tmp_path: Path
) -> None:
    host_settings = {"model": str(fp32_variant), "store_url": f"sqlite:///{tmp_path / 'host.db'}", "threads": 1}
    with ServerProcess(host_settings, log_file=tmp_path / "host.log", cwd=tmp_path) as host:
        expected = httpx.post(f"{host.url}/classify", json={"texts": TEXTS}, timeout=30).json()

    first = container_factory()
    first.start()
    with httpx.Client(base_url=first.url, timeout=30) as client:
        ready = client.get("/readyz").json()
        assert ready["status"] == "ready" and ready["provider"] == "cpu"
        answers = client.post("/classify", json={"texts": TEXTS}).json()
        assert [a["label"] for a in answers] == [e["label"] for e in expected]
        assert answers[0]["model_version"] == expected[0]["model_version"]
        for got, want in zip(answers, expected, strict=True):
            for label, p in want["probabilities"].items():
                assert abs(got["probabilities"][label] - p) < 1e-6, (got, want)
        pid = answers[-1]["prediction_id"]
        acked = client.post(
            "/feedback",
            json={"prediction_id": pid, "label": "negative"},
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert acked.status_code == 200 and acked.json()["outcome"] == "created", acked.text
        metrics = client.get("/metrics").text
        assert "knowacq_predictions_total" in metrics and "knowacq_feedback_total" in metrics

    # SIGTERM with requests in flight, as Kubernetes stops a pod: every one is answered, then the process exits.
    texts = [f"{'great' if i % 2 else 'awful'} film " * 50 for i in range(64)]
    results: list[object] = []
    clients = 16
    sent = threading.Barrier(clients + 1)

    def one() -> None:
        with httpx.Client(timeout=60) as client:
            sent.wait()
            try:
                results.append(client.post(f"{first.url}/classify", json={"texts": texts}).status_code)
            except httpx.HTTPError as exc:
                results.append(type(exc).__name__)

    threads = [threading.Thread(target=one) for _ in range(clients)]
    for t in threads:
        t.start()
    sent.wait()
    time.sleep(0.3)
    signalled = time.monotonic()
    os.kill(first.main_pid(), signal.SIGTERM)
    for t in threads:
        t.join(GRACE_S + 30)
    first.wait(GRACE_S)  # buildah run ends when the container's first process does
    exit_s = time.monotonic() - signalled
    deadline = time.monotonic() + 10
    while first.left_running() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.left_running() == [], "processes of the drained container are still running"
    log = first.log.read_text(errors="replace")
    print(f"drain: {results.count(200)} of {clients} answered 200, exit after {exit_s:.1f} s")
    assert results == [200] * clients, results
    assert "draining" in log and exit_s < GRACE_S

    # A new container on the same volume: what the first one acknowledged is there.
    second = container_factory()
    second.start()
    with httpx.Client(base_url=second.url, timeout=30) as client:
        again = client.post(
            "/feedback",
            json={"prediction_id": pid, "label": "negative"},
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert again.status_code == 200 and again.json()["outcome"] == "unchanged", again.text
        changed = client.post(
            "/feedback",
            json={"prediction_id": pid, "label": "positive"},
            headers={"authorization": f"Bearer {TOKEN}"},
        )
        assert changed.status_code == 200 and changed.json()["outcome"] == "updated", changed.text
