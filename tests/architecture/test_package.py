"""The package faces: each pins its public names, every name resolves, and importing one loads no heavy library."""

from __future__ import annotations

import importlib
import inspect
import subprocess
import sys
from pathlib import Path

import pytest

import knowacq

# Every face's `__all__`, sorted. A name added to or removed from a face is a change of the public API: change
# it here too, on purpose.
FACES: dict[str, list[str]] = {
    "knowacq": [
        "ConfigError",
        "DataError",
        "EvalReport",
        "KnowacqError",
        "LabelledData",
        "MalformedDataError",
        "MissingDependencyError",
        "ModelError",
        "TRAIN_PRESETS",
        "TrainConfig",
        "TrainResult",
        "evaluate",
        "expected_calibration_error",
        "fine_tune",
        "fit_temperature",
        "load_tsv",
        "read_label_names",
        "train_preset",
    ],
    "knowacq.errors": [
        "AuthError",
        "BadRequestError",
        "ConfigError",
        "DataError",
        "GateError",
        "InvalidInputError",
        "KnowacqError",
        "MalformedDataError",
        "MissingDependencyError",
        "ModelError",
        "ParityError",
        "PayloadTooLargeError",
        "ProviderError",
        "QualityError",
        "RequestError",
        "RowProblem",
        "ShapeMismatchError",
        "StoreError",
        "UnknownLabelError",
        "UnknownModelError",
        "UnknownPredictionError",
        "UnsupportedMediaError",
    ],
    "knowacq.base": [
        "FeedbackStore",
        "Interval",
        "LABELS_FILE",
        "LabelRecord",
        "LabelledData",
        "MULTI_LABEL_SEPARATOR",
        "ModelCard",
        "ModelEvent",
        "PAIR_COLUMNS",
        "POOL_INPUTS",
        "POOL_OUTPUTS",
        "PoolChunk",
        "PoolWriter",
        "PredictionRecord",
        "Redaction",
        "RetrainRequest",
        "SCHEMA_VERSION",
        "SIDECAR",
        "STATUSES",
        "ShadowRun",
        "Text",
        "check_hf_folder",
        "count_rows",
        "cpu_threads",
        "default_store_url",
        "entropy",
        "length_sorted_batches",
        "library_versions",
        "load_tsv",
        "machine_info",
        "mean_interval",
        "paired_difference",
        "pick_text_column",
        "pool_format",
        "population_stability_index",
        "read_label_names",
        "read_model_card",
        "read_pool",
        "read_scored_pool",
        "redact",
        "redact_for_storage",
        "require_torch",
        "sigmoid",
        "softmax",
        "split_pairs",
        "text_chars",
        "text_sha256",
        "top_margin",
        "wilson_interval",
        "write_tsv",
    ],
    "knowacq.train": [
        "ECE_BINS",
        "EvalReport",
        "FitResult",
        "METRICS_FILE",
        "MultiLabelReport",
        "RELIABILITY_FILE",
        "TRAIN_PRESETS",
        "TrainConfig",
        "TrainResult",
        "binary_cross_entropy",
        "classification_report",
        "default_base_model",
        "evaluate",
        "expected_calibration_error",
        "fine_tune",
        "fit",
        "fit_sigmoid_temperature",
        "fit_temperature",
        "fit_thresholds",
        "load_base_classifier",
        "load_classifier",
        "multilabel_report",
        "negative_log_likelihood",
        "predict_logits",
        "predicted_sets",
        "reliability_diagram",
        "report_on",
        "train_preset",
    ],
    "export": [
        "ARCHITECTURES",
        "Architecture",
        "BenchRow",
        "CUDA_FUSIONS",
        "CUDA_GRAPH_MAX_ROWS",
        "Engine",
        "GateConfig",
        "GateResult",
        "MANIFEST_FILE",
        "Manifest",
        "OptimizeConfig",
        "OptimizeResult",
        "PRESETS",
        "Prediction",
        "Predictor",
        "PruneConfig",
        "RecoveryConfig",
        "RuntimeOptions",
        "Scored",
        "Scorer",
        "SmoothConfig",
        "architecture",
        "attention_shape",
        "bench",
        "bin_indices",
        "bucket_width",
        "check_providers",
        "count_parameters",
        "cpu_isa",
        "evaluate_variant",
        "fusion_gate",
        "graph_shape",
        "head_input",
        "load_pruned",
        "optimize",
        "optimize_graph",
        "pad_feeds",
        "plan_providers",
        "preset",
        "prune",
        "read_manifest",
        "reference_profile",
    ],
    "bento": [
        "ClassifierCore",
        "DEFAULT_MODEL",
        "ENV_PREFIX",
        "FAILURE_REASONS",
        "FEEDBACK_OUTCOMES",
        "Item",
        "RequestGuard",
        "STAGES",
        "ServerProcess",
        "ServiceMetrics",
        "Settings",
        "State",
        "batching_invariance",
        "bench_contenders",
        "bench_overload",
        "bench_serve",
        "check_model",
        "free_port",
        "import_to_model_store",
        "parse_classify",
        "parse_contender",
        "parse_feedback",
        "parse_reload",
        "serve_command",
        "service_env",
    ],
    "knowacq.loop": [
        "BadgeSampling",
        "DensityWeightedSampling",
        "EMBEDDING_STRATEGIES",
        "Estimate",
        "Exp3",
        "FULL_MODE_MAX_POOL",
        "FULL_MODE_TRAIN",
        "ImportResult",
        "LiveEvidence",
        "ON_ERROR",
        "PoolSelection",
        "PredictResult",
        "ReplayConfig",
        "RetrainConfig",
        "RetrainResult",
        "STRATEGIES",
        "Selection",
        "SimulationConfig",
        "Stay",
        "Strategy",
        "aulc",
        "bandit_regret",
        "demo_loop",
        "embed",
        "export_pool_tasks",
        "export_tasks",
        "import_labels",
        "labels_to_stay",
        "labels_to_stay_interval",
        "least_confidence",
        "margin",
        "paired_gain",
        "predict_file",
        "predict_ray",
        "replay",
        "retrain",
        "retrain_queued",
        "reward_from_gain",
        "select",
        "simulate",
        "strategy",
    ],
    "knowacq.cli": [
        "app",
        "main",
    ],
}

# The libraries a face must not load on import: they load inside the functions that need them.
HEAVY = ("torch", "transformers", "onnxruntime", "optimum", "bentoml", "sklearn")
# The faces that `import` in a fresh interpreter must keep light (knowacq.base and knowacq.train load with them).
LIGHT_FACES = ("knowacq", "export", "bento", "knowacq.loop", "knowacq.cli")


@pytest.mark.parametrize("face", list(FACES))
def test_every_face_pins_its_public_names(face: str) -> None:
    names = importlib.import_module(face).__all__
    assert sorted(names) == FACES[face]
    assert len(set(names)) == len(names), f"{face}.__all__ lists a name twice"


@pytest.mark.parametrize("face", list(FACES))
def test_every_public_name_resolves(face: str) -> None:
    module = importlib.import_module(face)
    unresolved = [name for name in module.__all__ if getattr(module, name, None) is None]
    assert not unresolved, f"{face}.__all__ names what {face} does not define: {unresolved}"
    namespace: dict[str, object] = {}
    exec(f"from {face} import *", namespace)  # a star import binds exactly __all__, or raises on a missing name
    assert sorted(name for name in namespace if name != "__builtins__") == FACES[face]


@pytest.mark.parametrize("face", [face for face in FACES if face != "knowacq"])
def test_a_face_exports_its_own_layer(face: str) -> None:
    """Each class and function a face exports is defined inside its package: no face re-exports a lower layer."""
    module = importlib.import_module(face)
    defined = {name: getattr(module, name) for name in module.__all__}
    foreign = {
        name: value.__module__
        for name, value in defined.items()
        if (inspect.isclass(value) or inspect.isfunction(value))
        and not (value.__module__ == face or value.__module__.startswith(f"{face}."))
    }
    assert not foreign, f"{face} re-exports names defined elsewhere: {foreign}"


def test_the_top_face_hands_out_the_layers_own_objects() -> None:
    """`knowacq` re-exports, object for object, what knowacq.base, knowacq.train and knowacq.errors define."""
    layers = [importlib.import_module(name) for name in ("knowacq.base", "knowacq.train", "knowacq.errors")]
    for name in knowacq.__all__:
        homes = [layer.__name__ for layer in layers if name in layer.__all__]
        assert homes, f"knowacq.{name} is in no layer's __all__"
        for home in homes:
            assert getattr(knowacq, name) is getattr(importlib.import_module(home), name), (name, home)


@pytest.mark.parametrize("face", LIGHT_FACES)
def test_import_does_not_load_torch_or_runtimes(face: str) -> None:
    code = f"import sys, {face}; print([m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", f"import {face} loads {out.stdout.strip()}"


def test_errors_share_one_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ConfigError", "DataError", "MalformedDataError", "MissingDependencyError", "ModelError"):
        assert issubclass(getattr(knowacq, name), knowacq.KnowacqError)
    # What the kit raises on purpose is caught by the root, and each message says what to do.
    with pytest.raises(knowacq.KnowacqError, match="known presets") as raised:
        knowacq.train_preset("no-such-preset")
    assert type(raised.value) is knowacq.ConfigError
    with pytest.raises(knowacq.KnowacqError, match="epochs") as raised:
        knowacq.TrainConfig(epochs=0)
    assert type(raised.value) is knowacq.ConfigError
    with pytest.raises(knowacq.KnowacqError, match="cannot read") as raised:
        knowacq.load_tsv(tmp_path / "absent.tsv")
    assert type(raised.value) is knowacq.DataError
    bad = tmp_path / "bad.tsv"
    bad.write_text("sentence\tlabel\na fine film\t1\nno label here\n", encoding="utf-8")
    with pytest.raises(knowacq.DataError, match="line 3") as raised:
        knowacq.load_tsv(bad)
    assert type(raised.value) is knowacq.MalformedDataError
    from knowacq.base import check_hf_folder, require_torch

    with pytest.raises(knowacq.KnowacqError, match="config.json") as raised:
        check_hf_folder(tmp_path)
    assert type(raised.value) is knowacq.ModelError
    monkeypatch.setitem(sys.modules, "torch", None)  # find_spec answers None: as if torch were not installed
    with pytest.raises(knowacq.KnowacqError, match=r"pip install 'knowacq\[cpu\]'") as raised:
        require_torch("fine-tuning")
    assert type(raised.value) is knowacq.MissingDependencyError
