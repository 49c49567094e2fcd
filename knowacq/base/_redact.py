"""Personal-data redaction: e-mail addresses, URLs, IBANs, card numbers, IP addresses and phone numbers.

Applied to every text before it reaches the feedback store. Each match is replaced by a typed placeholder
(`[EMAIL]`, `[URL]`, `[IBAN]`, `[CARD]`, `[IP]`, `[PHONE]`) so that labellers still see that something was
there. Candidates are checked where a checksum exists (Luhn for cards, mod-97 for IBANs, `ipaddress` for
IPs), which keeps ordinary numbers in review text ("a 1999 film", "90 minutes") untouched.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from collections import Counter
from dataclasses import dataclass

__all__ = ["Redaction", "redact", "redact_for_storage", "text_sha256"]

_EMAIL = re.compile(r"(?<![\w.+-])[\w.+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b")
_URL = re.compile(r"\b(?:(?:https?|ftp)://|www\.)[^\s<>\"']+", re.IGNORECASE)
# Case-insensitive: people type IBANs in lower case too; the mod-97 check keeps ordinary words out.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b", re.IGNORECASE)
_CARD = re.compile(r"(?<![\d+])(?:\d[ -]?){12,18}\d(?!\d)")
# A full stop after the address ends the sentence; a further digit group would make it something else.
_IPV4 = re.compile(r"(?<![\d.])(?:\d{1,3}\.){3}\d{1,3}(?!\d|\.\d)")
_IPV6 = re.compile(r"(?<![\w:])(?:[0-9A-Fa-f]{0,4}:){2,7}[0-9A-Fa-f]{0,4}(?:%\w+)?(?![\w:])")
# A phone number: optional +country code, then digit groups split by spaces, dots, dashes or brackets.
_PHONE = re.compile(
    r"(?<![\w+])(?:\+\d{1,3}[\s.-]?)?(?:\(\d{1,5}\)[\s.-]?)?\d{1,5}(?:[\s.-]\d{1,8}){1,5}(?![\w])"
    r"|(?<![\w+])\+\d{7,15}(?!\w)"
    r"|(?<![\w+])0\d{9,11}(?!\w)"
    # German-style area code and number split by a slash (030/1234567); dates (01/05/2003) do not match.
    r"|(?<![\w+/])0\d{2,5}/\d{4,10}(?![\w/])"
)


@dataclass(frozen=True)
class Redaction:
    text: str
    found: dict[str, int]
    """How many items of each kind were replaced (empty when nothing was)."""


def _luhn(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch)
        if i % 2 == 1:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _iban_ok(candidate: str) -> bool:
    value = candidate.replace(" ", "").upper()
    if not 15 <= len(value) <= 34:
        return False
    rearranged = value[4:] + value[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def _iban_prefix(candidate: str) -> int:
    """Length of the longest prefix of `candidate`, ending at a space, that is a valid IBAN (0: none). The
    pattern is case-insensitive, so a following word ("... 3000 bitte") can be taken for a last group."""
    cuts = [len(candidate)] + [i for i in range(len(candidate) - 1, 0, -1) if candidate[i] == " "]
    return next((cut for cut in cuts if _iban_ok(candidate[:cut])), 0)


def _ip_ok(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate.split("%")[0])
    except ValueError:
        return False
    return True


def _phone_ok(candidate: str) -> bool:
    digits = re.sub(r"\D", "", candidate)
    if not 7 <= len(digits) <= 15:
        return False
    if candidate.startswith("+") or "(" in candidate:
        return True
    groups = re.split(r"[\s.-]+", candidate.strip())
    # Plain digit runs split by separators: demand a phone-like shape, not "1 2 3" or "2001 - 2003".
    return len(digits) >= 9 or (
        len(groups) >= 2
        and all(len(g) >= 2 for g in groups)
        and len(digits) >= 7
        and not all(len(g) == 4 for g in groups)
    )


def redact(text: str) -> Redaction:
    """`text` with personal data replaced by placeholders, and counts of what was replaced."""
    found: Counter[str] = Counter()

    def sub(pattern: re.Pattern[str], kind: str, check: object = None) -> None:
        nonlocal text

        def repl(match: re.Match[str]) -> str:
            value = match.group(0)
            verdict = True if check is None else check(value)  # type: ignore[operator]
            if not verdict:
                return value
            found[kind] += 1
            # A check may answer how long the valid part is: the rest (a word that looked like a group) stays.
            end = len(value) if verdict is True else int(verdict)
            return f"[{kind}]" + value[end:]

        text = pattern.sub(repl, text)

    sub(_EMAIL, "EMAIL")
    sub(_URL, "URL")
    sub(_IBAN, "IBAN", _iban_prefix)
    sub(_CARD, "CARD", lambda v: 13 <= len(re.sub(r"\D", "", v)) <= 19 and _luhn(re.sub(r"\D", "", v)))
    sub(_IPV4, "IP", _ip_ok)
    sub(_IPV6, "IP", lambda v: v.count(":") >= 2 and _ip_ok(v))
    sub(_PHONE, "PHONE", _phone_ok)
    return Redaction(text, dict(found))


def text_sha256(text: str) -> str:
    """The hash under which a (redacted) text is stored and matched: SHA-256 of its UTF-8 bytes."""
    return hashlib.sha256(text.encode("utf-8", "replace")).hexdigest()


def redact_for_storage(text: str) -> tuple[str, str]:
    """(redacted text, its `text_sha256`): what the feedback store keeps of a text, and its key."""
    clean = redact(text).text
    return clean, text_sha256(clean)
