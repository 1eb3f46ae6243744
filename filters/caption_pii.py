"""Personal data in captions: e-mail addresses, phone numbers, card numbers, IP addresses.

Runs before the download (it needs only the caption).  Kinds it can find
(`kinds` selects which count; the default leaves out the last two):

* `email`: `name@example.com`, and the bracketed spellings `name [at]
  example [dot] com` / `name(at)example.com`.  Not `logo@2x.png` (an image
  file name).
* `phone`: international numbers (`+` or `00` and a country code, 8-15
  digits); North American `(212) 555-0100` / `212-555-0100` / `1-800-555-0199`;
  national numbers with a trunk 0 split into groups (`020 7946 0958`,
  `030/1234567`, `01 23 45 67 89`, `03-1234-5678`); and anything of 7-15
  digits right after a phone word (`Tel.`, `phone`, `call`, `Telefon`,
  `телефон`, `电话`, `전화`, `☎`, ...).  Never a date (`2023-01-15`,
  `15.01.2023`), an amount (`$1,299`, `1 234 567 €`, space- or
  dot-thousands), a size (`1920x1080`, `300 mm`), a time, or an ISBN
  (`ISBN 0-306-40615-2`, or any number whose last group is one digit).
* `credit_card`: 13-19 digits, unseparated or in the usual groups (4-4-4-4,
  4-6-5), with a card network's prefix and a valid Luhn check digit.
* `ip`: IPv4 (not after `v`/`version`/`build`, where it is a version) and IPv6
  (validated by `ipaddress`, at least 4 hex digits).
* `url_userinfo`: a URL with credentials, `https://user:secret@host/...`
  (the whole URL is the span).
* `iban`: an IBAN with a valid mod-97 check (`DE89 3704 0044 0532 0130 00`).

Overlapping finds keep the kind listed first above (url_userinfo, email,
iban, credit_card, ip, phone), so a card number is never also a phone.

Actions: `redact` replaces each span in the caption with
`replacement.format(kind=...)`; `drop` drops the sample as `caption_pii`
(its caption is redacted too, so the rejects file holds no personal data);
`tag` only records.  Field `pii_found`: kind:count pairs, comma-separated, in
the order above (`"email:1,phone:2"`), or `""` when none.
"""
from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, NamedTuple

from pipeline.core.stage import Filter, Needs
from pipeline.core.params import ParamError
from pipeline.core.registry import register
from pipeline.core.records import KEEP, Sample, Verdict, drop

KINDS = ("url_userinfo", "email", "iban", "credit_card", "ip", "phone")  # also the overlap priority


class Span(NamedTuple):
    start: int
    end: int
    kind: str


@register
class CaptionPii(Filter):
    name = "caption_pii"
    NEEDS = Needs(image=False)

    @dataclass(frozen=True)
    class Params:
        action: Literal["redact", "drop", "tag"] = "redact"  # redact the spans, drop the sample, or only record
        kinds: tuple[str, ...] = ("email", "phone", "credit_card", "ip")  # also url_userinfo, iban
        replacement: str = "<{kind}>"  # what a redacted span becomes; {kind} is its kind

        def __post_init__(self):
            unknown = sorted(set(self.kinds) - set(KINDS))
            if unknown or not self.kinds:
                raise ParamError(f"caption_pii.kinds: {unknown or 'none given'}; choose from {', '.join(KINDS)}")
            try:
                self.replacement.format(kind="email")
            except (KeyError, IndexError, ValueError) as err:
                raise ParamError(
                    f"caption_pii.replacement {self.replacement!r}: only the field {{kind}} may be used ({err})"
                ) from None

    def score_one(self, sample: Sample) -> None:
        caption = sample.caption or ""
        spans = find_pii(caption, self.params.kinds)
        sample.fields["pii_found"] = summary(spans)
        if spans and self.params.action != "tag":
            sample.caption = redact(caption, spans, self.params.replacement)

    def keep(self, sample: Sample) -> Verdict:
        if self.params.action == "drop" and sample.fields.get("pii_found"):
            return drop("caption_pii")
        return KEEP


def find_pii(text: str, kinds: tuple[str, ...] = KINDS) -> list[Span]:
    """Non-overlapping spans of the selected kinds, in text order."""
    if not _WORTH_A_LOOK.search(text):
        return []
    # Every kind is looked for, so that e.g. a card number is not taken for a
    # phone number when only phones are selected.
    taken: list[Span] = []
    for kind in KINDS:
        for start, end in _FINDERS[kind](text):
            if not any(start < other.end and other.start < end for other in taken):
                taken.append(Span(start, end, kind))
    return sorted(span for span in taken if span.kind in kinds)


def redact(text: str, spans: list[Span], replacement: str) -> str:
    pieces, position = [], 0
    for span in spans:
        pieces += [text[position : span.start], replacement.format(kind=span.kind)]
        position = span.end
    return "".join(pieces) + text[position:]


def summary(spans: list[Span]) -> str:
    counts = {kind: sum(span.kind == kind for span in spans) for kind in KINDS}
    return ",".join(f"{kind}:{count}" for kind, count in counts.items() if count)


# Nothing to find without a digit, an @ or a bracketed "at".
_WORTH_A_LOOK = re.compile(r"[\d@]|[\[({<]\s*at\s*[\])}>]", re.IGNORECASE)

# ASCII letters and digits: a match must not continue a longer token.  (Not
# \w, which also covers CJK, written without spaces before a number or address.)
_ALNUM = "A-Za-z0-9"
_LETTER = r"A-Za-z\u00C0-\u024F\u0370-\u03FF\u0400-\u04FF"  # Latin, Greek, Cyrillic


# E-mail -------------------------------------------------------------------------

_AT = r"(?:@|\s*[\[({<]\s*at\s*[\])}>]\s*)"
_DOT = r"(?:\.|\s*[\[({<]\s*dot\s*[\])}>]\s*)"
_EMAIL = re.compile(
    rf"(?<![{_ALNUM}._%+\-])[{_ALNUM}][{_ALNUM}._%+\-]*{_AT}"
    rf"(?:[{_ALNUM}](?:[{_ALNUM}\-]{{0,61}}[{_ALNUM}])?{_DOT})+(?P<tld>[A-Za-z]{{2,24}})(?![{_ALNUM}\-])",
    re.IGNORECASE,
)
_IMAGE_EXTENSIONS = frozenset(("png", "jpg", "jpeg", "gif", "webp", "svg", "bmp", "tif", "tiff", "avif", "heic", "ico"))  # logo@2x.png


def _emails(text: str) -> Iterator[tuple[int, int]]:
    for match in _EMAIL.finditer(text):
        if match["tld"].lower() not in _IMAGE_EXTENSIONS:
            yield match.span()


# URL with credentials -----------------------------------------------------------

_URL_USERINFO = re.compile(r"(?<![A-Za-z0-9+.\-])[A-Za-z][A-Za-z0-9+.\-]*://[^\s/?#@]+@[^\s/?#@]+[^\s]*")


def _urls_with_userinfo(text: str) -> Iterator[tuple[int, int]]:
    for match in _URL_USERINFO.finditer(text):
        yield match.start(), match.start() + len(match[0].rstrip(".,;:!?)]}'\""))


# IBAN ---------------------------------------------------------------------------

_IBAN = re.compile(rf"(?<![{_ALNUM}])[A-Z]{{2}}\d{{2}}(?: ?[A-Z0-9]{{4}}){{2,7}}(?: ?[A-Z0-9]{{1,3}})?(?![{_ALNUM}])")


def _ibans(text: str) -> Iterator[tuple[int, int]]:
    for match in _IBAN.finditer(text):
        if _iban_checks(match[0].replace(" ", "")):
            yield match.span()


def _iban_checks(iban: str) -> bool:
    if not 15 <= len(iban) <= 34:
        return False
    rearranged = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


# Payment card -------------------------------------------------------------------

_CARD = re.compile(r"(?<![\d+\-.,/])(?:\d[ \-]?){12,18}\d(?![\d\-]|[.,]\d)")
# Visa, Mastercard (51-55, 22-27), Amex, Diners, Discover, JCB, UnionPay, Mir.
_CARD_PREFIX = re.compile(r"4|5[1-5]|2[2-7]|3[47]|3[0689]|35|6011|64[4-9]|65|62")


def _cards(text: str) -> Iterator[tuple[int, int]]:
    for match in _CARD.finditer(text):
        groups = re.split(r"[ \-]", match[0])
        digits = "".join(groups)
        if len(set(re.findall(r"[ \-]", match[0]))) > 1:
            continue  # mixed separators: not how card numbers are written
        if _card_grouping(groups) and _CARD_PREFIX.match(digits) and _luhn(digits):
            yield match.span()


def _card_grouping(groups: list[str]) -> bool:
    sizes = [len(group) for group in groups]
    if len(sizes) == 1:
        return True
    fours = all(size == 4 for size in sizes[:-1]) and 1 <= sizes[-1] <= 4
    return fours or sizes in ([4, 6, 5], [4, 6, 4])


def _luhn(digits: str) -> bool:
    total = 0
    for position, char in enumerate(reversed(digits)):
        value = int(char) * (2 if position % 2 else 1)
        total += value - 9 if value > 9 else value
    return total % 10 == 0


# IP address ---------------------------------------------------------------------

_OCTET = r"(?:25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)"
_IPV4 = re.compile(rf"(?<![{_ALNUM}_.])(?:{_OCTET}\.){{3}}{_OCTET}(?![{_ALNUM}_]|\.\d)")
_VERSION_BEFORE = re.compile(r"(?:\bversion|\bver\.?|\bv\.?|\bbuild|\brelease|\bfirmware|\brev\.?)\s*$", re.IGNORECASE)
_IPV6 = re.compile(rf"(?<![{_ALNUM}:])(?:[0-9A-Fa-f]{{0,4}}:){{2,7}}[0-9A-Fa-f]{{0,4}}(?![{_ALNUM}:])")


def _ips(text: str) -> Iterator[tuple[int, int]]:
    for match in _IPV4.finditer(text):
        if not _VERSION_BEFORE.search(text, max(0, match.start() - 12), match.start()):
            yield match.span()
    for match in _IPV6.finditer(text):
        if sum(c not in ":" for c in match[0]) >= 4 and _is_ipv6(match[0]):
            yield match.span()


def _is_ipv6(candidate: str) -> bool:
    try:
        ipaddress.IPv6Address(candidate)
    except ValueError:
        return False
    return True


# Phone number -------------------------------------------------------------------

MAX_PHONE_CHARS = 32  # longer than any written phone number; bounds the work on long digit runs
# Digits joined by up to three separator characters: a candidate, checked below.
_PHONE_RUN = re.compile(r"\+?\(?\d(?:[ \u00a0.\-/()\u2013]{0,3}\d)*\)?")
_SEPARATOR = re.compile(r"\)?[ \u00a0]?[\-./\u2013]?[ \u00a0]?\(?")
_PHONE_WORD = re.compile(
    r"(?:\b(?:tel|t[ée]l[ée]phone|phone|ph|mobile|mob|cell|call|dial|fax|whats ?app|contact|hotline|telefon\w*"
    r"|tel[eé]fono|telefone|portable|handy|celular|m[oó]vil|telefoonnummer|телефон|тел)\b"
    r"|电话|電話|手机|手機|联系|聯繫|携帯|전화|연락처|☎|📞|✆)[^\d]{0,12}$",
    re.IGNORECASE,
)
_ISBN_BEFORE = re.compile(r"\bISBN(?:-?1[03])?:?\s*$", re.IGNORECASE)
# Words that introduce codes, not phone numbers (unless a phone word follows them: "Tel. No.").
_CODE_WORD_BEFORE = re.compile(
    r"\b(?:sku|serial|s/n|sn|order|ref|art|item|model|part|id|no|nr|invoice|ean|upc|gtin|lot|batch)\b[^\d\w]{0,6}$",
    re.IGNORECASE,
)
_DATE = re.compile(
    r"(?<!\d)(?:\d{1,2}[./\-]\d{1,2}[./\-](?:19|20)\d\d|(?:19|20)\d\d[./\-]\d{1,2}[./\-]\d{1,2})(?!\d)"
)
_BAD_BEFORE = re.compile(rf"(?:[{_LETTER}0-9_#$€£¥₹]|[{_ALNUM}][\-/])$")
_BAD_AFTER = re.compile(
    rf"^(?:[{_LETTER}0-9@%$€£¥₹×]|[.,:]\d"
    r"|\s?(?:px|mm|cm|km|m|kg|g|mb|gb|kb|usd|eur|euros?|dollars?|gbp|jpy|cny|rub|руб|円|元|원|€|\$)(?![A-Za-z]))",
    re.IGNORECASE,
)


def _phones(text: str) -> Iterator[tuple[int, int]]:
    for match in _PHONE_RUN.finditer(text):
        span = _phone_in_run(text, *_balanced(match[0], match.start()))
        if span:
            yield span


def _balanced(run: str, start: int) -> tuple[int, int]:
    """The run without an unmatched leading "(" or trailing ")"."""
    end = start + len(run)
    if run.count("(") < run.count(")") and run.endswith(")"):
        end -= 1
    elif run.count("(") > run.count(")") and run.startswith("("):
        start += 1
    return start, end


def _phone_in_run(text: str, start: int, end: int) -> tuple[int, int] | None:
    """The run as a phone number, else its longest tail after a space (a year or count may come first)."""
    if _BAD_AFTER.search(text[end : end + 12]):
        return None
    starts = [start] + [start + m.end() for m in re.finditer(r"[ \u00a0](?=\+?\(?\d)", text[start:end])]
    for tail_start in (s for s in starts if end - s <= MAX_PHONE_CHARS):
        if _is_phone(text, tail_start, end):
            return tail_start, end
    return None


def _is_phone(text: str, start: int, end: int) -> bool:
    candidate = text[start:end]
    before = text[max(0, start - 25) : start]
    if _BAD_BEFORE.search(before) or _ISBN_BEFORE.search(before) or _DATE.search(candidate):
        return False
    phone_word = _PHONE_WORD.search(before) is not None
    if _CODE_WORD_BEFORE.search(before) and not phone_word:
        return False
    groups = re.findall(r"\d+", candidate)
    separators = re.findall(r"\D+", candidate.lstrip("+("))
    if not all(_SEPARATOR.fullmatch(s) for s in separators):
        return False
    digits = "".join(groups)
    if len(set(digits)) == 1:
        return False
    if candidate.startswith("+"):
        return 8 <= len(digits) <= 15 and digits[0] != "0"
    if len(groups) > 1 and (len(groups[-1]) == 1 or _thousands(groups, separators)):
        return False  # an ISBN-10 check digit, or an amount
    if re.match(r"00[1-9]", digits) and len(groups) > 1:
        return 10 <= len(digits) <= 17
    if _north_american(groups) or _national_with_trunk_zero(groups, digits):
        return True
    return phone_word and 7 <= len(digits) <= 15


def _thousands(groups: list[str], separators: list[str]) -> bool:
    """1 234 567 or 1.234.567: one separator, groups of three after the first."""
    return (
        len(set(separators)) == 1
        and separators[0] in (" ", ".", "\u00a0")
        and len(groups[0]) <= 3
        and not groups[0].startswith("0")
        and all(len(group) == 3 for group in groups[1:])
    )


def _north_american(groups: list[str]) -> bool:
    if len(groups) == 4 and groups[0] == "1":
        groups = groups[1:]
    return [len(g) for g in groups] == [3, 3, 4] and groups[0][0] in "23456789" and groups[1][0] in "23456789"


def _national_with_trunk_zero(groups: list[str], digits: str) -> bool:
    return (
        re.match(r"0[1-9]", digits) is not None
        and 10 <= len(digits) <= 11
        and len(groups) > 1
        and 2 <= len(groups[0]) <= 5
        and all(len(group) >= 2 for group in groups)
    )


_FINDERS = {
    "url_userinfo": _urls_with_userinfo,
    "email": _emails,
    "iban": _ibans,
    "credit_card": _cards,
    "ip": _ips,
    "phone": _phones,
}
