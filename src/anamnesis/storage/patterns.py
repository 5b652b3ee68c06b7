"""The validators' rules written as JSON-schema patterns, for the OpenAPI document.

The document is the API's contract: a request its patterns allow is accepted, one they refuse is
refused (tests/test_fuzz.py holds the service to both). Each pattern says exactly what a validator
of storage.schemas or storage.fields accepts; change them together. Character classes give each
character by its code, which ECMA, Rust's regex (behind API tools' validators) and Python read
alike; `\\s` and `\\d` they do not. Lone surrogates are left out: no JSON tool sends them (the
validators refuse them).
"""

from __future__ import annotations

from collections.abc import Iterable

NON_ASCII_SPACE = r"\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000"
WHITE_SPACE = r"\t\n\x0b\x0c\r\x20" + NON_ASCII_SPACE
"""Unicode's White_Space: what pydantic strips (`strip_whitespace`)."""
PYTHON_SPACE = WHITE_SPACE + r"\x1c-\x1f"
"""What `str.strip()` strips (`str.isspace`): White_Space and four ASCII separators."""
PRINTABLE = r"[^\x00-\x1f\x7f]"
SOLID = rf"[^\x00-\x20\x7f{NON_ASCII_SPACE}]"
"""Printable and not whitespace."""


def stripped_name(max_chars: int) -> str:
    """1 to `max_chars` printable characters once pydantic strips the surrounding whitespace."""
    return rf"^[{WHITE_SPACE}]*{SOLID}(?:{PRINTABLE}{{0,{max_chars - 2}}}{SOLID})?[{WHITE_SPACE}]*$"


NOTE = rf"^[^\x00-\x08\x0b\x0c\x0e-\x1f]*[^\x00-\x20{NON_ASCII_SPACE}][^\x00-\x08\x0b\x0c\x0e-\x1f]*$"
"""No control characters but tab and line breaks, and something other than whitespace."""

_LEAP_YEAR = (
    "(?:19(?:0[48]|[2468][048]|[13579][26])|20(?:[02468][048]|[13579][26])|21(?:0[48]|[2468][048]|[13579][26]))"
)
_MONTH_DAY = "(?:(?:0[1-9]|1[0-2])-(?:0[1-9]|1[0-9]|2[0-8])|(?:0[13-9]|1[0-2])-(?:29|30)|(?:0[13578]|1[02])-31)"
_YEAR = "(?:19(?:0[1-9]|[1-9][0-9])|20[0-9]{2}|21(?:[0-8][0-9]|9[0-8]))"
TIMESTAMP = (
    f"^(?:{_YEAR}-{_MONTH_DAY}|{_LEAP_YEAR}-02-29)[T ]"
    "(?:[01][0-9]|2[0-3]):[0-5][0-9](?::[0-5][0-9](?:[.][0-9]{1,9})?)?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])?$"
)
"""ISO 8601 date and time, seconds and offset optional, from 1901 to 2198: whatever its offset, within the
1900 to 2200 (UTC) that `as_utc` takes."""


def blank_or_printable(max_chars: int) -> str:
    """Whitespace only (`str.strip()`'s: read as missing), or up to `max_chars` printable characters."""
    return rf"^(?:[{PYTHON_SPACE}]*|{PRINTABLE}{{0,{max_chars}}})$"


def printable_not_blank() -> str:
    """Printable characters, not all of them whitespace (`str.strip()`'s)."""
    return rf"^{PRINTABLE}*[^\x00-\x20\x7f{NON_ASCII_SPACE}]{PRINTABLE}*$"


def identifier_names(words: Iterable[str], names: Iterable[str], phrases: Iterable[str]) -> str:
    """The names `fields.identifier_name` flags, which lowers a name, turns each run of characters
    other than a-z and 0-9 into `_`, strips `_` and looks for a word, a whole name or a phrase. Two
    characters lower into ASCII: the Kelvin sign (k), a letter; and the dotted capital I (i and a
    combining dot), a letter before and a separator after."""

    def spelled(word: str, separator: str) -> str:
        return "".join(f"[{c}{c.upper()}]" if c.isalpha() else separator for c in word)

    letter = r"a-zA-Z0-9\u212a"
    before = rf"(?:^|[^{letter}])"
    after = rf"(?:[^{letter}\u0130]|$)"
    separator = rf"[^{letter}\u0130]"
    alternatives = [rf"{before}(?:{'|'.join(spelled(w, '') for w in sorted(words))}){after}"]
    alternatives += [rf"^{separator}*{spelled(n, separator + '+')}{separator}*$" for n in sorted(names)]
    alternatives += [spelled(p, separator + "+") for p in sorted(phrases)]
    return "|".join(alternatives)
