"""The candidate in shadow: scores a share of live batches off the request path, and the rule that decides it.

`ShadowScorer` holds a candidate `export.Predictor` beside the serving model. The core offers it every batch
after the answers are built (`ClassifierCore.shadow`); a seeded draw picks `settings.shadow_share` of them,
and one background thread scores those with the candidate and adds the counts (texts scored, of which the
candidate's label agreed with the one served) and the candidate's label of every stored prediction to the
store's shadow run. `offer` only puts the batch in a queue of one: a batch offered while the worker is busy
is skipped and counted, so the request path never waits for the candidate. What it costs the serving model
is the CPU (or GPU) time the candidate takes, on a share of the batches.

`decide` is the rule the service applies to the run as the store has it (every worker and replica adds to
the same run, and the first to decide wins, `FeedbackStore.finish_shadow`).
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bento._metrics import ServiceMetrics
from bento._settings import Settings
from knowacq.base import FeedbackStore, ShadowRun, paired_difference, softmax, wilson_interval

__all__ = ["MAX_FAILED_BATCHES", "ShadowScorer", "candidate_problem", "decide", "failing", "model_version"]

log = logging.getLogger("knowacq.service")

Job = tuple[list[str], list[str], list[str | None]]

MAX_FAILED_BATCHES = 20
"""A candidate that failed on this many batches in a worker and scored none there is rejected (`failing`)."""


def model_version(predictor: Any) -> str:
    """The version string the service reports for a predictor (as `ClassifierCore.model_version`)."""
    manifest = predictor.manifest
    return f"{manifest.variant}-{manifest.model_sha256[:12]}"


def candidate_problem(candidate: Any, serving_labels: Sequence[str]) -> str:
    """Why a loaded candidate cannot replace the serving model ("" when it can): its labels must be the
    serving model's (feedback and the dashboards name them), in any order."""
    if set(candidate.labels) != set(serving_labels):
        return (
            f"the candidate's labels ({', '.join(candidate.labels)}) are not the serving model's "
            f"({', '.join(serving_labels)})"
        )
    return ""


class ShadowScorer:
    """Scores offered batches with `predictor` (the candidate of shadow run `run_id`) in one background thread.

    `store`, `metrics`: the serving core's; `rng`: the draws of which batches are scored (default: seeded
    with `settings.sample_seed`, the run and the process id); `clock`: monotonic seconds; `flush_s`: the
    counts are added to the store's run at most this often (one write per batch cost 5 ms on SQLite, which
    holds the write lock the core's own writes wait for; 0: after every batch).
    Call `close()` when the run ends: the thread writes what it holds and stops after the batch in hand.
    """

    def __init__(
        self,
        predictor: Any,
        run_id: int,
        settings: Settings,
        *,
        store: FeedbackStore,
        metrics: ServiceMetrics,
        spec: str = "",
        rng: np.random.Generator | None = None,
        clock: Callable[[], float] = time.perf_counter,
        flush_s: float = 1.0,
    ) -> None:
        self.predictor = predictor
        self.run_id = run_id
        self.spec = spec
        self.share = settings.shadow_share
        self.store = store
        self.metrics = metrics
        self.clock = clock
        self.flush_s = flush_s
        self.labels: tuple[str, ...] = tuple(predictor.labels)
        self.model_version = model_version(predictor)
        self._rng = rng if rng is not None else np.random.default_rng([settings.sample_seed, run_id, os.getpid()])
        self._rng_lock = threading.Lock()
        # One batch waits while one is scored: a third is skipped (reason busy) instead of queued.
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=1)
        self._closed = threading.Event()
        self._pending = 0
        self._idle = threading.Condition()
        self._unwritten: tuple[int, int, list[tuple[str, str]]] = (0, 0, [])
        self._written_at = clock()
        self.finished = threading.Event()
        """Set when the store says the run no longer runs (another replica decided it), or on close()."""
        self.scored = 0
        self.agreed = 0
        """What this process scored (the store holds the sum over every worker and replica)."""
        self.failures = 0
        """Batches the candidate itself failed on in this process."""
        self._worker = threading.Thread(target=self._work, name=f"knowacq-shadow-{run_id}", daemon=True)
        self._worker.start()
        metrics.shadow_info.labels(version=self.model_version).set(1)
        # SciPy (the Wilson interval of `decide`) is imported now, while the candidate loads: imported at the
        # first decision, it took 2.4 s (2 cores, under traffic), and the decision then rested on a stale count.
        wilson_interval(1, 2)

    def __repr__(self) -> str:
        return f"ShadowScorer(run={self.run_id}, candidate={self.model_version!r}, share={self.share})"

    def offer(self, texts: Sequence[str], served: Sequence[str], prediction_ids: Sequence[str | None]) -> None:
        """Called by the core after every batch: maybe hand it to the worker. Never blocks, never raises."""
        try:
            if self._closed.is_set() or self.finished.is_set():
                return
            with self._rng_lock:  # numpy Generators are not thread-safe
                drawn = bool(self._rng.random() < self.share)
            if not drawn:
                self.metrics.shadow_skipped.labels(reason="not_sampled").inc()
                return
            with self._idle:
                self._queue.put_nowait((list(texts), list(served), list(prediction_ids)))
                self._pending += 1
        except queue.Full:
            self.metrics.shadow_skipped.labels(reason="busy").inc()
        except Exception as exc:  # the shadow must never cost a request its answer
            log.error("the shadow candidate could not take a batch: %s", type(exc).__name__)

    def close(self, timeout: float | None = None) -> None:
        """Stop scoring: the worker writes its counts and ends after the batch in hand (wait up to `timeout`
        seconds for it; None: do not wait)."""
        self._closed.set()
        try:
            self._queue.put_nowait(None)
        except queue.Full:  # the worker sees _closed after the batch it holds
            pass
        self.metrics.shadow_info.labels(version=self.model_version).set(0)
        if timeout is not None:
            self._worker.join(timeout)

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every batch taken so far is scored and, with `flush_s=0`, written (tests, benchmarks);
        False on timeout."""
        deadline = time.monotonic() + timeout
        with self._idle:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def _work(self) -> None:
        while True:
            try:  # with counts not yet written, wake up in time to write them even when no batch comes
                job = self._queue.get(timeout=self.flush_s if self._unwritten[0] else None)
            except queue.Empty:
                self._write()
                continue
            try:
                if job is not None and not self._closed.is_set():
                    self._score(*job)
            except Exception as exc:  # a failing candidate: counted, and the next batch is tried
                self.failures += 1
                self.metrics.shadow_skipped.labels(reason="error").inc()
                log.error("the shadow candidate failed on a batch: %s: %s", type(exc).__name__, exc)
            finally:
                with self._idle:
                    self._pending -= int(job is not None)
                    self._idle.notify_all()
            if job is None or self._closed.is_set():
                self._write()
                self.finished.set()
                return

    def _score(self, texts: list[str], served: list[str], prediction_ids: list[str | None]) -> None:
        """The candidate's labels for one batch, compared with the served ones; written when due."""
        start = self.clock()
        labels = self.candidate_labels(texts)
        agreed = sum(1 for mine, theirs in zip(labels, served) if mine == theirs)
        stored = [(pid, label) for pid, label in zip(prediction_ids, labels) if pid is not None]
        scored_before, agreed_before, predictions = self._unwritten
        self._unwritten = (scored_before + len(texts), agreed_before + agreed, predictions + stored)
        self.scored += len(texts)
        self.agreed += agreed
        self.metrics.shadow_scored.inc(len(texts))
        self.metrics.shadow_agreed.inc(agreed)
        if self.clock() - self._written_at >= self.flush_s:
            self._write()
        self.metrics.shadow_seconds.observe(self.clock() - start)

    def _write(self) -> None:
        """Add the counts not yet written to the store's run (one transaction). A run that no longer runs
        (decided elsewhere, or stopped) sets `finished`: the service drops this scorer at its next look."""
        scored, agreed, predictions = self._unwritten
        self._unwritten = (0, 0, [])
        self._written_at = self.clock()
        if not scored:
            return
        try:
            running = self.store.record_shadow(self.run_id, scored=scored, agreed=agreed, predictions=predictions)
        except Exception as exc:  # a store outage loses these counts (evidence only); serving is untouched
            self.metrics.shadow_skipped.labels(reason="error").inc()
            log.error("could not add %d shadow-scored text(s) to the store: %s", scored, type(exc).__name__)
            return
        if not running:
            self.finished.set()

    def candidate_labels(self, texts: Sequence[str]) -> list[str]:
        """The candidate's top label for each text, as the core computes the serving model's (tokenised once,
        grouped by length, calibrated with the candidate's own temperature)."""
        engine = self.predictor.engine
        encodings = engine.tokenize(list(texts))
        logits = np.zeros((len(encodings), len(self.labels)), dtype=np.float32)
        for idx in engine.groups(encodings):
            logits[idx] = engine.run(engine.feeds([encodings[i] for i in idx]))
        probs = softmax(logits, self.predictor.temperature)
        return [self.labels[int(i)] for i in probs.argmax(axis=1)]


def failing(scorer: ShadowScorer, limit: int = MAX_FAILED_BATCHES) -> str:
    """Why the run should be rejected at once ("" when it should not): its candidate failed on `limit`
    batches here and scored none, so it would never reach `shadow_min_texts`."""
    if scorer.failures >= limit and scorer.scored == 0:
        return f"the candidate failed on all {scorer.failures} batches it was given and scored none"
    return ""


def decide(store: FeedbackStore, run: ShadowRun, settings: Settings) -> tuple[str, str, dict[str, Any]] | None:
    """Promote or reject the candidate of `run` (as read from the store now), or None while the evidence is
    short: fewer than `shadow_min_texts` texts scored, or fewer than `shadow_min_live` labelled live texts.

    Rejected when its agreement with the serving model is under `shadow_min_agreement`, or when, on the
    labelled live texts it scored, its accuracy is lower than the serving model's on the same texts by more
    than `shadow_max_accuracy_drop` (the paired difference, with its interval in the evidence)."""
    if run.scored < settings.shadow_min_texts:
        return None
    pairs = store.shadow_live_pairs(run.id)
    if settings.shadow_min_live > 0 and len(pairs) < settings.shadow_min_live:
        return None
    agreement = wilson_interval(run.agreed, run.scored)
    evidence: dict[str, Any] = {
        "shadow_scored": run.scored,
        "shadow_agreed": run.agreed,
        "shadow_agreement": agreement.as_dict(),
        "shadow_live_texts": len(pairs),
    }
    figures = f"agreement {run.agreement:.4f} with the serving model on {run.scored} texts"
    if run.agreement < settings.shadow_min_agreement:
        return "rejected", f"{figures}, under the bound {settings.shadow_min_agreement:.4f}", evidence
    if pairs:
        candidate_correct = [candidate == human for _, candidate, human in pairs]
        serving_correct = [serving == human for serving, _, human in pairs]
        candidate = wilson_interval(sum(candidate_correct), len(pairs))
        serving = wilson_interval(sum(serving_correct), len(pairs))
        difference = paired_difference(candidate_correct, serving_correct)
        evidence.update(
            live_candidate_accuracy=candidate.as_dict(),
            live_serving_accuracy=serving.as_dict(),
            live_difference=difference.as_dict(),
        )
        live = (
            f"live accuracy {candidate.estimate:.4f} against the serving model's {serving.estimate:.4f} on the "
            f"same {len(pairs)} labelled texts (difference {difference.estimate:+.4f}, 95% interval "
            f"[{difference.low:+.4f}, {difference.high:+.4f}])"
        )
        if difference.estimate < -settings.shadow_max_accuracy_drop:
            return "rejected", f"{live}: a drop over the bound {settings.shadow_max_accuracy_drop:.4f}", evidence
        figures = f"{figures}; {live}"
    else:
        figures = f"{figures}; no labelled live texts scored, accuracy not checked"
    return "promoted", f"{figures}: within the bounds", evidence
