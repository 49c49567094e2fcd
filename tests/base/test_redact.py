"""Personal-data redaction before storage."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from knowacq.base import redact

PII = [
    ("write to jane.doe+news@example.co.uk today", "EMAIL"),
    ("call +44 20 7946 0958 tonight", "PHONE"),
    ("call (555) 123-4567", "PHONE"),
    ("call 555-123-4567", "PHONE"),
    ("appelez 06 12 34 56 78", "PHONE"),
    ("ruf an: +49 30 1234567", "PHONE"),
    ("+4915112345678 is my number", "PHONE"),
    ("card 4111 1111 1111 1111 expires", "CARD"),
    ("card 5500-0000-0000-0004", "CARD"),
    ("from 192.168.10.254 again", "IP"),
    ("from 2001:db8:85a3::8a2e:370:7334", "IP"),
    ("IBAN GB82 WEST 1234 5698 7654 32 please", "IBAN"),
    ("IBAN DE89370400440532013000", "IBAN"),
    ("see https://example.com/path?q=1 for more", "URL"),
    ("see www.example.org", "URL"),
]


@pytest.mark.parametrize(("text", "kind"), PII)
def test_each_kind_is_replaced_by_its_placeholder(text: str, kind: str) -> None:
    out = redact(text)
    assert f"[{kind}]" in out.text
    assert out.found.get(kind, 0) >= 1
    digits_before = sum(c.isdigit() for c in text)
    assert sum(c.isdigit() for c in out.text) < max(digits_before, 1) or kind in ("EMAIL", "URL")


@pytest.mark.parametrize(
    "text",
    [
        "a 1999 film that runs 90 minutes",
        "rated 8.5/10 , 3 1/2 stars out of 4",
        "the 2001 - 2003 trilogy , at 10:30 pm",
        "4111 1111 1111 1112 is not a valid card",  # fails the Luhn check
        "version 1.2.3 of the script",
    ],
)
def test_ordinary_numbers_are_kept(text: str) -> None:
    assert redact(text).text == text


@given(st.text(max_size=300))
def test_redaction_never_fails_and_is_stable(text: str) -> None:
    once = redact(text).text
    assert redact(once).text == once
