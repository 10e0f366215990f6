"""HTML of the confirmation pages: small, self-contained, readable on a phone.

No external asset (the Content-Security-Policy forbids them): the CSS is inline and there is
no script. Every value, translated text included, goes through `html.escape`. The rule texts
the page quotes (`CONFIRMATION_RULE`, `RULE_INTRO`, `LINK_EXPIRY`) are the consent e-mail's
too: they belong to `bot.consent`, which decides what a link shows.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from zoneinfo import ZoneInfo

from babel import Locale

from bot.consent import (
    CONFIRMATION_RULE,
    LINK_EXPIRY,
    RULE_INTRO,
    Confirmed,
    ConsentProblem,
    ConsentView,
)
from bot.domain.intake import CATEGORIES
from bot.i18n import N_, NP_, Msg, Translator
from bot.rules import format_duration

__all__ = [
    "CSRF_FIELD",
    "consent_page",
    "forbidden_page",
    "problem_page",
    "success_page",
]

#: The form field carrying the CSRF value.
CSRF_FIELD = "csrf"

_CATEGORY_LABELS = {choice.key: choice.label for choice in CATEGORIES}
_ESTIMATE = NP_("{duration}, that is {n} ticket", "{duration}, that is {n} tickets")
_AGREE = NP_(
    "By confirming, you agree that the support team carries out this intervention for up to "
    "{n} ticket. If the work turns out to need more, you will be asked again.",
    "By confirming, you agree that the support team carries out this intervention for up to "
    "{n} tickets. If the work turns out to need more, you will be asked again.",
)
_CONFIRMED = NP_(
    "Thank you: intervention {ref} is confirmed for {n} ticket.",
    "Thank you: intervention {ref} is confirmed for {n} tickets.",
)
_NOTHING_CHANGED = N_("Nothing has been changed.")

_PROBLEMS: dict[str, tuple[str, str]] = {
    "unknown": (
        N_("Link not recognised"),
        N_(
            "This confirmation link is not valid. Check that you opened the whole link from "
            "the e-mail, or ask for a new one in the support room."
        ),
    ),
    "expired": (
        N_("Link expired"),
        N_(
            "This confirmation link for {ref} expired on {expires_at}. Ask for a new one in "
            "the support room."
        ),
    ),
    "used": (
        N_("Already confirmed"),
        N_(
            "This link has already been used: intervention {ref} was confirmed on {used_at}. "
            "There is nothing more to do."
        ),
    ),
    "superseded": (
        N_("Link replaced"),
        N_(
            "This link for {ref} is no longer valid: the estimate has changed since it was "
            "sent. If your confirmation is needed, use the link of the most recent e-mail."
        ),
    ),
    "not_waiting": (
        N_("Nothing to confirm"),
        N_("Intervention {ref} no longer waits for your confirmation."),
    ),
}

_STYLE = """
*{box-sizing:border-box}
body{margin:0;font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;
color:#1b1b1b;background:#f4f5f7}
main{max-width:36rem;margin:0 auto;padding:1.25rem 1rem 2rem}
h1{font-size:1.4rem;line-height:1.25;margin:.5rem 0 1rem}
.card{background:#fff;border:1px solid #d9dce1;border-radius:10px;padding:1rem 1.1rem;
margin:0 0 1rem}
dl{margin:0}dt{font-weight:600;color:#4a4f57;font-size:.9rem;margin-top:.6rem}
dt:first-child{margin-top:0}dd{margin:0;overflow-wrap:anywhere}
.ref-nowrap{white-space:nowrap}
.ref{font-family:ui-monospace,Menlo,Consolas,monospace;font-size:1.05rem}
.estimate{font-size:1.15rem;font-weight:700}
blockquote{margin:.4rem 0 0;padding:.6rem .9rem;border-left:4px solid #1f5fbf;
background:#eef3fb;font-style:italic}
button{display:block;width:100%;min-height:3rem;padding:.8rem 1rem;font:inherit;
font-size:1.1rem;font-weight:700;color:#fff;background:#1f5fbf;border:0;border-radius:8px;
cursor:pointer}
button:focus-visible{outline:3px solid #f0a500;outline-offset:2px}
.ok{border-color:#2e7d32;background:#eef7ee}
.problem{border-color:#b26a00;background:#fff6e8}
.forbidden{border-color:#b00020;background:#fdeef0}
.small{font-size:.9rem;color:#4a4f57}
nav{text-align:right;font-size:.9rem}nav a{color:#1f5fbf;margin-left:.8rem}
@media (prefers-color-scheme:dark){
body{color:#e8e8e8;background:#16181c}
.card{background:#22252b;border-color:#3a3f47}
dt,.small{color:#b7bcc4}
blockquote{background:#1d2a3d}
.ok{background:#1d2d1e}.problem{background:#33291a}.forbidden{background:#3a1d22}
nav a{color:#8ab4f8}}
"""


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _language_name(code: str) -> str:
    name = Locale.parse(code).get_display_name(code) or code
    return name[:1].upper() + name[1:]


def _layout(
    tr: Translator,
    title: str,
    body: str,
    languages: Sequence[tuple[str, str]] = (),
    *,
    ref: str | None = None,
) -> str:
    """A whole page. `languages` are (locale, href) links to the same page in other locales;
    `ref` is kept on one line in the heading (browsers break references at their hyphens)."""
    heading = _e(title)
    if ref:
        heading = heading.replace(_e(ref), f'<span class="ref-nowrap">{_e(ref)}</span>')
    nav = ""
    links = [
        f'<a href="{_e(href)}" hreflang="{_e(code)}" lang="{_e(code)}">'
        f"{_e(_language_name(code))}</a>"
        for code, href in languages
        if code != tr.locale
    ]
    if links:
        nav = "<nav>" + "".join(links) + "</nav>"
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="{_e(tr.locale)}">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        '<meta name="robots" content="noindex, nofollow">\n'
        '<meta name="referrer" content="no-referrer">\n'
        f"<title>{_e(title)}</title>\n<style>{_STYLE}</style>\n</head>\n"
        f"<body>\n<main>\n{nav}<h1>{heading}</h1>\n{body}\n</main>\n</body>\n</html>\n"
    )


def category_label(tr: Translator, key: str) -> str:
    label = _CATEGORY_LABELS.get(key)
    return tr.gettext(label) if label is not None else key


def estimate_text(tr: Translator, minutes: int, tickets: int, tz: ZoneInfo) -> str:
    """`3h, that is 3 tickets` in the reader's language."""
    return tr.render(
        Msg(_ESTIMATE[0], {"duration": format_duration(minutes)}, _ESTIMATE[1], tickets), tz
    )


def consent_page(
    tr: Translator,
    view: ConsentView,
    *,
    tz: ZoneInfo,
    action: str,
    csrf: str,
    languages: Sequence[tuple[str, str]] = (),
) -> str:
    """The page of a valid link: the ticket, the estimate, the rule and the Confirm button."""
    title = tr.render(Msg(N_("Confirm intervention {ref}"), {"ref": view.ref}), tz)
    rows = [
        (N_("Ticket"), f'<span class="ref">{_e(view.ref)}</span>'),
        (N_("Category"), _e(category_label(tr, view.category))),
        (N_("What will be done"), _e(view.summary)),
        (
            N_("Estimate"),
            '<span class="estimate">'
            + _e(estimate_text(tr, view.estimate_minutes, view.tickets, tz))
            + "</span>",
        ),
    ]
    details = "".join(f"<dt>{_e(tr.gettext(label))}</dt><dd>{value}</dd>" for label, value in rows)
    agree = tr.render(Msg(_AGREE[0], {}, _AGREE[1], view.tickets), tz)
    expiry = tr.render(Msg(LINK_EXPIRY, {"expires_at": view.expires_at}), tz)
    body = (
        "<p>"
        + _e(tr.gettext(N_("The support team needs your confirmation before this intervention.")))
        + "</p>\n"
        f'<section class="card"><dl>{details}</dl></section>\n'
        f'<section class="card"><p style="margin:0">{_e(tr.gettext(RULE_INTRO))}</p>'
        f"<blockquote>{_e(tr.gettext(CONFIRMATION_RULE))}</blockquote></section>\n"
        f"<p>{_e(agree)}</p>\n"
        f'<form method="post" action="{_e(action)}">'
        f'<input type="hidden" name="{CSRF_FIELD}" value="{_e(csrf)}">'
        f'<button type="submit">{_e(tr.gettext(N_("Confirm")))}</button></form>\n'
        f'<p class="small">{_e(expiry)} '
        + _e(
            tr.gettext(
                N_(
                    "If you do not want this intervention, do nothing: nothing will be done "
                    "without your confirmation."
                )
            )
        )
        + "</p>"
    )
    return _layout(tr, title, body, languages, ref=view.ref)


def success_page(tr: Translator, confirmed: Confirmed, *, tz: ZoneInfo) -> str:
    text = tr.render(
        Msg(_CONFIRMED[0], {"ref": confirmed.ref}, _CONFIRMED[1], confirmed.tickets), tz
    )
    next_step = tr.gettext(
        N_("The support team has been told and will now plan the work. You can close this page.")
    )
    body = f'<section class="card ok"><p>{_e(text)}</p><p>{_e(next_step)}</p></section>'
    return _layout(tr, tr.gettext(N_("Intervention confirmed")), body)


def problem_page(
    tr: Translator,
    problem: ConsentProblem,
    *,
    tz: ZoneInfo,
    languages: Sequence[tuple[str, str]] = (),
) -> str:
    """The page of a link that cannot confirm (unknown, expired, used, superseded…)."""
    title_id, text_id = _PROBLEMS[problem.kind.value]
    params = {
        "ref": problem.ref or "",
        "expires_at": problem.expires_at,
        "used_at": problem.used_at,
    }
    params = {key: value for key, value in params.items() if value is not None}
    text = tr.render(problem.reason or Msg(text_id, params), tz)
    paragraphs = [text]
    if problem.kind.value != "used":
        paragraphs.append(tr.gettext(_NOTHING_CHANGED))
    body = (
        '<section class="card problem">'
        + "".join(f"<p>{_e(paragraph)}</p>" for paragraph in paragraphs)
        + "</section>"
    )
    return _layout(tr, tr.gettext(title_id), body, languages)


def forbidden_page(tr: Translator) -> str:
    """A POST whose CSRF value is missing or wrong."""
    text = tr.gettext(
        N_(
            "This confirmation could not be checked, so nothing has been changed. Open the link "
            "from the e-mail again and press the button on that page."
        )
    )
    body = f'<section class="card forbidden"><p>{_e(text)}</p></section>'
    return _layout(tr, tr.gettext(N_("Request refused")), body)
