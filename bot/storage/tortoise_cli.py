"""Config for Tortoise's own CLI, used by developers to write migrations:

    python -m tortoise -c bot.storage.tortoise_cli.TORTOISE_ORM makemigrations

`makemigrations` compares the models with the migration files (not with a database), so the
throwaway SQLite URL below is enough. Operators never need this: `support-bot migrate` applies
the committed migrations.
"""

import os
import tempfile

from bot.storage.db import tortoise_config

TORTOISE_ORM = tortoise_config(
    os.environ.get(
        "SUPPORT_BOT_DATABASE_URL",
        "sqlite://" + os.path.join(tempfile.gettempdir(), "support-bot-makemigrations.sqlite3"),
    )
)
