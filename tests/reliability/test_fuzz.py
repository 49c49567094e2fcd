"""Fuzzing the live service: schemathesis over its OpenAPI document, and hypothesis properties on text
inputs (empty, whitespace, 100k characters, control characters, lone surrogates, mixed scripts, wrong JSON
types, invalid JSON, non-UTF-8 bytes). Goal: zero 5xx, zero crashes, no request text in the logs."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.reliability._rel import TOKEN, log_text, scale

CANARY = "zqxcanary"
"""Every text the properties send starts with this; it must never show up in the server's log."""

pytestmark = pytest.mark.timeout(900)


def _schemathesis(url: str, out: Path, per_operation: int, headers: list[str], seed: int) -> dict[str, Any]:
    report = out / "report.json"
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{url}/docs.json",
        "--checks",
        "not_a_server_error",
        "--max-examples",
        str(per_operation),
        "--seed",
        str(seed),
        "--no-shrink",
        "--workers",
        "2",
        "--request-timeout",
        "60",
        "--report",
        "json",
        "--report-json-path",
        str(report),
        "--suppress-health-check",
        "all",
        "--warnings",
        "off",
    ]
    for header in headers:
        command += ["-H", header]
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, cwd=out)
    if not report.is_file():
        raise AssertionError(
            f"schemathesis wrote no report (exit {done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )
    result = json.loads(report.read_text())
    result["stdout_tail"] = done.stdout[-2000:]
    return result


def test_schemathesis_finds_no_server_error(fuzz_server: Any, tmp_path: Path, figures: dict) -> None:
    per_operation = scale(30, 250)
    runs = {}
    for name, headers, seed in (("with token", [f"Authorization: Bearer {TOKEN}"], 1), ("without token", [], 2)):
        folder = tmp_path / name.replace(" ", "-")
        folder.mkdir()
        result = _schemathesis(fuzz_server.url, folder, per_operation, headers, seed)
        runs[name] = {
            "operations": result["operations"]["tested"],
            "cases": result["test_cases"]["generated"],
            "with_failures": result["test_cases"]["with_failures"],
            "errors": len(result["errors"]),
            "failures": result["failures"][:5],
        }
        assert result["operations"]["tested"] >= 7, result["operations"]
        assert result["test_cases"]["with_failures"] == 0 and not result["errors"], result["stdout_tail"]
    cases = sum(r["cases"] for r in runs.values())
    figures.update(
        {
            "cases": cases,
            "per_operation_max_examples": per_operation,
            "runs": runs,
            "server_errors": sum(r["with_failures"] for r in runs.values()),
        }
    )
    assert cases >= scale(150, 1000)


# ---- hypothesis properties over HTTP --------------------------------------------------------------------

SURROGATES = st.sampled_from(["\ud800", "\udc00", "\udfff", "a\ud83d", "\ude00b"])
CONTROL = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=31), max_size=20)
SCRIPTS = st.text(
    alphabet=st.sampled_from(list("abcжфλπ中文字ئەمە한국어שלוםकि😀👍🏽\u200b\u202e\ufeff é")), max_size=60
)
TEXT = st.one_of(
    st.just(""),
    st.sampled_from([" ", "\t\n", "\u3000", "\u00a0" * 5]),
    st.text(max_size=200),
    CONTROL,
    SCRIPTS,
    st.builds(lambda c, n: c * n, st.sampled_from(["a", "é", "中", "😀", "word "]), st.sampled_from([20_000, 100_000])),
    st.builds(lambda a, s, b: a + s + b, st.text(max_size=20), SURROGATES, st.text(max_size=20)),
)
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=20,
)


def _has_surrogate(text: str) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in text)


def _check(response: httpx.Response) -> None:
    assert response.status_code < 500, f"{response.status_code}: {response.text[:300]}"
    body = response.json()  # every answer, refusals included, is JSON
    if response.status_code >= 400:
        assert "error" in body and "Traceback" not in response.text


@pytest.fixture(scope="module")
def client(fuzz_server: Any) -> httpx.Client:
    with httpx.Client(base_url=fuzz_server.url, timeout=60) as c:
        yield c


COUNTS = {"requests": 0, "status": {}}


def _post(client: httpx.Client, path: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
    response = client.post(path, content=content, headers={"content-type": "application/json", **(headers or {})})
    COUNTS["requests"] += 1
    COUNTS["status"][response.status_code] = COUNTS["status"].get(response.status_code, 0) + 1
    return response


@settings(max_examples=scale(120, 1000), deadline=None, suppress_health_check=list(HealthCheck))
@given(texts=st.lists(TEXT, min_size=1, max_size=16))
def test_texts_of_every_kind_are_answered_or_refused_cleanly(client: httpx.Client, texts: list[str]) -> None:
    texts = [f"{CANARY} {t}" for t in texts]
    raw = json.dumps({"texts": texts}).encode()  # ensure_ascii: lone surrogates travel as \\udXXX escapes
    response = _post(client, "/classify", raw)
    _check(response)
    if len(raw) > 1_000_000:
        assert response.status_code == 413
    elif any(_has_surrogate(t) for t in texts):
        assert response.status_code == 422 and response.json()["reason"] == "invalid_input"
    else:
        assert response.status_code == 200, response.text[:300]
        answers = response.json()
        assert len(answers) == len(texts) and all(a["label"] in ("negative", "positive") for a in answers)


@settings(max_examples=scale(120, 1000), deadline=None, suppress_health_check=list(HealthCheck))
@given(body=JSON_VALUES, path=st.sampled_from(["/classify", "/feedback", "/admin/reload"]), auth=st.booleans())
def test_json_of_the_wrong_shape_is_refused_with_4xx(client: httpx.Client, body: Any, path: str, auth: bool) -> None:
    headers = {"authorization": f"Bearer {TOKEN}"} if auth else {}
    if path == "/admin/reload" and isinstance(body, dict) and isinstance(body.get("model"), str):
        body["model"] = CANARY + body["model"]  # never a real folder: this test does not switch models
    _check(_post(client, path, json.dumps(body).encode(), headers))


@settings(max_examples=scale(120, 1000), deadline=None, suppress_health_check=list(HealthCheck))
@given(
    raw=st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda a, b: b'{"texts": ["' + a + b'"]}' + b,
            st.binary(min_size=1, max_size=30),
            st.sampled_from([b"", b"}", b"]}"]),
        ),
        st.builds(lambda t: json.dumps({"texts": [t]}).encode()[:-3], st.text(max_size=30)),  # cut short
    ),
    path=st.sampled_from(["/classify", "/feedback"]),
)
def test_invalid_json_and_non_utf8_bytes_are_refused_with_4xx(client: httpx.Client, raw: bytes, path: str) -> None:
    response = _post(client, path, raw, {"authorization": f"Bearer {TOKEN}"})
    _check(response)
    if path == "/classify":
        try:
            valid = isinstance(json.loads(raw.decode("utf-8")), dict)
        except (UnicodeDecodeError, json.JSONDecodeError):
            valid = False
        if not valid:
            assert response.status_code in (400, 422), response.text[:200]


def test_the_server_survived_and_logged_no_text_or_token(fuzz_server: Any, figures: dict) -> None:
    assert fuzz_server.process.poll() is None, "the server died during fuzzing"
    ok = httpx.post(f"{fuzz_server.url}/classify", json={"texts": ["still alive"]}, timeout=30)
    assert ok.status_code == 200
    log = log_text(fuzz_server.log_path)
    figures.update(
        {
            "property_requests": COUNTS["requests"],
            "status_counts": COUNTS["status"],
            "server_errors": sum(n for code, n in COUNTS["status"].items() if code >= 500),
            "log_lines": len(log.splitlines()),
        }
    )
    assert CANARY not in log, "request text reached the server log"
    assert TOKEN not in log, "the API token reached the server log"
    assert "Traceback" not in log, log[-3000:]
