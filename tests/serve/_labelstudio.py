"""A real Label Studio for the end-to-end test: installed in its own virtual environment, run on loopback.

Only the standard library is imported at the top: this file is also the script that drives Label Studio
with `label-studio-sdk`, run by that environment's Python (`python _labelstudio.py sdk STEP`, a JSON
request on stdin, the JSON answer on stdout), and the installer `.ci/run` calls before the suite
(`python3 tests/serve/_labelstudio.py install`). The SDK is the one Label Studio itself depends on
(label-studio 1.23.2 pins label-studio-sdk 2.1.2): installing it beside knowacq would pull opencv and pin
numpy below the version knowacq runs on.

Label Studio is started offline: no version check, no Sentry, no analytics; SSRF protection and the ML
backend's local-address block are off because knowacq listens on 127.0.0.1; a data folder of its own,
copied from a migrated template kept beside the environment (migrating a fresh SQLite database takes a
minute; starting on a migrated one, seconds); one user with a legacy API token (the SDK sends it as
`Authorization: Token ...`; Label Studio 1.23 enables legacy tokens only when asked).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

VERSION = "1.23.2"
"""The Label Studio the test runs (its PyPI package pins the label-studio-sdk the driver uses)."""
USER = "knowacq@example.com"
PASSWORD = "knowacq-e2e-password"
LS_TOKEN = "knowacq-e2e-label-studio-token"
"""The Label Studio user's legacy API token (what the SDK authenticates with)."""


def venv_dir() -> Path:
    """Where the environment lives: $KNOWACQ_LABEL_STUDIO_VENV, else the user's cache."""
    if os.environ.get("KNOWACQ_LABEL_STUDIO_VENV"):
        return Path(os.environ["KNOWACQ_LABEL_STUDIO_VENV"])
    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return cache / "knowacq" / f"label-studio-{VERSION}"


def _installed(venv: Path) -> bool:
    packages = list(venv.glob(f"lib/python3*/site-packages/label_studio-{VERSION}.dist-info"))
    sdk = list(venv.glob("lib/python3*/site-packages/label_studio_sdk-*.dist-info"))
    return (venv / "bin" / "label-studio").is_file() and bool(packages) and bool(sdk)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """One process at a time (two test workers, or .ci/run and a test) installs or builds the template."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def install(venv: Path | None = None, log: Any = print) -> Path:
    """Label Studio VERSION in `venv` (made with `python3 -m venv`, filled with pip; about 1 GB, minutes),
    unless it is there already; then the migrated data template. Raises CalledProcessError when pip fails."""
    venv = venv or venv_dir()
    with _locked(venv.with_name(venv.name + ".lock")):
        if not _installed(venv):
            log(f"installing label-studio=={VERSION} into {venv} (about 1 GB, a few minutes)")
            python = shutil.which("python3") or sys.executable
            subprocess.run([python, "-m", "venv", str(venv)], check=True)
            pip = [str(venv / "bin" / "pip"), "install", "--disable-pip-version-check", "--quiet"]
            subprocess.run([*pip, f"label-studio=={VERSION}"], check=True)
        template = venv / "knowacq-data-template"
        if not (template / "label_studio.sqlite3").is_file():
            log(f"migrating a Label Studio database template in {template} (about a minute, once)")
            building = venv / "knowacq-data-template.building"
            shutil.rmtree(building, ignore_errors=True)
            migrated = subprocess.run(
                [str(venv / "bin" / "label-studio"), "version", "--data-dir", str(building)],
                env=_environment(building),
                capture_output=True,
                text=True,
                timeout=900,
            )
            if migrated.returncode != 0:
                raise RuntimeError(f"Label Studio's migrations failed:\n{migrated.stderr[-4000:]}")
            shutil.rmtree(template, ignore_errors=True)
            building.rename(template)
    return venv


def _environment(data_dir: Path) -> dict[str, str]:
    """Label Studio's environment: only what it needs (it reads HOST, PORT, USERNAME... of its own)."""
    keep = {k: os.environ[k] for k in ("PATH", "HOME", "LANG", "TMPDIR", "SYSTEMROOT") if k in os.environ}
    return {
        **keep,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data_dir),
        "LATEST_VERSION_CHECK": "false",
        "COLLECT_ANALYTICS": "false",
        "SENTRY_DSN": "",
        "FRONTEND_SENTRY_DSN": "",
        "SSRF_PROTECTION_ENABLED": "false",  # webhooks to 127.0.0.1
        "ML_BLOCK_LOCAL_IP": "false",  # an ML backend on 127.0.0.1
        "WEBHOOK_TIMEOUT": "10",  # seconds (default 1: a label written on a busy CI machine may take longer)
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


class LabelStudio:
    """A Label Studio server on 127.0.0.1:`port`, its data in `data_dir` (a copy of the template)."""

    def __init__(self, venv: Path, data_dir: Path, port: int, log_file: Path) -> None:
        self.venv = venv
        self.data_dir = data_dir
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.started_in = 0.0
        """Seconds from the start of the process to its first healthy answer."""

    def __enter__(self) -> LabelStudio:
        shutil.copytree(self.venv / "knowacq-data-template", self.data_dir)
        command = [
            str(self.venv / "bin" / "label-studio"),
            "start",
            "--no-browser",
            "--internal-host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--data-dir",
            str(self.data_dir),
            "--username",
            USER,
            "--password",
            PASSWORD,
            "--user-token",
            LS_TOKEN,
            "--enable-legacy-api-token",
        ]
        start = time.monotonic()
        with self.log_file.open("wb") as log:
            self.process = subprocess.Popen(
                command, env=_environment(self.data_dir), stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self._wait(start + 240)
        except BaseException:
            self.stop()
            raise
        self.started_in = time.monotonic() - start
        return self

    def _wait(self, deadline: float) -> None:
        assert self.process is not None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Label Studio exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"Label Studio did not answer {self.url}/health within 240 s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def __exit__(self, *_: object) -> None:
        self.stop()

    def sdk(self, step: str, **request: Any) -> Any:
        """Run one step of the driver below with label-studio-sdk in Label Studio's environment."""
        answer = subprocess.run(
            [str(self.venv / "bin" / "python"), __file__, "sdk", step],
            input=json.dumps({"url": self.url, "token": LS_TOKEN, **request}),
            capture_output=True,
            text=True,
            timeout=180,
            env={**_environment(self.data_dir), "PYTHONPATH": ""},
        )
        if answer.returncode != 0:
            raise RuntimeError(f"the SDK step {step!r} failed:\n{answer.stderr[-4000:]}")
        return json.loads(answer.stdout.splitlines()[-1])


# the driver: runs in Label Studio's environment, with label-studio-sdk -----------------------------------


def label_config(labels: list[str]) -> str:
    """A text-classification config whose choices are `labels` (the names knowacq's export uses)."""
    choices = "".join(f'<Choice value="{label}"/>' for label in labels)
    return (
        '<View><Text name="text" value="$text"/>'
        f'<Choices name="label" toName="text" choice="single">{choices}</Choices></View>'
    )


def _client(request: dict[str, Any]) -> Any:
    from label_studio_sdk import LabelStudio as Client

    return Client(base_url=request["url"], api_key=request["token"], timeout=120)


def _error_of(call: Any) -> dict[str, Any]:
    """What the API answered to a call expected to fail: {"status", "body"} (or {"status": None})."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        call()
    except ApiError as exc:
        return {"status": exc.status_code, "body": json.dumps(exc.body, default=str)}
    return {"status": None}


def step_connect(request: dict[str, Any]) -> dict[str, Any]:
    """Create a project, connect the knowacq backend (basic auth, the token as password), point the backend's
    webhook at annotation events with the bearer header, import tasks, and ask for their predictions."""
    client = _client(request)
    backend, token, labels = request["backend"], request["backend_token"], request["labels"]
    project = client.projects.create(title="knowacq live", label_config=label_config(labels))

    def connect(password: str, project_id: int = project.id) -> Any:
        return client.ml.create(
            project=project_id,
            url=backend,
            title="knowacq",
            auth_method="BASIC_AUTH",
            basic_auth_user="knowacq",
            basic_auth_pass=password,
        )

    refused = {"wrong_password": _error_of(lambda: connect("not-the-token"))}
    other = client.projects.create(title="other labels", label_config=label_config([*labels[:-1], "neutral"]))
    refused["other_labels"] = _error_of(lambda: connect(token, other.id))
    ml = connect(token)
    # Connecting an ML backend made a webhook to <url>/webhook for every action, without headers: send it
    # the annotation events only, with the token (knowacq refuses a webhook without it).
    hooks = [h for h in client.webhooks.list(project=project.id) if h.url.rstrip("/") == backend + "/webhook"]
    for hook in hooks:
        client.webhooks.update(
            id=hook.id,
            url=hook.url,
            headers={"Authorization": f"Bearer {token}"},
            send_for_all_actions=False,
            actions=["ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED"],
        )
    client.projects.import_tasks(id=project.id, request=request["tasks"])
    client.actions.create(
        id="retrieve_tasks_predictions", project=project.id, selected_items={"all": True, "excluded": []}
    )
    tasks = [
        {
            "id": task.id,
            "data": task.data,
            "predictions": [
                {"model_version": p.model_version, "score": p.score, "result": p.result} for p in task.predictions or []
            ],
        }
        for task in client.tasks.list(project=project.id, fields="all")
    ]
    return {
        "project": project.id,
        "ml_backend": {"id": ml.id, "state": ml.state, "model_version": ml.model_version},
        "webhooks": [h.id for h in hooks],
        "refused": refused,
        "tasks": sorted(tasks, key=lambda t: t["id"]),
    }


def step_annotate(request: dict[str, Any]) -> dict[str, Any]:
    """Create annotations through Label Studio's API, change one, then press "Start training"."""
    client = _client(request)

    def result(choice: str) -> list[dict[str, Any]]:
        return [{"from_name": "label", "to_name": "text", "type": "choices", "value": {"choices": [choice]}}]

    created = {}
    for task_id, choice in request["annotations"]:
        created[str(task_id)] = client.annotations.create(id=task_id, result=result(choice)).id
    for task_id, choice in request.get("updates", []):
        client.annotations.update(id=created[str(task_id)], result=result(choice))
    if request.get("train"):
        client.ml.train(id=request["train"])
    return {"annotations": created}


def _main(argv: list[str]) -> int:
    if argv[:1] == ["install"]:
        install()
        return 0
    if argv[:1] == ["sdk"] and len(argv) == 2:
        steps = {"connect": step_connect, "annotate": step_annotate}
        print(json.dumps(steps[argv[1]](json.loads(sys.stdin.read())), default=str))
        return 0
    print("usage: _labelstudio.py install | sdk connect|annotate < request.json", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
