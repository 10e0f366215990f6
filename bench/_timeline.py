"""Where an answer's time goes, read from Synapse's access log of the same run.

Synapse logs every request when it ends, with how long it took ("Processed request:
0.034sec/…"), so each request's start and end are known to the millisecond. For every answer
of a phase, the client's send, the bot's send answering it (same room) and the client's sync
that brought the answer split the round trip in four:

- client send: the client's `PUT …/send`, as long as Synapse took to accept it;
- to the bot's send: from there to the start of the bot's `PUT …/send`: Synapse waking the
  bot's sync, and the bot reading the sync and handling the message (its own work);
- bot send: the bot's `PUT …/send`, as long as Synapse took to accept it;
- to the client: from there to the end of the client's sync that carried the answer.

What is left of the latency the client measured (not in these four) is the client's own
time: sending the request and reading the sync answer.
"""

from __future__ import annotations

import re
from collections import defaultdict, deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from _common import percentile

_LINE = re.compile(
    r"^(?P<at>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) .*\{(?P<user>@[^}]*)\} Processed request: "
    r'(?P<real>[\d.]+)sec/.*"(?P<method>[A-Z]+) (?P<path>\S+)'
)
PARTS = ("client send", "to the bot's send", "bot send", "to the client")


@dataclass(frozen=True)
class Request:
    user: str
    start: datetime
    end: datetime
    method: str
    path: str

    @property
    def room(self) -> str | None:
        if "/send/m.room.message/" not in self.path:
            return None
        return self.path.split("/rooms/", 1)[1].split("/", 1)[0]

    @property
    def is_sync(self) -> bool:
        return self.method == "GET" and "/sync" in self.path


def read_access_log(path: Path) -> list[Request]:
    requests = []
    with open(path, encoding="utf8", errors="replace") as lines:
        for line in lines:
            found = _LINE.match(line)
            if found is None:
                continue
            # Synapse writes local time.
            end = datetime.strptime(found["at"], "%Y-%m-%d %H:%M:%S,%f").astimezone()
            requests.append(
                Request(
                    found["user"],
                    end - timedelta(seconds=float(found["real"])),
                    end,
                    found["method"],
                    found["path"],
                )
            )
    requests.sort(key=lambda r: r.start)
    return requests


@dataclass
class Breakdown:
    """Seconds of each part, one value per matched answer."""

    parts: dict[str, list[float]] = field(default_factory=lambda: {p: [] for p in PARTS})

    @property
    def matched(self) -> int:
        return len(self.parts[PARTS[0]])

    def p(self, part: str, q: float) -> float:
        return percentile(self.parts[part], q)


def breakdown(
    requests: list[Request],
    bot_user: str,
    start: datetime,
    end: datetime,
    into: Breakdown | None = None,
) -> Breakdown:
    """The bot's answers sent between `start` and `end`, each matched with the oldest
    unanswered client message of its room."""
    waiting: dict[str, deque[Request]] = defaultdict(deque)
    syncs: dict[str, list[Request]] = defaultdict(list)
    answers: list[tuple[Request, Request]] = []
    for request in requests:
        if request.is_sync:
            # A client's sync may have started before the window (a long poll).
            if start <= request.end <= end + timedelta(seconds=30):
                syncs[request.user].append(request)
            continue
        if not start <= request.start <= end:
            continue
        room = request.room
        if room is None:
            continue
        if request.user != bot_user:
            waiting[room].append(request)
        elif waiting[room]:
            answers.append((waiting[room].popleft(), request))
    result = into if into is not None else Breakdown()
    for asked, answer in answers:
        carried = [s for s in syncs[asked.user] if s.end >= answer.end]
        if not carried:
            continue
        sync = min(carried, key=lambda s: s.end)
        spans = (
            asked.end - asked.start,
            answer.start - asked.end,
            answer.end - answer.start,
            sync.end - answer.end,
        )
        for part, span in zip(PARTS, spans, strict=True):
            result.parts[part].append(span.total_seconds())
    return result
