"""One widget per file: message bubble, chat input, status bar."""
