"""The gettext catalogs, as a package so that `importlib.resources` finds them installed.

`bot.i18n` reads `<lang>/LC_MESSAGES/messages.po` from here; `scripts/i18n.py` manages them.
"""
