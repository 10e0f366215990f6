"""The support mailbox: `raw` (a mail as read, the sink that handles it), `imap` (one IMAP
connection and its commands) and `reader` (the loop that reads the folder into the sink).
Whatever a mail becomes is decided behind the sink, not here."""
