"""The service's OCI image, built by BentoML's own container build from the bento `bentoml build` makes.

    python deploy/image.py build VARIANT [--tag NAME:TAG] [--bentofile bentofile.yaml] [--backend auto]
    python deploy/image.py base [--ca-bundle PATH]     # buildah only: the local Debian base image
    python deploy/image.py packages IMAGE             # the image's Python packages, checked against constraints.txt

`build` stores the variant in the BentoML model store (`knowacq import-model`), builds the bento from the bentofile
and runs `bentoml containerize` on it. With a Docker (or Podman) engine it is BentoML's usual build on
`python:3.11-slim`. Without one, buildah builds the same generated Dockerfile with chroot isolation on a local base
(`--opt from=...`): a Debian bookworm root file system made by mmdebstrap from Debian's packages (Python 3.11, what
the bentofile's `docker.python_version` asks for), for machines that reach Debian's and PyPI's mirrors but no image
registry. Then it lists the image's packages and fails when one differs from constraints.txt or is a training
package (torch, transformers, optimum). `--report FILE` writes what it did, timed, as JSON.

Run it with the environment's Python (`make image` does): it calls `python -m bentoml` and `python -m knowacq`.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("KNOWACQ_IMAGE_CACHE", Path.home() / ".cache" / "knowacq" / "image"))
SUITE = "bookworm"
"""Debian 12: its python3 is 3.11, the bentofiles' `docker.python_version`."""
BASE_PACKAGES = ("python3", "python3-venv", "python3-pip", "ca-certificates")
BASE_IMAGE = f"localhost/knowacq-base:{SUITE}"
IMAGE_NAME = "knowacq"
"""The image's name; its tag is the bento's version unless --tag says otherwise. deploy/kubernetes names it."""
STORE_DIR = "/data"
"""Where the store's volume is mounted in the container (KNOWACQ_STORE_URL=sqlite:////data/feedback.db):
deploy/kubernetes-sqlite mounts its claim there, and tests/serve/test_container.py a host folder."""
BUILD_CA = "/usr/local/share/ca-certificates/knowacq-build-host.crt"
CA_ENV = ("SSL_CERT_FILE", "PIP_CERT", "REQUESTS_CA_BUNDLE")
"""Set in the local base so that pip and uv trust the build host's CA during the build; removed from the image."""
CA_LABEL = "knowacq.build-ca-sha256"
PEP668_MARKER = "/usr/lib/python3*/EXTERNALLY-MANAGED"
VENV_PYTHON = "/app/.venv/bin/python"
"""Where BentoML's Dockerfile puts the service's environment."""
TRAINING_PACKAGES = ("torch", "transformers", "optimum", "optimum-onnx", "accelerate", "datasets")
_LIST = (
    "import importlib.metadata as m, json; "
    "print(json.dumps({d.metadata['Name']: d.version for d in m.distributions()}))"
)


class ImageError(RuntimeError):
    """A step of the build failed; the message says which and why."""


def _lock() -> ModuleType:
    spec = importlib.util.spec_from_file_location("knowacq_deploy_lock", Path(__file__).with_name("lock.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run(cmd: list[str], *, env: dict[str, str] | None = None, quiet: bool = False) -> str:
    """Run `cmd`; its output is echoed unless quiet. A failure raises ImageError with the output's tail."""
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if not quiet and proc.stdout.strip():
        print(proc.stdout.rstrip(), flush=True)
    if proc.returncode != 0:
        tail = (proc.stdout + proc.stderr).strip().splitlines()[-25:]
        raise ImageError(f"{' '.join(cmd[:4])} ... exited with {proc.returncode}:\n" + "\n".join(tail))
    return proc.stdout


def _works(cmd: list[str]) -> bool:
    if shutil.which(cmd[0]) is None:
        return False
    return subprocess.run(cmd, capture_output=True).returncode == 0


def pick_backend(asked: str = "auto") -> str:
    """`asked`, or the first of docker, podman, buildah that can build here (an engine that answers `info`)."""
    if asked != "auto":
        if shutil.which(asked) is None:
            raise ImageError(f"--backend {asked}: `{asked}` is not on PATH")
        return asked
    for backend in ("docker", "podman"):
        if _works([backend, "info"]):
            return backend
    if shutil.which("buildah"):
        return "buildah"
    raise ImageError(
        "no container builder here: Docker and Podman have no running engine and buildah is not installed "
        "(on Debian: apt-get install buildah mmdebstrap)"
    )


def image_exists(image: str, backend: str = "buildah") -> bool:
    if backend == "buildah":
        return _works(["buildah", "inspect", "--type", "image", image])
    return _works([backend, "image", "inspect", image])


def make_base(ca_bundle: str | None = None, *, rebuild: bool = False) -> dict[str, object]:
    """The local base image for buildah: Debian `SUITE` minbase with Python (mmdebstrap, cached as a tar in CACHE),
    PEP 668's marker removed (BentoML's Dockerfile pip-installs uv into the system Python), and `ca_bundle`, the
    build host's CA bundle, trusted by pip and uv during the build (for an egress proxy that re-signs TLS) through
    CA_ENV, which `build` removes from the finished image. The base is made again when the bundle changes."""
    timings: dict[str, float] = {}
    ca_digest = hashlib.sha256(Path(ca_bundle).read_bytes()).hexdigest() if ca_bundle else "none"
    if image_exists(BASE_IMAGE) and not rebuild:
        label = _run(
            ["buildah", "inspect", "--type", "image", "--format", f'{{{{index .OCIv1.Config.Labels "{CA_LABEL}"}}}}']
            + [BASE_IMAGE],
            quiet=True,
        ).strip()
        if label == ca_digest:
            print(f"base image {BASE_IMAGE} exists (--rebuild-base to make it again)", flush=True)
            return {"image": BASE_IMAGE, "made": False, "seconds": timings}
        print(f"base image {BASE_IMAGE} was made with another CA bundle: making it again", flush=True)
    if shutil.which("mmdebstrap") is None:
        raise ImageError("the local base needs mmdebstrap (on Debian: apt-get install mmdebstrap)")
    rootfs = CACHE / f"debian-{SUITE}-{'-'.join(BASE_PACKAGES)}.tar"
    if not rootfs.is_file() or rebuild:
        CACHE.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        print(f"mmdebstrap: Debian {SUITE} with {', '.join(BASE_PACKAGES)} -> {rootfs}", flush=True)
        partial = rootfs.with_name(rootfs.stem + ".partial.tar")
        for stale in (partial, rootfs):  # an interrupted run's file, or a folder an older version cached
            if stale.is_dir():
                shutil.rmtree(stale)
            elif stale.exists():
                stale.unlink()
        include = f"--include={','.join(BASE_PACKAGES)}"
        _run(["mmdebstrap", "--variant=minbase", "--format=tar", include, SUITE, str(partial)], quiet=True)
        partial.replace(rootfs)
        timings["rootfs"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    container = _run(["buildah", "from", "scratch"], quiet=True).strip()
    try:
        _run(["buildah", "add", container, str(rootfs), "/"], quiet=True)
        _run(
            ["buildah", "run", "--isolation", "chroot", container, "--", "sh", "-c", f"rm -f {PEP668_MARKER}"],
            quiet=True,
        )
        config = ["buildah", "config", "--cmd", "/bin/bash", "--label", f"{CA_LABEL}={ca_digest}"]
        if ca_bundle:
            _run(["buildah", "copy", container, ca_bundle, BUILD_CA], quiet=True)
            for name in CA_ENV:
                config += ["--env", f"{name}={BUILD_CA}"]
        _run([*config, container], quiet=True)
        _run(["buildah", "commit", "--rm", container, BASE_IMAGE], quiet=True)
    except BaseException:
        subprocess.run(["buildah", "rm", container], capture_output=True)
        raise
    timings["commit"] = round(time.monotonic() - started, 1)
    print(f"base image {BASE_IMAGE} made ({timings})", flush=True)
    return {"image": BASE_IMAGE, "made": True, "ca_bundle": ca_bundle, "seconds": timings}


def _strip_build_ca(image: str) -> None:
    """Remove the base's build-time CA variables from `image`'s configuration: in production, Python's TLS must
    trust the image's own CA store, not the build host's bundle."""
    container = _run(["buildah", "from", image], quiet=True).strip()
    try:
        _run(["buildah", "config", *[a for name in CA_ENV for a in ("--env", f"{name}-")], container], quiet=True)
        _run(["buildah", "commit", "--rm", container, image], quiet=True)
    except BaseException:
        subprocess.run(["buildah", "rm", container], capture_output=True)
        raise


def image_size(image: str, backend: str) -> str:
    """The image's size as the backend prints it (buildah: `1.23 GB`; docker and podman: bytes)."""
    if backend == "buildah":
        return str(json.loads(_run(["buildah", "images", "--json", image], quiet=True))[0]["size"])
    return _run([backend, "image", "inspect", "--format", "{{.Size}}", image], quiet=True).strip()


def image_packages(image: str, backend: str) -> dict[str, str]:
    """Name -> version of every distribution in the image's service environment."""
    if backend == "buildah":
        container = _run(["buildah", "from", image], quiet=True).strip()
        try:
            out = _run(
                ["buildah", "run", "--isolation", "chroot", container, "--", VENV_PYTHON, "-c", _LIST], quiet=True
            )
        finally:
            subprocess.run(["buildah", "rm", container], capture_output=True)
    else:
        out = _run([backend, "run", "--rm", "--entrypoint", VENV_PYTHON, image, "-c", _LIST], quiet=True)
    return dict(sorted(json.loads(out.strip().splitlines()[-1]).items(), key=lambda kv: kv[0].lower()))


def check_packages(packages: dict[str, str], lock_path: Path | None = None) -> list[str]:
    """Each problem with an image's packages: a training package, a package constraints.txt does not pin, or a
    version other than the pinned one (pip, setuptools and wheel of the environment itself are not pinned)."""
    lock = _lock()
    pins = lock.read_lock(lock_path or lock.LOCK)
    problems = []
    for name, version in packages.items():
        key = lock.normalise(name)
        if key in TRAINING_PACKAGES:
            problems.append(f"{name}=={version}: a training package in the serving image")
        elif key in {"pip", "setuptools", "wheel"}:
            continue
        elif key not in pins:
            problems.append(f"{name}=={version}: not in constraints.txt")
        elif pins[key] != version.split("+")[0]:
            problems.append(f"{name}=={version}: constraints.txt pins {pins[key]}")
    return problems


# long: one build, step by step, each step timed and its failure named
def build(
    variant: Path,
    *,
    tag: str | None = None,
    bentofile: Path = ROOT / "bentofile.yaml",
    backend: str = "auto",
    ca_bundle: str | None = None,
    rebuild_base: bool = False,
) -> dict[str, object]:
    """import-model, bentoml build, bentoml containerize, then the package check. Returns the report."""
    backend = pick_backend(backend)
    if backend == "buildah" and re.search(r"^\s*cuda_version:", bentofile.read_text(), re.MULTILINE):
        raise ImageError(
            f"{bentofile.name} is the CUDA bento: its base is nvidia/cuda, which the local Debian base cannot stand "
            "in for; build it with Docker or Podman on a machine that can pull that image"
        )
    report: dict[str, object] = {"backend": backend, "variant": str(variant), "bentofile": bentofile.name}
    seconds: dict[str, float] = {}
    python = [sys.executable, "-m"]
    env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1"}
    started = time.monotonic()
    _run([*python, "knowacq", "import-model", str(variant)], env=env)
    seconds["import_model"] = round(time.monotonic() - started, 1)
    started = time.monotonic()
    # BentoML locks the bento's requirements with `uv pip compile`, afresh from PyPI; the lock file constrains it, so
    # that the image holds the versions the tests ran (without it, huggingface-hub 1.x came in beside 0.36).
    lock_env = {**env, "UV_CONSTRAINT": str(ROOT / "constraints.txt")}
    out = _run(
        [*python, "bentoml", "build", "-f", str(bentofile), "--output", "tag", str(ROOT)], env=lock_env, quiet=True
    )
    tags = [line.split("__tag__:", 1)[1].strip() for line in out.splitlines() if "__tag__:" in line]
    if not tags:
        raise ImageError(f"bentoml build printed no bento tag:\n{out[-2000:]}")
    bento = tags[0]
    seconds["bento"] = round(time.monotonic() - started, 1)
    image = tag or f"{IMAGE_NAME}:{bento.split(':', 1)[1]}"
    report.update({"bento": bento, "image": image})
    print(f"bento {bento}; building image {image} with {backend}", flush=True)
    containerize = [*python, "bentoml", "containerize", bento, "--backend", backend, "-t", image]
    if backend == "buildah":
        base = make_base(ca_bundle, rebuild=rebuild_base)
        seconds.update({f"base_{k}": v for k, v in base["seconds"].items()})  # type: ignore[attr-defined]
        report["base"] = base
        containerize += ["--opt", "isolation=chroot", "--opt", f"from={BASE_IMAGE}", "--opt", "layers"]
        image = image if "/" in image else f"localhost/{image}"
    started = time.monotonic()
    _run(containerize, env=env, quiet=True)
    # bentoml containerize logs a failed build and still exits 0 (BentoML 1.4): the image must exist.
    if not image_exists(image, backend):
        raise ImageError(f"bentoml containerize finished but {image} is not in {backend}'s image store")
    if backend == "buildah":
        _strip_build_ca(image)
    seconds["containerize"] = round(time.monotonic() - started, 1)
    packages = image_packages(image, backend)
    problems = check_packages(packages)
    report.update(
        {
            "image": image,
            "size": image_size(image, backend),
            "seconds": seconds,
            "packages": packages,
            "problems": problems,
        }
    )
    print(f"image {image}: {report['size']}, {len(packages)} packages, steps {seconds}", flush=True)
    for problem in problems:
        print(f"package check: {problem}", file=sys.stderr)
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="deploy/image.py", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    build_cmd = commands.add_parser("build", help="build the image of VARIANT's bento")
    build_cmd.add_argument("variant", type=Path, help="a variant folder (knowacq optimize's output)")
    build_cmd.add_argument("--tag", help=f"image name:tag (default {IMAGE_NAME}:<bento version>)")
    build_cmd.add_argument("--bentofile", type=Path, default=ROOT / "bentofile.yaml")
    build_cmd.add_argument("--backend", default="auto", choices=["auto", "docker", "podman", "buildah"])
    build_cmd.add_argument("--ca-bundle", default=os.environ.get("SSL_CERT_FILE"), help="buildah base: CA bundle")
    build_cmd.add_argument("--rebuild-base", action="store_true", help="buildah: make the local base image again")
    build_cmd.add_argument("--report", type=Path, help="write the build report here (JSON)")
    base_cmd = commands.add_parser("base", help="make the local Debian base image for buildah")
    base_cmd.add_argument("--ca-bundle", default=os.environ.get("SSL_CERT_FILE"))
    base_cmd.add_argument("--rebuild", action="store_true")
    packages_cmd = commands.add_parser("packages", help="list IMAGE's Python packages and check them")
    packages_cmd.add_argument("image")
    packages_cmd.add_argument("--backend", default="auto", choices=["auto", "docker", "podman", "buildah"])
    args = parser.parse_args(argv)
    try:
        if args.command == "base":
            make_base(args.ca_bundle, rebuild=args.rebuild)
            return 0
        if args.command == "packages":
            backend = pick_backend(args.backend)
            packages = image_packages(args.image, backend)
            for name, version in packages.items():
                print(f"{name}=={version}")
            problems = check_packages(packages)
            for problem in problems:
                print(f"package check: {problem}", file=sys.stderr)
            return 1 if problems else 0
        if not (args.variant / "manifest.json").is_file():
            parser.error(f"{args.variant} is not a variant folder (no manifest.json): run knowacq optimize first")
        report = build(
            args.variant,
            tag=args.tag,
            bentofile=args.bentofile,
            backend=args.backend,
            ca_bundle=args.ca_bundle,
            rebuild_base=args.rebuild_base,
        )
        if args.report:
            args.report.parent.mkdir(parents=True, exist_ok=True)
            args.report.write_text(json.dumps(report, indent=2) + "\n")
        return 1 if report["problems"] else 0
    except ImageError as exc:
        print(f"deploy/image.py: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
