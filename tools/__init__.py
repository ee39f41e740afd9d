"""Small developer tools (python -m tools.<name>)."""
