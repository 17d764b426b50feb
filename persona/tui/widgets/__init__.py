"""One widget per file: message list, message bubble, chat input, status bar."""
