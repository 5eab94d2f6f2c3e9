"""Likely personal data, by pattern over a sample of each text column's values: emails, phone numbers, card
numbers (that pass the Luhn check), IBANs (that pass their mod-97 check) and IP addresses. Only the share of
matching values and masked examples are reported; the values themselves are never shown."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import numpy as np

from modelfoundry.data.quality.findings import Finding, percent, share

if TYPE_CHECKING:
    import pandas as pd

SAMPLE = 2000  # values looked at per column
EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}")
PHONE = re.compile(r"(?<![\w.:/-])\+?\(?\d{1,4}\)?(?:[ .-]?\(?\d{2,5}\)?){2,5}(?![\w.:/-])")
DATE = re.compile(r"^\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|^\d{1,2}[-/.]\d{1,2}[-/.]\d{4}")  # not phone numbers
CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d-])")
IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b")
IPV4 = re.compile(r"(?<![\d.])(?:(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)\.){3}(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(?![\d.])")


def luhn_valid(digits: str) -> bool:
    """The Luhn checksum of a card number (digits only): every second digit from the right doubled."""
    if not digits.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char)
        if position % 2:
            value = value * 2 - 9 if value > 4 else value * 2
        total += value
    return total % 10 == 0


def iban_valid(text: str) -> bool:
    """The ISO 13616 check: the country code and check digits moved to the end, read as a number, mod 97 is 1."""
    compact = text.replace(" ", "").upper()
    if not 15 <= len(compact) <= 34:
        return False
    moved = compact[4:] + compact[:4]
    number = "".join(str(int(c, 36)) for c in moved)
    return int(number) % 97 == 1


def _card(text: str) -> str | None:
    for match in CARD.finditer(text):
        digits = re.sub(r"\D", "", match.group())
        if 13 <= len(digits) <= 19 and len(set(digits)) > 1 and luhn_valid(digits):
            return match.group()
    return None


def _phone(text: str) -> str | None:
    for match in PHONE.finditer(text):
        found = match.group()
        digits = re.sub(r"\D", "", found)
        formatted = found.startswith("+") or bool(re.search(r"[ .()-]", found))
        decimal = re.fullmatch(r"\+?\d+\.\d+", found)  # 12345.678901: a number, not a phone
        if 9 <= len(digits) <= 15 and formatted and not decimal and not DATE.match(found) and not _card(found):
            return found
    return None


def _first(pattern: re.Pattern, check: Callable[[str], bool] | None = None) -> Callable[[str], str | None]:
    def find(text: str) -> str | None:
        for match in pattern.finditer(text):
            if check is None or check(match.group()):
                return match.group()
        return None

    return find


DETECTORS: dict[str, Callable[[str], str | None]] = {  # name -> the first match in a value, or None
    "email": _first(EMAIL),
    "card number": _card,
    "IBAN": _first(IBAN, iban_valid),
    "IP address": _first(IPV4),
    "phone number": _phone,
}


def mask(value: str) -> str:
    """A value with its letters and digits hidden but its shape kept: 'ann@mail.com' -> 'a**@m***.com',
    '4111 1111 1111 1111' -> '**** **** **** **11'."""
    if "@" in value:
        user, _, domain = value.partition("@")
        host, dot, tld = domain.rpartition(".")
        return f"{user[:1]}{'*' * max(len(user) - 1, 1)}@{host[:1]}{'*' * max(len(host) - 1, 1)}{dot}{tld}"
    digits = [i for i, c in enumerate(value) if c.isalnum()]
    keep = set(digits[-2:])
    return "".join(c if (i in keep or not c.isalnum()) else "*" for i, c in enumerate(value))


def pii_findings(frame: pd.DataFrame, columns: list[str], seed: int = 0) -> list[Finding]:
    """For each column (text, or integers long enough to be card or phone numbers), the share of sampled values
    matching each pattern; a column where at least 30% match is an error, from 1% a warning."""
    import pandas as pd

    from modelfoundry.data.quality.columns import holds_text

    findings = []
    dtypes = frame.dtypes.to_dict()
    integers = [c for c in columns if pd.api.types.is_integer_dtype(dtypes[c])]
    magnitude = np.abs(frame[integers].to_numpy(dtype=float, na_value=np.nan)) if integers else np.zeros((1, 0))
    longest = dict(zip(integers, np.fmax.reduce(magnitude, axis=0) if len(magnitude) else [0.0] * len(integers)))
    for column in columns:
        if not (holds_text(dtypes[column]) or longest.get(column, 0) >= 10 ** 8):  # shorter: no phone or card
            continue
        values = _sample_text(frame[column], seed)
        if values is None:
            continue
        for name, detect in DETECTORS.items():
            hits = [found for found in map(detect, values) if found]
            part = share(len(hits), len(values))
            if part < 0.01:
                continue
            severity = "error" if part >= 0.3 else "warning"
            findings.append(Finding("pii", severity, [column], part,
                                    f"'{column}' looks like it holds {name}s: {percent(part)} of {len(values)} "
                                    f"sampled values match (e.g. {mask(hits[0])}).",
                                    "Drop or pseudonymise the column before training and sharing the data; a model "
                                    "can memorise and reveal it.", {"pattern": name, "sampled": len(values)}))
    return findings


def _sample_text(series: pd.Series, seed: int) -> list[str] | None:
    import pandas as pd

    from modelfoundry.data.quality.columns import holds_text

    values = series.dropna()
    if pd.api.types.is_integer_dtype(values):
        values = values.astype(str)
    elif not holds_text(values.dtype):
        return None
    values = values[values.map(lambda v: isinstance(v, str) and bool(v.strip()))]
    if values.empty:
        return None
    if len(values) > SAMPLE:
        values = values.iloc[np.sort(np.random.default_rng(seed).choice(len(values), SAMPLE, replace=False))]
    return values.tolist()
