"""The package surface: a pinned public API, and `import knowacq` without the heavy libraries."""

from __future__ import annotations

import subprocess
import sys

import knowacq


def test_public_names_are_pinned() -> None:
    assert sorted(knowacq.__all__) == sorted(
        [
            "TRAIN_PRESETS",
            "ConfigError",
            "DataError",
            "EvalReport",
            "KnowacqError",
            "LabelledData",
            "MalformedDataError",
            "MissingDependencyError",
            "ModelError",
            "TrainConfig",
            "TrainResult",
            "evaluate",
            "expected_calibration_error",
            "fine_tune",
            "fit_temperature",
            "load_tsv",
            "read_label_names",
            "train_preset",
        ]
    )
    for name in knowacq.__all__:
        assert getattr(knowacq, name) is not None


def test_import_does_not_load_torch_or_runtimes() -> None:
    code = (
        "import sys, knowacq, knowacq.cli; "
        "heavy = [m for m in ('torch', 'transformers', 'onnxruntime', 'optimum', 'bentoml', 'sklearn') "
        "if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_errors_share_one_root() -> None:
    for name in ("ConfigError", "DataError", "MalformedDataError", "MissingDependencyError", "ModelError"):
        assert issubclass(getattr(knowacq, name), knowacq.KnowacqError)
