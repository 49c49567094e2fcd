"""Which model the service serves: a variant folder or a BentoML model-store tag, checked, loaded or stored.

One resolver (`resolve_model`) for the service (`KNOWACQ_MODEL`, POST /admin/reload, the promoted model)
and the command line (`knowacq serve`, `bench-serve`, through `check_model`); `import_to_model_store` writes
the store that a tag reads.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bento._settings import Settings
from knowacq.errors import ModelError

if TYPE_CHECKING:
    from export import Predictor

__all__ = ["check_model", "import_to_model_store", "load_predictor", "resolve_model"]


def resolve_model(spec: str, *, setting: str | None = None) -> Path:
    """The variant folder `spec` names: a folder, else a model in the BentoML model store (name[:version]).

    The ModelError for neither names `setting` (the service: `KNOWACQ_MODEL`) with the store's own message,
    or, without a setting (a command line), says how to make a variant."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    try:
        import bentoml

        return Path(bentoml.models.get(spec).path)
    except Exception as exc:  # bentoml.exceptions.NotFound, or a malformed tag
        if setting is not None:
            message = f"{setting}={spec!r} is neither a folder nor a model in the BentoML model store ({exc})"
        else:
            message = (
                f"{spec!r} is neither a variant folder nor a model in the BentoML model store; "
                "make one with 'knowacq optimize'"
            )
        raise ModelError(message) from None


def check_model(spec: str) -> Path:
    """Fail before starting a server: the folder (or model-store tag) must hold a passing variant; its
    absolute path."""
    from export import read_manifest

    path = resolve_model(spec)
    read_manifest(path)
    return path.resolve()


def load_predictor(spec: str, settings: Settings, *, shadow: bool = False) -> tuple[Predictor, Path]:
    """The runtime predictor of `spec` (folder or tag) as the service's settings configure it, and its folder.

    `shadow`: for a candidate scored beside the serving model: one intra-op thread that does not spin
    between runs, so that it takes as little CPU from the serving model as it can. In-process on 2 cores, 10%
    of 64-text batches scored in shadow: 0.83x and 0.81x of the throughput without a shadow in two runs with
    ONNX Runtime's defaults, 0.98x and 0.85x so (docs/benchmarks/2026-12-02-shadow-session-options.*);
    served, see docs/benchmarks/2026-12-02-serve-sample-shadow*.md."""
    from export import Predictor

    folder = resolve_model(spec, setting="KNOWACQ_MODEL")
    predictor = Predictor(
        folder,
        provider=settings.provider,
        allow_fallback=settings.allow_fallback,
        threads=1 if shadow else (settings.threads or None),
        spinning=settings.spinning and not shadow,
        max_batch_size=settings.max_batch_size,
        bucket_tokens=settings.bucket_tokens,
        cuda_graphs=settings.cuda_graphs,
    )
    return predictor, folder


def import_to_model_store(variant: Path, name: str) -> str:
    """Copy a passing variant folder into the BentoML model store; returns the tag (name:version)."""
    import shutil

    import bentoml

    from export import read_manifest

    manifest = read_manifest(variant)
    metadata = {
        "variant": manifest.variant,
        "model_sha256": manifest.model_sha256,
        "labels": list(manifest.labels),
        "source_sha256": manifest.source.get("sha256", ""),
    }
    with bentoml.models.create(name, labels={"variant": manifest.variant}, metadata=metadata) as model:
        shutil.copytree(variant, model.path, dirs_exist_ok=True)
    return str(model.tag)
