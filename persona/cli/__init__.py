"""The `persona` command line: the only place (with the TUI) that turns errors into messages."""
