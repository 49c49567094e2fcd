"""Writes `data/pii.tsv`: labelled strings holding personal data, for the redaction recall test.

Run it again only to change the set (it is seeded, so the output is the same each time):
    python tests/reliability/make_pii_set.py
Columns: kind (email, phone, card, ipv4, ipv6, iban, url), secret (the exact span that must not survive
redaction), text (the secret inside a carrier sentence). Carrier sentences hold no 4-digit numbers, so the
test can also check that no 4-digit run of a secret survives.
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

OUT = Path(__file__).with_name("data") / "pii.tsv"

CARRIERS = [
    "{}",
    "my details: {}",
    "Please contact {} tomorrow.",
    "(see {})",
    "it was {}, as I said",
    "Reach me at {}!",
    "Kontakt: {} bitte.",
    "écrivez-moi : {} merci",
    "連絡先は {} です",
    '"{}"',
    "the film was dull; {} is where you can complain",
    "{}.",
    "call {} or don't",
    "Ref {};",
]


def luhn_complete(prefix: str, length: int, rng: random.Random) -> str:
    body = prefix + "".join(rng.choice("0123456789") for _ in range(length - len(prefix) - 1))
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:  # doubled positions, counted from the check digit's left neighbour
            d = d * 2 - 9 if d * 2 > 9 else d * 2
        total += d
    return body + str((10 - total % 10) % 10)


def iban(country: str, bban: str) -> str:
    moved = bban + country + "00"
    numeric = "".join(str(int(c, 36)) for c in moved)
    return f"{country}{98 - int(numeric) % 97:02d}{bban}"


def grouped(value: str, sizes: list[int], sep: str) -> str:
    out, i = [], 0
    for size in sizes:
        out.append(value[i : i + size])
        i += size
    if i < len(value):
        out.append(value[i:])
    return sep.join(out)


def digits(rng: random.Random, n: int, first: str = "123456789") -> str:
    return rng.choice(first) + "".join(rng.choice("0123456789") for _ in range(n - 1))


def emails(rng: random.Random) -> list[str]:
    users = ["alice", "Bob.Smith", "j.doe+reviews", "x_y-z", "anna.maria.k", "user123", "o'neil", "ZOE"]
    domains = [
        "example.com",
        "mail.example.co.uk",
        "uni-bonn.de",
        "example.org",
        "sub.domain.example.io",
        "EXAMPLE.NET",
        "posteo.de",
        "gmx.at",
    ]
    return [
        f"{rng.choice(users)}{rng.randint(1, 99) if rng.random() < 0.3 else ''}@{rng.choice(domains)}"
        for _ in range(34)
    ]


def phones(rng: random.Random) -> list[str]:
    formats = [
        lambda: f"({digits(rng, 3)}) {digits(rng, 3)}-{digits(rng, 4)}",  # US
        lambda: f"{digits(rng, 3)}-{digits(rng, 3)}-{digits(rng, 4)}",  # US
        lambda: f"+1 {digits(rng, 3)} {digits(rng, 3)} {digits(rng, 4)}",  # US, international
        lambda: f"{digits(rng, 3)}.{digits(rng, 3)}.{digits(rng, 4)}",  # US, dots
        lambda: f"+44 20 {digits(rng, 4)} {digits(rng, 4)}",  # UK London
        lambda: f"07{digits(rng, 3)} {digits(rng, 6)}",  # UK mobile
        lambda: f"+49 30 {digits(rng, 7)}",  # DE
        lambda: f"+49 (0)89 {digits(rng, 3)} {digits(rng, 4)}",  # DE with trunk zero
        lambda: f"0{digits(rng, 3)}/{digits(rng, 6)}",  # DE slash
        lambda: "+33 " + " ".join(digits(rng, 2) for _ in range(4)) + f" {digits(rng, 2)}",  # FR
        lambda: "06 " + " ".join(digits(rng, 2) for _ in range(4)),  # FR mobile
        lambda: f"+91 {digits(rng, 5)} {digits(rng, 5)}",  # IN
        lambda: f"+81 3-{digits(rng, 4)}-{digits(rng, 4)}",  # JP
        lambda: f"03-{digits(rng, 4)}-{digits(rng, 4)}",  # JP domestic
        lambda: f"+55 11 9{digits(rng, 4)}-{digits(rng, 4)}",  # BR
        lambda: f"(11) 9{digits(rng, 4)}-{digits(rng, 4)}",  # BR domestic
        lambda: f"+61 2 {digits(rng, 4)} {digits(rng, 4)}",  # AU
        lambda: f"+31 6 {digits(rng, 8)}",  # NL mobile
        lambda: f"+1{digits(rng, 10)}",  # E.164
        lambda: f"+86 10 {digits(rng, 4)} {digits(rng, 4)}",  # CN
    ]
    return [formats[i % len(formats)]() for i in range(40)]


def cards(rng: random.Random) -> list[str]:
    kinds = [
        ("4", 16, [4, 4, 4, 4]),
        ("51", 16, [4, 4, 4, 4]),
        ("2221", 16, [4, 4, 4, 4]),
        ("37", 15, [4, 6, 5]),
        ("6011", 16, [4, 4, 4, 4]),
        ("36", 14, [4, 6, 4]),
        ("35", 16, [4, 4, 4, 4]),
    ]
    out = []
    for i in range(35):
        prefix, length, sizes = kinds[i % len(kinds)]
        number = luhn_complete(prefix, length, rng)
        out.append(grouped(number, sizes, [" ", "-", ""][i % 3]))
    return out


def ipv4s(rng: random.Random) -> list[str]:
    return [".".join(str(rng.randint(1, 254)) for _ in range(4)) for _ in range(28)] + ["255.255.255.255", "10.0.0.1"]


def ipv6s(rng: random.Random) -> list[str]:
    out = []
    for i in range(28):
        groups = [f"{rng.randint(0, 0xFFFF):x}" for _ in range(8)]
        if i % 4 == 0:
            out.append(":".join(groups))
        elif i % 4 == 1:
            out.append(f"2001:db8::{groups[0]}:{groups[1]}")
        elif i % 4 == 2:
            out.append(f"fe80::{groups[2]}:{groups[3]}%eth0")
        else:
            out.append(":".join(groups).upper())
    return out + ["::1", "2001:db8::1", "::ffff:192.0.2.128"]


def ibans(rng: random.Random) -> list[str]:
    def n(k: int) -> str:
        return "".join(rng.choice("0123456789") for _ in range(k))

    makers = [
        lambda: iban("DE", n(18)),
        lambda: iban("GB", "NWBK" + n(14)),
        lambda: iban("FR", n(23)),
        lambda: iban("NL", "ABNA" + n(10)),
        lambda: iban("ES", n(20)),
        lambda: iban("IT", "X" + n(22)),
        lambda: iban("CH", n(17)),
    ]
    out = []
    for i in range(35):
        value = makers[i % len(makers)]()
        if i % 3 == 0:
            value = grouped(value, [4] * 8, " ")
        if i % 10 == 9:
            value = value.lower()
        out.append(value)
    return out


def urls(rng: random.Random) -> list[str]:
    paths = [
        "/profile/alice",
        "/u/123456?ref=mail",
        "/reset?token=abcDEF123",
        "/a/b/c.html",
        "",
        "/#frag",
        "/search?q=my+name&page=2",
    ]
    hosts = [
        "https://example.com",
        "http://www.example.org",
        "www.shop.example.de",
        "https://sub.example.io:8443",
        "ftp://files.example.net",
        "HTTPS://EXAMPLE.COM",
    ]
    return [f"{rng.choice(hosts)}{rng.choice(paths)}" for _ in range(30)]


def main() -> None:
    rng = random.Random(20261128)
    rows = []
    for kind, values in (
        ("email", emails(rng)),
        ("phone", phones(rng)),
        ("card", cards(rng)),
        ("ipv4", ipv4s(rng)),
        ("ipv6", ipv6s(rng)),
        ("iban", ibans(rng)),
        ("url", urls(rng)),
    ):
        for value in values:
            rows.append((kind, value, rng.choice(CARRIERS).format(value)))
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with OUT.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n", quoting=csv.QUOTE_MINIMAL)
        writer.writerow(["kind", "secret", "text"])
        writer.writerows(rows)
    print(f"wrote {len(rows)} rows to {OUT}")


if __name__ == "__main__":
    main()
