"""Messages relayed by a bridge account (e.g. Nextcloud Talk's Matterbridge): one Matrix account
speaks for many people, the nickname written in the text (`[nctalk] <Alice> hello`).

The nickname is not authenticated: it identifies a client conversation, never grants a right.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

DEFAULT_NICK_FORMAT = "[{PROTOCOL}] <{NICK}> "


@dataclass(frozen=True, slots=True)
class Bridged:
    nick: str
    text: str
    protocol: str | None = None


@lru_cache(maxsize=32)
def _pattern(nick_format: str) -> re.Pattern[str]:
    parts = re.split(r"(\{PROTOCOL\}|\{NICK\})", nick_format)
    regex = []
    for part in parts:
        if part == "{PROTOCOL}":
            regex.append(r"(?P<protocol>[^\s\]>]{1,64})")
        elif part == "{NICK}":
            regex.append(r"(?P<nick>[^\n]{1,128}?)")
        else:
            # Any run of spaces in the format matches any run of spaces in the message.
            regex.append(r"\s+".join(re.escape(chunk) for chunk in part.split()) or "")
            if part.endswith(" ") and part.strip():
                regex.append(r"\s*")
            elif part.strip() == "" and part:
                regex.append(r"\s*")
    return re.compile("^" + "".join(regex), re.S)


def parse_bridged(body: str, nick_format: str = DEFAULT_NICK_FORMAT) -> Bridged | None:
    """Split a bridged message into nickname and text; None when it does not match."""
    body = body.replace("\x00", "")
    match = _pattern(nick_format).match(body)
    if match is None:
        return None
    nick = match.group("nick").strip()
    if not nick:
        return None
    protocol = match.groupdict().get("protocol")
    return Bridged(nick=nick, text=body[match.end() :].strip(), protocol=protocol)


def bridge_client_key(room_id: str, nick: str) -> str:
    return f"bridge:{room_id}:{nick}"


def bridged_nick(client_key: str, room_id: str) -> str | None:
    """The nickname of a client behind a bridge in `room_id` (None for a Matrix account or
    another room); room ids contain colons, so the prefix is matched whole."""
    prefix = f"bridge:{room_id}:"
    return client_key[len(prefix) :] if client_key.startswith(prefix) else None
