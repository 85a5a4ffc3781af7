"""Offline replay: what the gateway would do to a recorded FTP capture."""
