"""The bottom layer: data files and pools, the feedback store, redaction, model cards, numeric and machine
helpers.

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
    MULTI_LABEL_SEPARATOR,
    PAIR_COLUMNS,
    LabelledData,
    Text,
    load_tsv,
    read_label_names,
    split_pairs,
    text_chars,
    write_tsv,
)
from knowacq.base._machine import cpu_threads, machine_info
from knowacq.base._numeric import entropy, length_sorted_batches, sigmoid, softmax, top_margin
from knowacq.base._pool import (
    POOL_INPUTS,
    POOL_OUTPUTS,
    PoolChunk,
    PoolWriter,
    count_rows,
    pick_text_column,
    pool_format,
    read_pool,
    read_scored_pool,
)
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
    "MULTI_LABEL_SEPARATOR",
    "PAIR_COLUMNS",
    "POOL_INPUTS",
    "POOL_OUTPUTS",
    "SCHEMA_VERSION",
    "SIDECAR",
    "STATUSES",
    "FeedbackStore",
    "Interval",
    "LabelRecord",
    "LabelledData",
    "ModelCard",
    "ModelEvent",
    "PoolChunk",
    "PoolWriter",
    "PredictionRecord",
    "Redaction",
    "RetrainRequest",
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
]
