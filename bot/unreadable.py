"""What the bot tells the sender of an encrypted message it cannot read, and why.

Two moments (see `bot.matrix.pending`):

- **At once**, when the bot knows it will not get the message's key (`IncomingWithheld`): the
  sender's app sent `m.room_key.withheld` instead of the key, or shared its Megolm session
  with the bot only from a later message on. What to do depends on the reason (`code`);
  `m.unverified` and `m.blacklisted` are the usual ones: the app shares keys with verified
  sessions only (Element's "Never send encrypted messages to unverified sessions"; or its
  "exclude insecure devices" mode, were the bot's device not signed by its cross-signing
  identity). The client is told to turn that setting off: the bot cannot be verified
  interactively.
- **After a day** of waiting and asking for a key that never came (`IncomingUnreadable`),
  unless the sender was already told at once.

These notices are the bot's only messages sent **in clear** in an encrypted room (outbox kind
`message_in_clear`): a client whose app refuses to share keys with the bot's device may well
refuse to read what that device encrypts too. They hold nothing confidential: a date, the
reason and what to do, never anything the client wrote.
"""

from __future__ import annotations

from bot.events import SESSION_STARTS_LATER, IncomingUnreadable, IncomingWithheld
from bot.i18n import N_, Msg

UNREADABLE = N_(
    "I could not read the encrypted message you sent on {sent}: its keys never reached me. "
    "Please send it again."
)
# Not "or verify me": the bot takes no part in interactive verification (README,
# "Encryption"), so that would send the client to a request nobody answers.
WITHHELD_UNVERIFIED = N_(
    "I cannot read the encrypted message you sent on {sent}: your app did not give me its "
    "key, because my session is not verified. In Element: Settings › Security & Privacy, turn "
    "off “Never send encrypted messages to unverified sessions”, then send your message again."
)
WITHHELD_NO_OLM = N_(
    "I cannot read the encrypted message you sent on {sent}: your app could not open a secure "
    "channel with my session. Please send your message again in a minute."
)
WITHHELD_UNAUTHORISED = N_(
    "I cannot read the encrypted message you sent on {sent}: your app decided that my session "
    "may not read it. Please send it again."
)
WITHHELD_UNAVAILABLE = N_(
    "I cannot read the encrypted message you sent on {sent}: your app no longer has its key. "
    "Please send it again."
)
WITHHELD_LATER_KEYS = N_(
    "I cannot read the encrypted message you sent on {sent}: your app gave me the keys of "
    "your later messages only. Please send it again."
)
WITHHELD_OTHER = N_(
    "I cannot read the encrypted message you sent on {sent}: your app did not give me its "
    "key. Please send it again."
)

_BY_CODE = {
    "m.unverified": WITHHELD_UNVERIFIED,
    "m.blacklisted": WITHHELD_UNVERIFIED,
    "m.no_olm": WITHHELD_NO_OLM,
    "m.unauthorised": WITHHELD_UNAUTHORISED,
    "m.unavailable": WITHHELD_UNAVAILABLE,
    SESSION_STARTS_LATER: WITHHELD_LATER_KEYS,
}


def unreadable_notice(event: IncomingUnreadable | IncomingWithheld) -> Msg:
    """The notice for a message the bot cannot read. An unknown withheld code gets the
    general wording: the `reason` text of the withheld event is never shown (another app's
    words, in its own language, and not what to do)."""
    if isinstance(event, IncomingUnreadable):
        return Msg(UNREADABLE, {"sent": event.ts})
    return Msg(_BY_CODE.get(event.code, WITHHELD_OTHER), {"sent": event.ts})
