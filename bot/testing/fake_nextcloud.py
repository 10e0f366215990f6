"""A Nextcloud (Talk) stand-in that checks requests the way the real server does.

Served: `POST /ocs/v2.php/apps/spreed/api/v4/room` (create a conversation),
`GET /ocs/v2.php/apps/spreed/api/v4/room` (the conversations of the logged-in user),
`DELETE /ocs/v2.php/apps/spreed/api/v4/room/{token}` (delete one) and `GET /call/{token}` (the
page a link opens). Checks, in the server's order:

* a `{token}` outside Talk's route pattern `[a-z0-9]{4,30}` matches no route: plain `404`
  (routing comes first);
* basic auth with the configured user and app password, else `401` and the OCS failure
  "Current user is not logged in" (once routed, login is checked before anything else);
* `OCS-APIRequest: true`, else `412 Precondition Failed` `{"message":"CSRF check failed"}`
  (basic auth does not exempt OCS calls from it); these two for every OCS call;
* creating: `roomType` among 1–3 (else 400, `data.error = "type"`), a `roomName` of 1–255
  characters for group and public conversations (else 400, `data.error = "name"`); JSON or
  form bodies;
* deleting: `404` when the logged-in user takes no part in a conversation of that token, `403`
  when they are not its owner or a moderator (`participantType` 1 or 2), `400` for a
  one-to-one conversation (type 1), as Talk documents it.

Success is `201 Created` with the room in `ocs.data`; the listing is `200 OK` with a list of
rooms in `ocs.data`: those the logged-in user takes part in, in creation order, whatever the
query (`noStatusUpdate`, `includeLastMessage`… change nothing here); deleting is `200 OK` with
an empty `ocs.data`, and the conversation is forgotten (its link page then answers 404). JSON
when the request accepts `application/json`, XML otherwise, as OCS does (list items as
`<element>`). Accepted requests are kept in `accepted` (a listing's `body` is its query),
refused ones in `refused`, conversations in `rooms` (by token). As in Talk's answers, a room's
`actorId` and `participantType` are its participant's (one per room here): the creator, as
owner (1), for rooms created through the API; tests may add others to `rooms`.
"""

from __future__ import annotations

import base64
import binascii
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Self
from xml.sax.saxutils import escape

from aiohttp import web

ROOM_PATH = "/ocs/v2.php/apps/spreed/api/v4/room"
# Talk's tokens: 8 characters of Nextcloud's "human readable" alphabet.
TOKEN_ALPHABET = "abcdefgijkmnopqrstwxyz23456789"
# What Talk's routes accept as `{token}`; anything else is no route at all.
TOKEN_ROUTE = re.compile(r"[a-z0-9]{4,30}")
# Owner and moderator: the participant types that may delete a conversation.
MODERATOR_TYPES = (1, 2)


@dataclass(frozen=True, slots=True)
class FakeTalkRequest:
    method: str
    path: str
    status: int
    user: str | None
    headers: tuple[tuple[str, str], ...]
    body: Any

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)


@dataclass
class FakeNextcloud:
    """The fake server. `app()` gives the aiohttp application; `start()` serves it."""

    user: str
    app_password: str
    accepted: list[FakeTalkRequest] = field(default_factory=list)
    refused: list[FakeTalkRequest] = field(default_factory=list)
    rooms: dict[str, dict[str, Any]] = field(default_factory=dict)
    base_url: str = field(default="", init=False)
    _runner: web.AppRunner | None = field(default=None, init=False, repr=False)

    # -- serving ------------------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_post(ROOM_PATH, self._create_room)
        app.router.add_get(ROOM_PATH, self._list_rooms)
        app.router.add_delete(ROOM_PATH + "/{token}", self._delete_room)
        app.router.add_get("/call/{token}", self._call_page)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on `host:port` (0 = any free port); return the base URL."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound_host, bound_port = self._runner.addresses[0][:2]
        self.base_url = f"http://{bound_host}:{bound_port}"
        return self.base_url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # -- helpers ------------------------------------------------------------------------

    def _login(self, request: web.Request) -> str | None:
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if scheme.lower() != "basic" or not encoded:
            return None
        try:
            decoded = base64.b64decode(encoded.strip(), validate=True).decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            return None
        user, sep, password = decoded.partition(":")
        if not sep:
            return None
        ok_user = secrets.compare_digest(user.encode(), self.user.encode())
        ok_password = secrets.compare_digest(password.encode(), self.app_password.encode())
        return user if ok_user and ok_password else None

    @staticmethod
    def _wants_json(request: web.Request) -> bool:
        return "application/json" in request.headers.get("Accept", "") or (
            request.query.get("format") == "json"
        )

    @staticmethod
    def _xml_value(value: Any) -> str:
        if isinstance(value, dict):
            return "".join(f"<{k}>{FakeNextcloud._xml_value(v)}</{k}>" for k, v in value.items())
        if isinstance(value, list):
            return "".join(f"<element>{FakeNextcloud._xml_value(v)}</element>" for v in value)
        if isinstance(value, bool):
            return "1" if value else ""
        return escape("" if value is None else str(value))

    def _ocs(self, request: web.Request, status: int, message: str, data: Any) -> web.Response:
        meta = {"status": "ok" if status < 400 else "failure", "statuscode": status}
        meta["message"] = message
        if self._wants_json(request):
            return web.json_response({"ocs": {"meta": meta, "data": data}}, status=status)
        xml = (
            '<?xml version="1.0"?>\n<ocs><meta>'
            + self._xml_value(meta)
            + "</meta><data>"
            + self._xml_value(data if isinstance(data, dict | list) else {})
            + "</data></ocs>"
        )
        return web.Response(text=xml, status=status, content_type="application/xml")

    def _note(
        self, request: web.Request, status: int, user: str | None, body: Any
    ) -> FakeTalkRequest:
        entry = FakeTalkRequest(
            method=request.method,
            path=request.path,
            status=status,
            user=user,
            headers=tuple((k, v) for k, v in request.headers.items() if k != "Authorization"),
            body=body,
        )
        (self.accepted if status < 400 else self.refused).append(entry)
        return entry

    @staticmethod
    async def _body(request: web.Request) -> dict[str, Any] | None:
        if request.content_type == "application/json":
            try:
                data = await request.json()
            except ValueError:
                return None
            return data if isinstance(data, dict) else None
        form = await request.post()
        return {k: v for k, v in form.items() if isinstance(v, str)}

    def _ocs_user(self, request: web.Request) -> str | web.Response:
        """The logged-in user, or the answer refusing the request (login first, then CSRF)."""
        user = self._login(request)
        if user is None:
            self._note(request, 401, None, None)
            return self._ocs(request, 401, "Current user is not logged in", [])
        if request.headers.get("OCS-APIRequest") != "true":
            self._note(request, 412, user, None)
            return web.json_response({"message": "CSRF check failed"}, status=412)
        return user

    # -- endpoints ----------------------------------------------------------------------

    async def _list_rooms(self, request: web.Request) -> web.Response:
        user = self._ocs_user(request)
        if isinstance(user, web.Response):
            return user
        rooms = [room for room in self.rooms.values() if room["actorId"] == user]
        self._note(request, 200, user, dict(request.query))
        return self._ocs(request, 200, "OK", rooms)

    async def _create_room(self, request: web.Request) -> web.Response:
        user = self._ocs_user(request)
        if isinstance(user, web.Response):
            return user
        body = await self._body(request)
        if body is None:
            self._note(request, 400, user, None)
            return self._ocs(request, 400, "", {"error": "type"})
        try:
            room_type = int(body.get("roomType", 0))
        except (TypeError, ValueError):
            room_type = 0
        name = str(body.get("roomName") or "")
        if room_type not in (1, 2, 3):
            self._note(request, 400, user, body)
            return self._ocs(request, 400, "", {"error": "type"})
        if room_type in (2, 3) and not 1 <= len(name.strip()) <= 255:
            self._note(request, 400, user, body)
            return self._ocs(request, 400, "", {"error": "name"})
        token = "".join(secrets.choice(TOKEN_ALPHABET) for _ in range(8))
        room = {
            "id": len(self.rooms) + 1,
            "token": token,
            "type": room_type,
            "name": name,
            "displayName": name,
            "description": "",
            "participantType": 1,
            "actorType": "users",
            "actorId": user,
            "hasPassword": False,
            "hasCall": False,
            "readOnly": 0,
            "listable": 0,
            "lobbyState": 0,
        }
        self.rooms[token] = room
        self._note(request, 201, user, body)
        return self._ocs(request, 201, "OK", room)

    async def _delete_room(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        if not TOKEN_ROUTE.fullmatch(token):
            self._note(request, 404, None, None)
            return web.Response(status=404, text="Page not found")
        user = self._ocs_user(request)
        if isinstance(user, web.Response):
            return user
        room = self.rooms.get(token)
        if room is None or room["actorId"] != user:
            # Talk looks the conversation up for the participant: not taking part is not found.
            self._note(request, 404, user, None)
            return self._ocs(request, 404, "", [])
        if room["participantType"] not in MODERATOR_TYPES:
            self._note(request, 403, user, None)
            return self._ocs(request, 403, "", [])
        if room["type"] == 1:
            self._note(request, 400, user, None)
            return self._ocs(request, 400, "", [])
        del self.rooms[token]
        self._note(request, 200, user, None)
        return self._ocs(request, 200, "OK", [])

    async def _call_page(self, request: web.Request) -> web.Response:
        token = request.match_info["token"]
        room = self.rooms.get(token)
        if room is None:
            self._note(request, 404, None, None)
            return web.Response(status=404, text="Conversation not found")
        if room["type"] != 3:
            self._note(request, 403, None, None)
            return web.Response(status=403, text="Not a public conversation")
        self._note(request, 200, None, None)
        return web.Response(
            text=f"<!DOCTYPE html><title>{escape(room['name'])} - Talk</title>",
            content_type="text/html",
        )
