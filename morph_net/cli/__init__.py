"""The `morphnet` command-line tool."""
