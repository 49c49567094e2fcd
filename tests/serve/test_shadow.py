"""The shadow candidate in-process: ShadowScorer beside a real core, and the rule that promotes or rejects it."""

from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from bento._shadow import ShadowScorer, candidate_problem, decide, failing
from export import Predictor
from knowacq.base import FeedbackStore
from tests.serve.test_serve import make_core, metric

TEXTS = [
    "great lovely film",
    "awful boring plot",
    "the story was quite fine and good",
    "a dull and weak film",
    "brilliant superb acting",
    "terrible really bad",
    "it was a film",
    "the plot",
]


def variant_copy(source: Path, target: Path, *, variant: str, reverse_labels: bool = False) -> Path:
    """A copy of an exported variant under another name (so another model_version); with `reverse_labels`,
    its label names in reverse order: the same weights then answer the other label on every text."""
    shutil.copytree(source, target)
    manifest_file = target / "manifest.json"
    manifest = json.loads(manifest_file.read_text())
    manifest["variant"] = variant
    if reverse_labels:
        manifest["labels"] = list(reversed(manifest["labels"]))
    manifest_file.write_text(json.dumps(manifest, indent=2))
    return target


@pytest.fixture(scope="module")
def twin(fp32_variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served model's weights under another variant name: agrees with it on every text."""
    return variant_copy(fp32_variant, tmp_path_factory.mktemp("twin") / "v", variant="cpu-fp32-twin")


@pytest.fixture(scope="module")
def contrarian(fp32_variant: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The served model's weights with its labels reversed: disagrees with it on every text."""
    return variant_copy(
        fp32_variant, tmp_path_factory.mktemp("contrarian") / "v", variant="cpu-fp32-contrarian", reverse_labels=True
    )


def shadowed(core: Any, candidate: Path, flush_s: float = 0.0, **settings: Any) -> tuple[ShadowScorer, int]:
    """A scorer for `candidate` in a new shadow run of the core's store, attached to the core (writing its
    counts after every batch, unless `flush_s` says otherwise)."""
    run = core.store.start_shadow(str(candidate), evidence={"proposed_by": "test"})
    predictor = Predictor(candidate, threads=1)
    scorer = ShadowScorer(
        predictor,
        run.id,
        dataclasses.replace(core.settings, **settings),
        store=core.store,
        metrics=core.metrics,
        flush_s=flush_s,
    )
    core.shadow = scorer
    return scorer, run.id


def serve(core: Any, scorer: ShadowScorer, batches: int, texts: list[str] = TEXTS) -> list[dict[str, Any]]:
    """Classify `batches` batches, letting the shadow finish each one (so that none is skipped as busy)."""
    answers = []
    for _ in range(batches):
        answers += core.classify(texts)
        assert scorer.wait_idle(30)
    return answers


def test_an_agreeing_candidate_is_promoted_after_n_texts(fp32_variant: Path, twin: Path, tmp_path: Path) -> None:
    core, registry = make_core(fp32_variant, tmp_path, shadow_share=1.0, shadow_min_texts=40)
    scorer, run_id = shadowed(core, twin)
    assert metric(registry, "knowacq_shadow_info", {"version": scorer.model_version}) == 1
    serve(core, scorer, 4)  # 32 texts: not enough yet
    run = core.store.shadow_run(run_id)
    assert (run.scored, run.agreed) == (32, 32)
    assert decide(core.store, run, core.settings) is None
    serve(core, scorer, 1)
    run = core.store.shadow_run(run_id)
    decision = decide(core.store, run, core.settings)
    assert decision is not None
    state, reason, evidence = decision
    assert state == "promoted", reason
    assert "agreement 1.0000" in reason and "on 40 texts" in reason and "accuracy not checked" in reason
    assert evidence["shadow_agreement"]["estimate"] == 1.0 and evidence["shadow_agreement"]["n"] == 40
    assert metric(registry, "knowacq_shadow_scored_texts_total") == 40
    assert metric(registry, "knowacq_shadow_agreed_texts_total") == 40
    assert metric(registry, "knowacq_shadow_skipped_batches_total", {"reason": "busy"}) == 0
    # Deciding publishes the candidate (every replica follows) and enters the history with the evidence.
    assert core.store.finish_shadow(run_id, state, reason, evidence=evidence)
    assert core.store.promoted_model() == str(twin)
    last = core.store.model_history()[-1]
    assert last.action == "shadow-promote" and last.model == str(twin)
    assert last.evidence["proposed_by"] == "test" and last.evidence["shadow_scored"] == 40
    # A second replica deciding the same run changes nothing; the scorer learns the run ended at its next batch.
    assert not core.store.finish_shadow(run_id, "rejected", "too late")
    serve(core, scorer, 1)
    assert scorer.finished.is_set() and core.store.shadow_run(run_id).scored == 40
    scorer.close(timeout=10)
    assert metric(registry, "knowacq_shadow_info", {"version": scorer.model_version}) == 0


def test_a_disagreeing_candidate_is_rejected_with_the_reason(
    fp32_variant: Path, contrarian: Path, tmp_path: Path
) -> None:
    core, registry = make_core(fp32_variant, tmp_path, shadow_share=1.0, shadow_min_texts=16)
    alone = [a["label"] for a in core.classify(TEXTS)]
    scorer, run_id = shadowed(core, contrarian)
    answers = serve(core, scorer, 2)
    assert [a["label"] for a in answers] == alone * 2  # the shadow never changes an answer
    assert {a["model_version"] for a in answers} == {core.model_version}
    run = core.store.shadow_run(run_id)
    assert (run.scored, run.agreed) == (16, 0)
    decision = decide(core.store, run, core.settings)
    assert decision is not None and decision[0] == "rejected"
    assert decision[1] == "agreement 0.0000 with the serving model on 16 texts, under the bound 0.9000"
    assert core.store.finish_shadow(run_id, decision[0], decision[1], evidence=decision[2])
    assert core.store.promoted_model() is None and core.store.shadow_run(run_id).state == "rejected"
    scorer.close(timeout=10)


def test_live_accuracy_on_the_same_texts_decides_when_agreement_passes(
    fp32_variant: Path, contrarian: Path, twin: Path, tmp_path: Path
) -> None:
    # Every prediction joins the live sample; the humans agree with the serving model, so a candidate that
    # answers the other label is 100 points less accurate on the same texts, whatever the agreement bound.
    core, _ = make_core(
        fp32_variant,
        tmp_path,
        sample_rate=1.0,
        shadow_share=1.0,
        shadow_min_texts=8,
        shadow_min_agreement=0.0,
        shadow_min_live=12,
    )
    scorer, run_id = shadowed(core, contrarian)
    answers = serve(core, scorer, 2)
    assert all(a["recorded"] for a in answers)
    run = core.store.shadow_run(run_id)
    assert decide(core.store, run, core.settings) is None  # no labelled live text yet (shadow_min_live=12)
    for a in answers[:12]:
        core.store.add_label(a["prediction_id"], a["label"], annotator="human")
    state, reason, evidence = decide(core.store, run, core.settings)  # type: ignore[misc]
    assert state == "rejected", reason
    assert "live accuracy 0.0000 against the serving model's 1.0000 on the same 12 labelled texts" in reason
    assert "a drop over the bound 0.0200" in reason
    assert evidence["live_difference"]["estimate"] == -1.0 and evidence["live_difference"]["n"] == 12
    assert evidence["live_serving_accuracy"]["low"] > 0.7  # the Wilson interval of 12 out of 12
    scorer.close(timeout=10)

    # The twin, scored on the same kind of traffic and labelled the same way, passes the same rule.
    scorer, run_id = shadowed(core, twin)
    answers = serve(core, scorer, 2)
    for a in answers[:12]:
        core.store.add_label(a["prediction_id"], a["label"], annotator="human")
    state, reason, evidence = decide(core.store, core.store.shadow_run(run_id), core.settings)  # type: ignore[misc]
    assert state == "promoted", reason
    assert evidence["live_difference"]["estimate"] == 0.0 and evidence["live_candidate_accuracy"]["estimate"] == 1.0
    scorer.close(timeout=10)


def test_offer_never_blocks_while_the_worker_is_busy(fp32_variant: Path, twin: Path, tmp_path: Path) -> None:
    core, registry = make_core(fp32_variant, tmp_path, shadow_share=1.0)
    scorer, run_id = shadowed(core, twin)
    release = threading.Event()
    original = scorer.candidate_labels

    def slow(texts: Any) -> list[str]:
        release.wait(30)  # the candidate is busy until the test says
        return original(texts)

    scorer.candidate_labels = slow  # type: ignore[method-assign]
    served = [a["label"] for a in core.classify(TEXTS)]
    ids = [None] * len(TEXTS)
    seconds = []
    for _ in range(200):
        start = time.perf_counter()
        scorer.offer(TEXTS, served, ids)
        seconds.append(time.perf_counter() - start)
    # One batch is in the worker's hands, one waits: every other offer is skipped at once, counted as busy.
    assert metric(registry, "knowacq_shadow_skipped_batches_total", {"reason": "busy"}) >= 198
    assert statistics.median(seconds) < 100e-6, f"median offer {statistics.median(seconds) * 1e6:.1f} us"
    assert max(seconds) < 0.05
    release.set()
    assert scorer.wait_idle(30)
    assert 8 <= core.store.shadow_run(run_id).scored <= 16
    scorer.close(timeout=10)


def test_counts_are_written_at_most_every_flush_s_and_on_close(fp32_variant: Path, twin: Path, tmp_path: Path) -> None:
    core, registry = make_core(fp32_variant, tmp_path, shadow_share=1.0)
    scorer, run_id = shadowed(core, twin, flush_s=60.0)
    serve(core, scorer, 3)
    assert scorer.scored == 24 and metric(registry, "knowacq_shadow_scored_texts_total") == 24
    assert core.store.shadow_run(run_id).scored == 0  # one write a minute at most
    scorer.close(timeout=10)
    assert core.store.shadow_run(run_id).scored == 24 and scorer.finished.is_set()

    scorer, run_id = shadowed(core, twin, flush_s=0.2)
    serve(core, scorer, 2)
    deadline = time.monotonic() + 10  # no more traffic: the worker still writes what it holds
    while core.store.shadow_run(run_id).scored < 16 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert core.store.shadow_run(run_id).scored == 16
    scorer.close(timeout=10)


def test_a_failing_candidate_or_store_never_fails_a_request(fp32_variant: Path, twin: Path, tmp_path: Path) -> None:
    core, registry = make_core(fp32_variant, tmp_path, shadow_share=1.0)
    expected = [a["label"] for a in core.classify(TEXTS)]
    scorer, run_id = shadowed(core, twin)

    def broken(texts: Any) -> list[str]:
        raise RuntimeError("the candidate's session died")

    scorer.candidate_labels = broken  # type: ignore[method-assign]
    assert [a["label"] for a in serve(core, scorer, 2)] == expected * 2
    assert metric(registry, "knowacq_shadow_skipped_batches_total", {"reason": "error"}) == 2
    # A candidate that fails on every batch would never reach shadow_min_texts: it is rejected.
    assert failing(scorer, limit=3) == ""
    serve(core, scorer, 1)
    assert "failed on all 3 batches" in failing(scorer, limit=3)
    del scorer.candidate_labels  # the real one again, with a store that fails
    scorer.store = FeedbackStore(f"sqlite:///{tmp_path / 'missing' / 'x.db'}")
    scorer.store.engine.dispose()
    shutil.rmtree(tmp_path / "missing")
    assert [a["label"] for a in serve(core, scorer, 1)] == expected
    assert metric(registry, "knowacq_shadow_skipped_batches_total", {"reason": "error"}) == 4
    # Arguments the scorer cannot use are not the request's problem either.
    scorer.offer(None, None, None)  # type: ignore[arg-type]
    scorer.close(timeout=10)
    assert core.store.shadow_run(run_id).scored == 0


def test_the_share_of_batches_is_a_seeded_draw(fp32_variant: Path, twin: Path, tmp_path: Path) -> None:
    import numpy as np

    core, registry = make_core(fp32_variant, tmp_path, shadow_share=0.25)
    run = core.store.start_shadow(str(twin))
    counts = []
    for _ in range(2):
        scorer = ShadowScorer(
            Predictor(twin, threads=1),
            run.id,
            core.settings,
            store=core.store,
            metrics=core.metrics,
            rng=np.random.default_rng(3),
        )
        scorer.candidate_labels = lambda texts: ["positive"] * len(texts)  # type: ignore[method-assign]
        for _ in range(400):
            scorer.offer(["t"], ["positive"], [None])
            scorer.wait_idle(10)
        counts.append(scorer.scored)
        scorer.close(timeout=10)
    assert counts[0] == counts[1] and 60 <= counts[0] <= 140  # 25% of 400, the same draws both times
    assert metric(registry, "knowacq_shadow_skipped_batches_total", {"reason": "not_sampled"}) == 800 - 2 * counts[0]


def test_a_candidate_with_other_labels_cannot_replace_the_serving_model(fp32_variant: Path, contrarian: Path) -> None:
    serving = Predictor(fp32_variant, threads=1)
    assert candidate_problem(Predictor(contrarian, threads=1), serving.labels) == ""  # the same set, reordered

    class Other:
        labels = ("sports", "business")

    problem = candidate_problem(Other(), serving.labels)
    assert problem == "the candidate's labels (sports, business) are not the serving model's (negative, positive)"
