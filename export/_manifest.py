"""The manifest written beside every exported `model.onnx`: what it is, how it was made, how it scored."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from knowacq.errors import ModelError

__all__ = ["MANIFEST_FILE", "GateResult", "Manifest", "file_sha256", "folder_sha256", "read_manifest"]

MANIFEST_FILE = "manifest.json"
FORMAT = 1


@dataclass(frozen=True)
class GateResult:
    """One gate: what was measured, the limit, and whether it passed."""

    name: str
    value: float
    limit: float
    passed: bool
    detail: str = ""

    def __str__(self) -> str:
        verdict = "passed" if self.passed else "FAILED"
        return f"{self.name}: {self.value:.6g} (limit {self.limit:.6g}) {verdict}" + (
            f"; {self.detail}" if self.detail else ""
        )


@dataclass(frozen=True)
class Manifest:
    """Everything needed to trust and run one exported variant."""

    variant: str
    model_file: str
    model_sha256: str
    labels: list[str]
    temperature: float
    max_length: int
    source: dict[str, Any]
    """Source model folder and the SHA-256 of its weights."""
    config: dict[str, Any]
    """The full optimisation recipe (preset after any overrides)."""
    versions: dict[str, str]
    opset: int
    fused_operators: dict[str, int]
    gates: list[GateResult]
    metrics: dict[str, Any] = field(default_factory=dict)
    """Dev accuracy of source and variant, parameter counts, sizes, pruning summary."""
    tokenizer_files: list[str] = field(default_factory=list)
    created: str = ""
    format: int = FORMAT
    reference: dict[str, Any] = field(default_factory=dict)
    """The reference profile the service measures drift against (`export._profile`): predicted class mix,
    calibrated-confidence and token-length histograms of this variant on held-out rows, with their count and
    file. Empty in manifests written before it existed (they still load; the service then reports no drift)."""
    inputs: str = "text"
    """"text" (one text per item) or "pair" (a sentence pair per item: the service takes `pairs`)."""
    problem_type: str = "single_label_classification"
    """Or "multi_label_classification": a sigmoid per label, a label predicted at or above its threshold."""
    thresholds: list[float] = field(default_factory=list)
    """A multi-label variant's per-label thresholds on the calibrated probabilities (in `labels` order)."""

    @property
    def multi_label(self) -> bool:
        return self.problem_type == "multi_label_classification"

    @property
    def pairs(self) -> bool:
        return self.inputs == "pair"

    @property
    def passed(self) -> bool:
        return bool(self.gates) and all(g.passed for g in self.gates)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data

    def write(self, folder: Path) -> Path:
        path = folder / MANIFEST_FILE
        path.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        return path


def read_manifest(folder: str | Path, *, require_passed: bool = True, verify_hash: bool = True) -> Manifest:
    """The manifest of an exported folder; refuses a missing, damaged or failing one."""
    folder = Path(folder)
    path = folder / MANIFEST_FILE
    if not path.is_file():
        raise ModelError(
            f"{folder} has no {MANIFEST_FILE}: it is not a variant written by 'knowacq optimize' and will not be served"
        )
    try:
        data = json.loads(path.read_text())
        if data.get("format") != FORMAT:
            raise ValueError(f"unsupported manifest format {data.get('format')!r}")
        data.pop("passed", None)
        data["gates"] = [GateResult(**g) for g in data["gates"]]
        manifest = Manifest(**data)
    except (ValueError, TypeError, KeyError) as exc:
        raise ModelError(f"{path} is damaged ({exc}); re-run 'knowacq optimize'") from exc
    if require_passed and not manifest.passed:
        failed = "; ".join(str(g) for g in manifest.gates if not g.passed) or "no gate results"
        raise ModelError(f"{folder}: the variant did not pass its gates ({failed}); it will not be served")
    model = folder / manifest.model_file
    if not model.is_file():
        raise ModelError(f"{folder}: the manifest names {manifest.model_file}, which is missing")
    if verify_hash and file_sha256(model) != manifest.model_sha256:
        raise ModelError(f"{model} does not match the SHA-256 in its manifest; it was changed after export")
    return manifest


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_sha256(folder: Path, patterns: tuple[str, ...] = ("*.safetensors", "*.bin", "config.json")) -> str:
    """One hash over the weight and config files of a model folder (sorted by name)."""
    digest = hashlib.sha256()
    for pattern in patterns:
        for path in sorted(folder.glob(pattern)):
            digest.update(path.name.encode())
            digest.update(file_sha256(path).encode())
    return digest.hexdigest()
