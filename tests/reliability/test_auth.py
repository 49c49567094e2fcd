"""Auth: every protected endpoint answers 401 without a token and with a wrong one; the compare is constant
time; neither the token nor a wrong guess ever shows up in a log line or an error body."""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.reliability._rel import TOKEN, log_text

PROTECTED = {"/feedback": {"prediction_id": "f" * 32, "label": "negative"}, "/admin/reload": {}}
WRONG = [
    None,  # no header at all
    "",  # empty header
    "Bearer",  # scheme only
    "Bearer wrong-guess-7d1e",  # wrong token
    f"Bearer {TOKEN[:-1]}",  # one character short
    f"Bearer {TOKEN}x",  # one character long
    f"Bearer {TOKEN.upper()}",  # wrong case
    f"Basic {base64.b64encode(f'user:{TOKEN}'.encode()).decode()}",  # right secret, wrong scheme
    f"Token {TOKEN}",  # right secret, wrong scheme
    TOKEN,  # no scheme
]


@pytest.mark.parametrize("path", sorted(PROTECTED))
def test_protected_endpoints_refuse_a_missing_or_wrong_token(fuzz_server: Any, path: str, figures: dict) -> None:
    refused = []
    with httpx.Client(base_url=fuzz_server.url, timeout=30) as client:
        for header in WRONG:
            headers = {} if header is None else {"authorization": header}
            r = client.post(path, json=PROTECTED[path], headers=headers)
            assert r.status_code == 401, f"{header!r}: {r.status_code} {r.text[:200]}"
            assert r.json()["reason"] == "unauthorized" and r.headers.get("www-authenticate", "").startswith("Bearer")
            assert TOKEN not in r.text and TOKEN.upper() not in r.text and "wrong-guess" not in r.text
            refused.append(r.status_code)
        good = client.post(path, json=PROTECTED[path], headers={"authorization": f"Bearer {TOKEN}"})
        # with the token the call goes through to its own answer: an unknown prediction, or a reload
        assert good.status_code == (404 if path == "/feedback" else 200), good.text[:200]
        lower = client.post(path, json=PROTECTED[path], headers={"authorization": f"bearer {TOKEN}"})
        assert lower.status_code == good.status_code  # the scheme is case-insensitive (RFC 7235)
    figures.update({"path": path, "wrong_or_missing_tried": len(WRONG), "refused_401": refused.count(401)})


def test_the_token_compare_is_constant_time(monkeypatch: pytest.MonkeyPatch) -> None:
    """check_token goes through hmac.compare_digest for every presented token, right or wrong."""
    import hmac

    from bento import _core
    from knowacq.errors import AuthError

    calls = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(_core.hmac, "compare_digest", spy)
    core = object.__new__(_core.ClassifierCore)
    core._token = TOKEN.encode()  # what __init__ stores
    core.check_token(f"Bearer {TOKEN}")
    for wrong in ("Bearer x", f"Bearer {TOKEN}x"):
        with pytest.raises(AuthError):
            core.check_token(wrong)
    assert len(calls) == 3


def test_no_token_and_no_guess_in_the_server_log(fuzz_server: Any) -> None:
    log = log_text(Path(fuzz_server.log_path))
    assert log, "the server log is empty: the capture is not working"
    assert "/feedback" in log  # the access log is there, so the absence below means something
    for secret in (
        TOKEN,
        TOKEN.upper(),
        TOKEN[:-1],
        "wrong-guess-7d1e",
        base64.b64encode(f"user:{TOKEN}".encode()).decode(),
    ):
        assert secret not in log, f"{secret[:6]}... reached the server log"
