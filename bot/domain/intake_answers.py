"""What a client's answer to an intake question means (SPEC §3): pure parsing, no state.

`bot.domain.intake` holds the conversation (which question is asked, what is kept, what
happens next); this module only reads one answer: which category or channel it names, whether
it says yes, no or skip, which part of the request the client wants to change, the LimeSurvey
instance it describes and the e-mail address it contains. The choices offered (`CATEGORIES`,
`CHANNELS`) live here because the words that name them do. Nothing here knows the steps.

Decisions
---------
* **Answers** are compared after normalisation (case, accents, emoji variation selectors,
  surrounding punctuation such as "2." or "2)" removed), against the number, the key and a few
  French and English words. Typed text only: bridged rooms have no reactions, and the shell maps
  a ✅ reaction at the summary to the text "yes".
* **Messaging** also accepts "e-mail"/"courriel": the terms define messaging assistance as
  "chat or e-mail" (R3).
* **Instance.** A full http(s) URL with a host is required (a bare host gets a hint with the
  URL to send), optionally a version (`6.4.2`, `5.x`, `6.4.2+240129`, `6`) and a survey ID (4–10
  digits, also found in the URL's `sid` parameter or `/index.php/123456`). Words without digits
  ("version", "my instance is") are ignored; a token with digits that fits nothing is reported.
* **E-mail.** Exactly one address in the message, validated by `email-validator` (syntax
  only, no DNS: this module stays pure) and stored in its normalised form: domain lower-cased
  and in Unicode (`jean@exämple.org`, also for `jean@xn--exmple-cua.org`), local part as
  written (NFC) except role names (`Postmaster` → `postmaster`). Internationalised local parts
  (`élise@…`) are accepted: `bot.mail` sends to the ASCII form when there is one and otherwise
  leaves it to the server's SMTPUTF8. Invisible characters (a zero-width space, a variation
  selector, a non-breaking space) are refused rather than dropped: what is stored is what the
  client sees. Special-use domains (`.test`, `.local`, `.invalid`, …) cannot receive mail.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from itertools import pairwise
from typing import NamedTuple, TypeVar
from urllib.parse import parse_qs, urlsplit

from email_validator import EmailNotValidError, validate_email

from bot.i18n import N_, Msg

__all__ = [
    "CATEGORIES",
    "CHANNELS",
    "Choice",
    "InstanceInfo",
    "begins_with_no",
    "choice_by_key",
    "choice_lines",
    "edit_target",
    "extract_email",
    "is_about_ticket",
    "is_no",
    "is_skip",
    "is_yes",
    "parse_instance",
    "pick_category",
    "pick_channel",
    "wants_new_request",
    "word_index",
]

_K = TypeVar("_K")

# -- the choices and the words that name them --------------------------------------------


class Choice(NamedTuple):
    """One numbered answer: its number, its stored key and its English label (a msgid)."""

    number: int
    key: str
    label: str


CATEGORIES: tuple[Choice, ...] = (
    Choice(1, "configuration", N_("LimeSurvey configuration")),
    Choice(2, "expressions", N_("Expressions, quotas, assessments…")),
    Choice(3, "javascript", N_("JavaScript on questions or pages")),
    Choice(4, "theme", N_("Survey theme: CSS, HTML, JavaScript")),
    Choice(5, "data", N_("Data import, invitations, invitation e-mails, reminders, bounces")),
    Choice(6, "install-theme", N_("Installing a survey or question theme")),
    Choice(7, "plugin", N_("Installing and configuring an existing plugin")),
    Choice(8, "usage", N_("Using LimeSurvey's features for a precise problem")),
    Choice(9, "feasibility", N_("Is this feasible with LimeSurvey?")),
    Choice(10, "other", N_("Other: development, training, project")),
)

CHANNELS: tuple[Choice, ...] = (
    Choice(1, "messaging", N_("Messaging: chat here or e-mail")),
    Choice(2, "video", N_("Video call (45 minutes, by appointment)")),
    Choice(3, "phone", N_("Phone call (45 minutes, by appointment)")),
    Choice(4, "intervention", N_("Intervention: we do the work on your LimeSurvey")),
)

# Extra words accepted besides the number and the key (written as typed; normalised below).
_CATEGORY_WORDS: Mapping[str, tuple[str, ...]] = {
    "configuration": (
        "config",
        "paramétrage",
        "réglages",
        "settings",
        "configuration de limesurvey",
    ),
    "expressions": (
        "expression",
        "expression manager",
        "quotas",
        "quota",
        "assessments",
        "assessment",
        "évaluations",
        "évaluation",
        "conditions",
    ),
    "javascript": ("js",),
    "theme": ("thème", "survey theme", "thème du questionnaire", "css", "html"),
    "data": (
        "données",
        "import",
        "invitations",
        "invitation",
        "reminders",
        "relances",
        "participants",
        "bounces",
    ),
    "install-theme": (
        "installtheme",
        "install a theme",
        "installer un thème",
        "installation de thème",
        "installation d'un thème",
        "theme installation",
    ),
    "plugin": ("plugins", "extension", "extensions", "greffon"),
    "usage": ("utilisation", "use", "features", "fonctionnalités"),
    "feasibility": ("faisabilité", "feasible", "faisable"),
    "other": ("autre", "autres", "development", "développement", "training", "formation"),
}

_CHANNEL_WORDS: Mapping[str, tuple[str, ...]] = {
    "messaging": (
        "messagerie",
        "message",
        "messages",
        "chat",
        "tchat",
        "écrit",
        "par écrit",
        "written",
        "email",
        "e-mail",
        "mail",
        "courriel",
        "par e-mail",
        "by e-mail",
    ),
    "video": (
        "vidéo",
        "visio",
        "visioconférence",
        "videoconference",
        "video call",
        "appel vidéo",
    ),
    "phone": ("téléphone", "tel", "tél", "phone call", "appel téléphonique", "appel"),
    "intervention": ("remote intervention", "intervention à distance"),
}

_YES_WORDS = frozenset(
    {"yes", "y", "oui", "o", "ok", "okay", "yep", "ouais", "d'accord", "confirm", "je confirme"}
    | {"✅", "✔", "☑", "👍"}
)
_NO_WORDS = frozenset({"no", "n", "non", "nope", "❌", "✖", "👎"})
_SKIP = frozenset({"!skip", "!passer", "skip", "passer"})

_RELATED_EXISTING_WORDS = frozenset(
    {"1", "same", "same problem", "existing", "même", "même problème", "ce ticket", "this ticket"}
)
_RELATED_NEW_WORDS = frozenset(
    {
        "2",
        "new",
        "new problem",
        "new request",
        "another problem",
        "nouveau",
        "nouvelle",
        "nouveau problème",
        "nouvelle demande",
        "autre problème",
    }
)

# Words around a step name ("non, le canal", "change the e-mail") that carry no choice.
_EDIT_FILLER_WORDS = frozenset(
    {"no", "non", "change", "changer", "modifier", "edit", "the", "le", "la", "l", "my", "mon"}
    | {"ma", "step", "étape", "please", "svp", "stp", "merci", "thanks", "je", "veux", "i"}
    | {"want", "to", "du", "de"}
)


def choice_lines(choices: Iterable[Choice]) -> tuple[Msg, ...]:
    """The choices as offered: each line shows the number and the key `pick_*` accept."""
    # The translator renders a tuple parameter one item per line.
    return tuple(_choice_line(choice) for choice in choices)


def _choice_line(choice: Choice) -> Msg:
    # Translators: one line of a numbered list, e.g. "2. Video call (video)".
    return Msg(
        N_("{number}. {label} ({key})"),
        {"number": str(choice.number), "label": Msg(choice.label), "key": choice.key},
    )


def choice_by_key(choices: Iterable[Choice], key: str | None) -> Choice | None:
    return next((choice for choice in choices if choice.key == key), None)


# -- short answers -----------------------------------------------------------------------

_DROPPED = frozenset({"Mn", "Me", "Cf", "Sk"})  # accents, keycaps, emoji selectors, skin tones
_MAX_ANSWER = 200  # longer texts are never short answers (and stay cheap to look at)


def _norm(text: str) -> str:
    """A short answer as compared: case, accents, emoji selectors gone, punctuation as spaces.

    "2.", "(2)" and "2️⃣" all become "2"; "E-mail" becomes "e mail"; "Vidéo !" becomes "video".
    A text longer than `_MAX_ANSWER` gives "" (it matches no answer).
    """
    if len(text) > _MAX_ANSWER:
        return ""
    chars = []
    for ch in unicodedata.normalize("NFKD", text.casefold()):
        category = unicodedata.category(ch)
        if category in _DROPPED:
            continue
        chars.append(" " if category.startswith("P") else ch)
    return " ".join("".join(chars).split())


def word_index(words: Mapping[_K, Iterable[str]]) -> dict[str, _K]:
    """Each normalised word → the choice it names; a word naming two choices is a bug."""
    index: dict[str, _K] = {}
    for target, names in words.items():
        for word in names:
            if index.setdefault(_norm(word), target) != target:
                raise ValueError(f"answer {word!r} is ambiguous")
    return index


def _choice_index(
    choices: Iterable[Choice], words: Mapping[str, tuple[str, ...]]
) -> dict[str, str]:
    return word_index(
        {choice.key: (choice.key, choice.label, *words.get(choice.key, ())) for choice in choices}
    )


_CATEGORY_INDEX = _choice_index(CATEGORIES, _CATEGORY_WORDS)
_CHANNEL_INDEX = _choice_index(CHANNELS, _CHANNEL_WORDS)
_YES = frozenset(_norm(word) for word in _YES_WORDS)
_NO = frozenset(_norm(word) for word in _NO_WORDS)
_RELATED_EXISTING = frozenset(_norm(word) for word in _RELATED_EXISTING_WORDS)
_RELATED_NEW = frozenset(_norm(word) for word in _RELATED_NEW_WORDS)
_EDIT_FILLER = frozenset(_norm(word) for word in _EDIT_FILLER_WORDS)
_NUMBERED = re.compile(r"(\d{1,2}) (\D.*)")


def pick_category(text: str) -> str | None:
    """The key of the category `text` names, None if it names none."""
    return _pick(text, _CATEGORY_INDEX, CATEGORIES)


def pick_channel(text: str) -> str | None:
    """The key of the channel `text` names, None if it names none."""
    return _pick(text, _CHANNEL_INDEX, CHANNELS)


def _pick(text: str, index: Mapping[str, str], choices: Iterable[Choice]) -> str | None:
    """The key a client's answer names: "2", "2.", "vidéo", "2. Vidéo"; None if unclear."""
    answer = _norm(text)
    if not answer:
        return None
    by_number = {str(choice.number): choice.key for choice in choices}
    if answer.isdecimal():
        return by_number.get(str(int(answer))) if len(answer) <= 3 else None
    if answer in index:
        return index[answer]
    numbered = _NUMBERED.fullmatch(answer)
    if numbered and numbered.group(1).isascii():
        key = by_number.get(str(int(numbered.group(1))))
        if key is not None and index.get(numbered.group(2)) == key:
            return key
    return None


def is_yes(text: str) -> bool:
    return _norm(text) in _YES


def is_no(text: str) -> bool:
    return _norm(text) in _NO


def begins_with_no(text: str) -> bool:
    """A refusal, maybe with more to say: "no", "non merci", "no, the e-mail is wrong"."""
    return _norm(text).split(" ", 1)[0] in _NO


def is_skip(text: str) -> bool:
    """`!skip` or "passer" (with or without the "!"), ignoring case only."""
    return text.casefold() in _SKIP


def is_about_ticket(text: str, ref: str) -> bool:
    """The client says the held message belongs to their open ticket `ref` ("1", "same", ref)."""
    answer = _norm(text)
    return answer in _RELATED_EXISTING or bool(ref and answer == _norm(ref))


def wants_new_request(text: str) -> bool:
    """The client says the held message is a new problem ("2", "new", "nouveau problème")."""
    return _norm(text) in _RELATED_NEW


def edit_target(text: str, index: Mapping[str, _K], *, numbers: bool) -> _K | None:
    """The part named in "non, le canal" or "change the e-mail": `index` (from `word_index`)
    looked up once filler words are dropped; a bare number counts only if `numbers`."""
    words = [word for word in _norm(text).split(" ") if word not in _EDIT_FILLER]
    name = " ".join(words)
    if not name or (name.isdecimal() and not numbers):
        return None
    return index.get(name)


# -- the LimeSurvey instance and the e-mail address --------------------------------------


@dataclass(frozen=True, slots=True)
class InstanceInfo:
    """Where the client's LimeSurvey is, and what they know of it."""

    url: str
    version: str | None = None
    survey_id: str | None = None


_VERSION = re.compile(r"v?([0-9]{1,2}(?:\.(?:[0-9]{1,3}|x)){0,3})(\+[0-9]{4,})?", re.IGNORECASE)
_SURVEY_ID = re.compile(r"(?:sid|surveyid|id)?[:=#]?([0-9]{4,10})", re.IGNORECASE)
_BARE_HOST = re.compile(r"(?:www\.)?[\w-]+(?:\.[\w-]+)*\.[^\W\d_]{2,}(?:[/:?#]\S*)?")
_HOST_LABEL = re.compile(r"(?!-)[\w-]{1,63}(?<!-)")
_TOKEN_EDGE = "<>()[]{}\"'«»“”,;"
_MAX_URL = 2_000


def parse_instance(text: str) -> InstanceInfo | Msg:
    """`https://survey.example.org 6.4.1 123456` → InstanceInfo; a `Msg` saying what is wrong.

    Words without digits are ignored, so "my LimeSurvey is https://… version 6" works.
    """
    url: str | None = None
    version: str | None = None
    survey_id: str | None = None
    bare_host: str | None = None
    previous = ""
    for raw in text.split():
        token = raw.strip(_TOKEN_EDGE).rstrip(".:!?").strip(_TOKEN_EDGE)
        if not token:
            continue
        word, previous = previous, token.casefold()
        if token.casefold().startswith(("http://", "https://")):
            if url is not None:
                return Msg(N_("Please send only one address."))
            url = _valid_url(token)
            if url is None:
                return Msg(
                    N_("That address does not look right: it needs a host name after https://.")
                )
            continue
        if not any(ch.isdigit() for ch in token):
            if bare_host is None and _BARE_HOST.fullmatch(token):
                bare_host = token
            continue
        if word == "build" and token.isascii() and token.isdigit():
            continue  # "6.4.2 (Build 240129)": part of the version already given
        matched_version = _VERSION.fullmatch(token)
        if matched_version:
            if version is not None:
                return Msg(N_("Please give only one version."))
            version = matched_version.group(1).lower() + (matched_version.group(2) or "")
            continue
        matched_id = _SURVEY_ID.fullmatch(token)
        if matched_id:
            if survey_id is not None:
                return Msg(
                    N_(
                        "Please give only one survey ID, the one concerned (you can mention "
                        "others in the description)."
                    )
                )
            survey_id = matched_id.group(1)
            continue
        if bare_host is None and _BARE_HOST.fullmatch(token):
            bare_host = token
            continue
        return Msg(
            N_(
                "I could not read \u201c{token}\u201d: a version looks like 6.4.2 and a survey "
                "ID is a number of 4 to 10 digits."
            ),
            {"token": token[:40]},
        )
    if url is None:
        if bare_host is not None:
            return Msg(
                N_("Please write the full address, starting with https:// (for example {url})."),
                {"url": "https://" + bare_host[:200]},
            )
        return Msg(N_("I need the address of your LimeSurvey, starting with https://."))
    return InstanceInfo(url, version, survey_id or _survey_id_in(url))


def _valid_url(token: str) -> str | None:
    if len(token) > _MAX_URL:
        return None
    try:
        parts = urlsplit(token)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not host:
        return None
    if ":" not in host:  # not IPv6: a dotted name or localhost
        labels = host.rstrip(".").split(".")
        if not all(_HOST_LABEL.fullmatch(label) for label in labels):
            return None
        if len(labels) < 2 and host != "localhost":
            return None
    return token


def _survey_id_in(url: str) -> str | None:
    """LimeSurvey puts the survey ID in `?sid=`/`?surveyid=` or after `index.php/`."""
    parts = urlsplit(url)
    for key, values in parse_qs(parts.query).items():
        if key.lower() in ("sid", "surveyid"):
            for value in values:
                if value.isascii() and value.isdigit() and 4 <= len(value) <= 10:
                    return value
    segments = [segment for segment in parts.path.split("/") if segment]
    for before, segment in pairwise(segments):
        if (
            before.lower() in ("index.php", "sid", "surveyid")
            and segment.isascii()
            and segment.isdigit()
            and 4 <= len(segment) <= 10
        ):
            return segment
    return None


# Characters that show nothing or only a blank: control and format characters (Cc, Cf: the
# zero-width space U+200B, joiners, direction marks), other unassigned/private/surrogate code
# points, every separator (Z*: a non-breaking space looks like a space), and the default-
# ignorable marks and letters outside those categories (variation selectors, the combining
# grapheme joiner, Mongolian selectors, Hangul fillers). IDNA would silently drop some of them.
_INVISIBLE_CATEGORIES = frozenset({"Cc", "Cf", "Cn", "Co", "Cs", "Zl", "Zp", "Zs"})
_INVISIBLE_RANGES = (
    (0x034F, 0x034F),
    (0x115F, 0x1160),
    (0x180B, 0x180F),
    (0x3164, 0x3164),
    (0xFE00, 0xFE0F),
    (0xFFA0, 0xFFA0),
    (0xE0100, 0xE01EF),
)


def _has_invisible(text: str) -> bool:
    return any(
        unicodedata.category(char) in _INVISIBLE_CATEGORIES
        or any(low <= ord(char) <= high for low, high in _INVISIBLE_RANGES)
        for char in text
    )


def extract_email(text: str) -> str | None:
    """The one e-mail address in `text` ("mine is bob@example.org"), normalised; else None.

    The candidate is the one word containing "@" (without surrounding brackets, quotes,
    final punctuation or `mailto:`); `email_validator` checks it (no DNS) and gives its
    normalised form. Beyond that: no invisible character, and a top-level label of at least
    two letters in whatever script ("fr", "рф"), as every top-level domain has.
    """
    if len(text) > 1_000:
        return None
    candidates = [
        token.strip(_TOKEN_EDGE).rstrip(".:!?").strip(_TOKEN_EDGE)
        for token in text.split()
        if "@" in token
    ]
    if len(candidates) != 1:
        return None
    address = candidates[0]
    if address.lower().startswith("mailto:"):
        address = address[len("mailto:") :]
    if _has_invisible(address):
        return None
    try:
        valid = validate_email(address, check_deliverability=False)
    except EmailNotValidError:
        return None
    top = valid.domain.rsplit(".", 1)[-1]
    if len(top) < 2 or not top.isalpha():
        return None
    return valid.normalized
