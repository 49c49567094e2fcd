"""The bottom layer: data files, the feedback store, redaction, model cards, numeric and machine helpers.

Imports nothing of knowacq but `knowacq.errors`, and no heavy library (torch, transformers, onnxruntime).
"""

from __future__ import annotations

from knowacq.base._card import (
    SIDECAR,
    ModelCard,
    check_hf_folder,
    read_model_card,
    require_torch,
)
from knowacq.base._data import (
    LABELS_FILE,
    LabelledData,
    load_tsv,
    read_label_names,
    write_tsv,
)
from knowacq.base._machine import cpu_threads, machine_info
from knowacq.base._numeric import length_sorted_batches, softmax
from knowacq.base._redact import Redaction, redact, redact_for_storage, text_sha256
from knowacq.base._stats import (
    Interval,
    mean_interval,
    paired_difference,
    population_stability_index,
    wilson_interval,
)
from knowacq.base._store import (
    SCHEMA_VERSION,
    STATUSES,
    FeedbackStore,
    LabelRecord,
    ModelEvent,
    PredictionRecord,
    RetrainRequest,
    ShadowRun,
    default_store_url,
)
from knowacq.base._versions import library_versions

__all__ = [
    "LABELS_FILE",
    "SCHEMA_VERSION",
    "SIDECAR",
    "STATUSES",
    "FeedbackStore",
    "Interval",
    "LabelRecord",
    "LabelledData",
    "ModelCard",
    "ModelEvent",
    "PredictionRecord",
    "Redaction",
    "RetrainRequest",
    "ShadowRun",
    "check_hf_folder",
    "cpu_threads",
    "default_store_url",
    "length_sorted_batches",
    "library_versions",
    "load_tsv",
    "machine_info",
    "mean_interval",
    "paired_difference",
    "population_stability_index",
    "read_label_names",
    "read_model_card",
    "redact",
    "redact_for_storage",
    "require_torch",
    "softmax",
    "text_sha256",
    "wilson_interval",
    "write_tsv",
]
