"""`python -m bot` is the same as the `support-bot` command."""

from bot.cli import main

raise SystemExit(main())
