"""The `dualpool` command line: one module per subcommand, wired in `main.py`."""
