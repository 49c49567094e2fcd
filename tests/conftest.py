"""Shared fixtures: a tiny randomly initialised BERT (no download), small data sets, the shared data."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KNOWACQ_DATA_DIR", REPO.parent / "shared" / "data"))

# Words that carry the label in the synthetic sets, and words that carry nothing.
CLASS_WORDS = (
    ("awful", "bad", "dull", "boring", "terrible", "weak"),
    ("great", "good", "lovely", "superb", "brilliant", "fine"),
    ("match", "goal", "team", "coach", "league", "score"),
    ("market", "stock", "bank", "profit", "shares", "trade"),
)
FILLER = ("the", "a", "film", "was", "really", "quite", "story", "and", "it", "very", "this", "plot")


def synthetic_rows(n: int, num_labels: int, seed: int) -> list[tuple[str, int]]:
    """Separable sentences: each holds two words of its class among filler words."""
    rng = np.random.default_rng(seed)
    rows = []
    for _ in range(n):
        label = int(rng.integers(num_labels))
        words = list(rng.choice(FILLER, size=int(rng.integers(3, 12))))
        for word in rng.choice(CLASS_WORDS[label], size=2):
            words.insert(int(rng.integers(len(words) + 1)), str(word))
        rows.append((" ".join(words), label))
    return rows


def write_tsv(path: Path, rows: list[tuple[str, object]]) -> Path:
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["sentence", "label"])
        writer.writerows(rows)
    return path


def _agnews_slice(n: int) -> list[str]:
    path = SHARED_DATA / "agnews" / "test.tsv"
    if not path.is_file():
        return []
    from knowacq import load_tsv

    return list(load_tsv(path).texts[:n])


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT encoder with a WordPiece vocabulary trained here, saved as an HF folder."""
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        normalizers,
        pre_tokenizers,
        trainers,
    )
    from transformers import BertConfig, BertModel, BertTokenizerFast

    corpus = [text for text, _ in synthetic_rows(400, 4, seed=0)] + _agnews_slice(400)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(corpus, trainers.WordPieceTrainer(vocab_size=2000, special_tokens=specials))
    tokenizer = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    # The BERT post-processor adds [CLS] ... [SEP] like a real BERT tokenizer does.
    from tokenizers.processors import TemplateProcessing

    tokenizer.backend_tokenizer.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )
    import torch

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=tok.get_vocab_size(),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=128,
    )
    out = tmp_path_factory.mktemp("tiny-bert")
    BertModel(config).save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def binary_sets(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("binary")
    train = write_tsv(folder / "train.tsv", synthetic_rows(320, 2, seed=1))
    dev = write_tsv(folder / "dev.tsv", synthetic_rows(96, 2, seed=2))
    return train, dev


@pytest.fixture
def shared_data() -> Path:
    if not (SHARED_DATA / "sst2" / "dev.tsv").is_file():
        pytest.skip(f"shared data not found at {SHARED_DATA} (set KNOWACQ_DATA_DIR)")
    return SHARED_DATA


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tiny models run fastest on one thread, and two test workers must not oversubscribe 2 cores."""
    import torch

    torch.set_num_threads(1)


# Hypothesis keeps no example database in the working tree.
from hypothesis import settings as _hypothesis_settings

_hypothesis_settings.register_profile("knowacq", database=None)
_hypothesis_settings.load_profile("knowacq")


@pytest.fixture(scope="session")
def model_dir(tiny_base: Path, binary_sets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny BERT fine-tuned on the synthetic binary set (labels negative, positive)."""
    from knowacq import fine_tune, load_tsv
    from tests.train.test_train import FAST

    train = load_tsv(binary_sets[0], label_names=("negative", "positive"))
    dev = load_tsv(binary_sets[1], label_names=train.label_names)
    out = tmp_path_factory.mktemp("export") / "model"
    fine_tune(train, dev, out, base=tiny_base, config=FAST, progress=False, log=lambda _: None)
    return out


@pytest.fixture(scope="session")
def fp32_variant(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny model exported with the cpu-fp32 preset (what the service tests serve)."""
    from export import optimize, preset

    out = tmp_path_factory.mktemp("served") / "cpu-fp32"
    return optimize(model_dir, preset("cpu-fp32"), out, progress=False, log=lambda _: None).out_dir


POSTGRES_URL = os.environ.get("KNOWACQ_TEST_POSTGRES", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def _postgres_available() -> str | None:
    """None when Postgres answers, else the reason it does not."""
    try:
        import sqlalchemy as sa

        engine = sa.create_engine(POSTGRES_URL)
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
        return None
    except Exception as exc:
        return f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}"


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store on each backend. Under CI (CI=true) a missing Postgres fails the test."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'feedback.db'}"
    reason = _postgres_available()
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"Postgres is required under CI but {POSTGRES_URL} does not answer: {reason}")
        pytest.skip(f"no Postgres at {POSTGRES_URL} ({reason}); set KNOWACQ_TEST_POSTGRES to test it")
    import uuid

    import sqlalchemy as sa

    schema = f"t_{uuid.uuid4().hex[:12]}"  # a schema of its own, so tests never see each other's rows
    engine = sa.create_engine(POSTGRES_URL)
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    engine.dispose()

    def drop() -> None:
        engine = sa.create_engine(POSTGRES_URL)
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()

    request.addfinalizer(drop)
    return f"{POSTGRES_URL}?options=-csearch_path%3D{schema}"


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    """Keeps each test's call report on the item, so that fixtures (the reliability figures) see the outcome."""
    outcome = yield
    report = outcome.get_result()
    if report.when == "call":
        item.rep_call = report  # type: ignore[attr-defined]


# ---- the reliability suite (tests/reliability) ------------------------------------------------------------


@pytest.fixture
def figures(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A dict the test fills with its measured figures; written as JSON when the test ends, pass or fail."""
    out = Path(os.environ.get("KNOWACQ_RELIABILITY_OUT") or tmp_path_factory.getbasetemp() / "reliability")
    full = os.environ.get("KNOWACQ_RELIABILITY", "short") == "full"
    record: dict[str, Any] = {
        "test": request.node.nodeid,
        "mode": "full" if full else "short",
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    started = time.perf_counter()
    yield record
    record["seconds"] = round(time.perf_counter() - started, 1)
    report = getattr(request.node, "rep_call", None)
    record["outcome"] = report.outcome if report is not None else "error"
    out.mkdir(parents=True, exist_ok=True)
    name = request.node.nodeid.split("::")[-1].replace("/", "_").replace("[", "-").replace("]", "")
    (out / f"{name}.json").write_text(json.dumps(record, indent=2, default=str) + "\n")


@pytest.fixture(scope="session")
def second_variant(tiny_base: Path, binary_sets, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another fine-tune of the tiny BERT (seed 11, not FAST's 7: a different model_version), exported cpu-fp32."""
    import dataclasses

    from export import optimize, preset
    from knowacq import fine_tune, load_tsv
    from tests.train.test_train import FAST

    train = load_tsv(binary_sets[0], label_names=("negative", "positive"))
    dev = load_tsv(binary_sets[1], label_names=train.label_names)
    folder = tmp_path_factory.mktemp("second")
    fine_tune(
        train,
        dev,
        folder / "model",
        base=tiny_base,
        config=dataclasses.replace(FAST, seed=11),
        progress=False,
        log=lambda _: None,
    )
    return optimize(
        folder / "model", preset("cpu-fp32"), folder / "cpu-fp32", progress=False, log=lambda _: None
    ).out_dir


RELIABILITY_TOKEN = "rel-token-5f1c2b9e"
"""The bearer token of the suite's servers: no log line or error body may ever contain it."""


@pytest.fixture(scope="session")
def fuzz_server(fp32_variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One real `bentoml serve` for fuzzing and auth: every prediction recorded, SQLite store, token set."""
    from bento import ServerProcess

    folder = tmp_path_factory.mktemp("fuzz-server")
    settings = {
        "model": str(fp32_variant),
        "api_token": RELIABILITY_TOKEN,
        "store_url": f"sqlite:///{folder / 'store.db'}",
        "max_texts": 16,
        "threads": 1,
        "record": "all",
        "reload_poll_s": 0,
    }
    with ServerProcess(settings, log_file=folder / "server.log", cwd=folder) as server:
        server.log_path = folder / "server.log"  # type: ignore[attr-defined]
        yield server
