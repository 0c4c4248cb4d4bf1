"""CLI subcommands: each module exposes `add_parser(subparsers, name, summary)` and sets `func`."""
