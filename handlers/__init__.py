"""Every handler module's router, included explicitly (importing a module registers nothing
anywhere else). `build_router()` is called once by the composition root and by the tests.

The order of `MODULES` has no meaning for routing: plain text goes to the one handler declared
for the sender's situation (`handlers.state`), commands and reactions by their names, and a
module that needs another's work emits an effect (`handlers.effects`). Handler modules never
import each other (checked by import-linter).
"""

from __future__ import annotations

import importlib

from bot.routing import Router
from bot.services import Sweeper
from handlers.state import load_state

MODULES = (
    "commands",
    "intake",
    "staff",
    "booking",
    "calendar",
    "dashboard",
    "consent",
    "closing",
    "billing",
    "privacy",
    "mail",
    "orgs",
    "satisfaction",
    "noshow",
)


def _modules() -> list:
    found = []
    for name in MODULES:
        try:
            found.append(importlib.import_module(f"handlers.{name}"))
        except ModuleNotFoundError as error:
            if error.name != f"handlers.{name}":
                raise
    return found


def build_router() -> Router:
    root = Router("root")
    root.states(load_state)
    for module in _modules():
        root.include(module.router)
    return root


def sweepers() -> list[Sweeper]:
    found: list[Sweeper] = []
    for module in _modules():
        found.extend(getattr(module, "SWEEPERS", ()))
    return found
