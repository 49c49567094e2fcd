"""Shared fixtures: a tiny randomly initialised BERT (no download), small data sets, the shared data."""

from __future__ import annotations

import os
import string
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import settings as _hypothesis_settings

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Hypothesis keeps no example database in the working tree.
_hypothesis_settings.register_profile("knowacq", database=None)
_hypothesis_settings.load_profile("knowacq")

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("KNOWACQ_DATA_DIR", REPO.parent / "shared" / "data"))
SHARED_FILES = ("sst2/train.tsv", "sst2/dev.tsv", "agnews/test.tsv", "agnews/labels.txt")
"""What the tests read from the shared data folder; .ci/run checks the same list before the suite runs."""

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


def write_tsv(path: Path, rows: list[tuple[object, ...]], header: tuple[str, ...] = ("sentence", "label")) -> Path:
    """A `sentence<TAB>label` file (or the columns of `header`) with a header row, as the kit reads it."""
    import csv

    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(header)
        writer.writerows(rows)
    return path


# Frequent English words, written here once. The tiny vocabulary is built from these and the synthetic sets'
# words, and from nothing else: the same, token for token and id for id, with or without the shared data. (A
# trained WordPiece vocabulary is not: the trainer breaks ties differently from run to run.) With the synthetic
# words alone, real text (the AG News test) was cut into letters and that test's accuracy fell to 0.35 (bar 0.4,
# chance 0.25); with these words and their pieces it reached 0.64.
COMMON_WORDS = """
the be to of and a in that have i it for not on with he as you do at this but his by from they we say her she
or an will my one all would there their what so up out if about who get which go me when make can like time no
just him know take people into year your good some could them see other than then now look only come its over
think also back after use two how our work first well way even new want because any these give day most us is
was are were been has had did said made says being does done going gone got went came took seen told called
asked found gave left put set ran saw knew thought felt kept began
man men woman women child children world life hand part place case week company system program question
government number night point home water room mother area money story fact month lot right study book eye job
word business issue side kind head house service friend father power hour game line end member law car city
community name president team minute idea kid body information school face others level office door health
person art war history party result change morning reason research girl guy moment air teacher force education
state country group problem family student land market price news court police town road
music film season player club match win lost won play played plays leader leaders official officials
nation national international public private former major local early late high low long short big small
great little old young large next last few many much more less same different able own sure best better
three four five six seven eight nine ten hundred thousand million billion half second third
today yesterday tomorrow monday tuesday wednesday thursday friday saturday sunday
january february march april may june july august september october november december
north south east west central united american european british chinese japanese
technology computer software internet phone data science space energy oil gas food
deal sale sales share shares stock stocks bank banks profit loss trade rate rates growth economy
open close closed opened start started stop stopped move moved help helped run runs keep turn turned
try tried call show shown lead led hold held bring brought begin meet met pay paid offer offered
plan planned expect expected report reported announce announced agree agreed raise raised cut
while during before under between through against without within around among since until
again still never always often ever already yet soon far near very really quite too almost
here where why something nothing everything someone anyone everyone such each every both either
"""
_SPECIALS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
_CHARACTERS = string.ascii_lowercase + string.digits


def tiny_vocabulary() -> list[str]:
    """The tiny WordPiece vocabulary, in id order: the special tokens; every lower-case letter, digit and ASCII
    punctuation mark, alone and as a word's continuation (so no printable ASCII text maps to [UNK]); the
    synthetic sets' words and COMMON_WORDS; then, sorted, every prefix and every continuation of 2 or more
    letters of those words, so that an unknown word splits into pieces of known ones rather than letters."""
    words = list(dict.fromkeys([*(w for group in CLASS_WORDS for w in group), *FILLER, *COMMON_WORDS.split()]))
    pieces = {word[:end] for word in words for end in range(2, len(word))}
    pieces |= {"##" + word[start:] for word in words for start in range(1, len(word) - 1)}
    tokens = [
        *_SPECIALS,
        *(_CHARACTERS + string.punctuation),
        *("##" + c for c in _CHARACTERS),
        *words,
        *sorted(pieces - set(words)),
    ]
    return list(dict.fromkeys(tokens))


def tiny_tokenizer() -> Any:
    """A lower-casing BERT WordPiece tokenizer (`tokenizers.Tokenizer`) over `tiny_vocabulary()`."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers

    vocab = {token: i for i, token in enumerate(tiny_vocabulary())}
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return tok


def load_script(path: Path) -> Any:
    """The module of a script that is not in a package (deploy/lock.py, deploy/image.py), loaded from its file."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"knowacq_{path.parent.name}_{path.stem}", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bert_template(tok: Any) -> Any:
    """The BERT post-processor for `tok`: [CLS] ... [SEP] (and pairs), as a real BERT tokenizer adds them."""
    from tokenizers.processors import TemplateProcessing

    return TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", tok.token_to_id("[CLS]")), ("[SEP]", tok.token_to_id("[SEP]"))],
    )


@pytest.fixture(scope="session")
def tiny_base(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer, 32-wide BERT encoder over the fixed tiny WordPiece vocabulary, saved as an HF folder."""
    from transformers import BertConfig, BertModel, BertTokenizerFast

    tok = tiny_tokenizer()
    tokenizer = BertTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=128,
    )
    tokenizer.backend_tokenizer.post_processor = bert_template(tok)
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
    """Synthetic train (320 rows) and dev (96 rows) files of the binary task, labels 0 and 1."""
    folder = tmp_path_factory.mktemp("binary")
    train = write_tsv(folder / "train.tsv", synthetic_rows(320, 2, seed=1))
    dev = write_tsv(folder / "dev.tsv", synthetic_rows(96, 2, seed=2))
    return train, dev


def require_shared_data(folder: Path) -> Path:
    """`folder` when it holds every file of SHARED_FILES. Else the test is skipped, or failed under CI (CI=true),
    saying which files are missing and where they were looked for: like a missing Postgres or promtool."""
    missing = [name for name in SHARED_FILES if not (folder / name).is_file()]
    if missing:
        source = "KNOWACQ_DATA_DIR" if "KNOWACQ_DATA_DIR" in os.environ else "../shared/data beside the checkout"
        where = f"{folder.resolve()} (from {source})"
        if os.environ.get("CI") == "true":
            pytest.fail(f"the shared data is required under CI but {', '.join(missing)} not found in {where}")
        pytest.skip(f"shared data {', '.join(missing)} not found in {where}; point KNOWACQ_DATA_DIR at them")
    return folder


@pytest.fixture
def shared_data() -> Path:
    """The shared data folder (SHARED_DATA): see `require_shared_data`."""
    return require_shared_data(SHARED_DATA)


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread() -> None:
    """Tiny models run fastest on one thread, and two test workers must not oversubscribe 2 cores."""
    import torch

    torch.set_num_threads(1)


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


RELIABILITY_TOKEN = "rel-token-5f1c2b9e"
"""The bearer token of the reliability suite's servers: no log line or error body may ever contain it."""
