"""The support mailbox: `raw` (a mail as read, the sink that handles it) and `imap` (the
reader). Whatever a mail becomes is decided behind the sink, not here."""
