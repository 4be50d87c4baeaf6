"""The `mixbridge` command: fit, doctor, demo, compare, conformance.

Each subcommand lives in its own module with a `main(argv) -> int`; this file only dispatches.
"""

from __future__ import annotations

import importlib
import sys

SUBCOMMANDS = {
    "fit": ("mixbridge.fit_cli", "fit one model; print its summary or the fit as JSON"),
    "doctor": ("mixbridge.doctor", "check R, lme4, arm, rpy2 and the engines; print fixes"),
    "demo": ("mixbridge.demo", "the twelve-group shrinkage demonstration, Python beside R"),
    "compare": ("mixbridge.conformance.cli", "fit one model with two engines, print the table"),
    "conformance": ("mixbridge.conformance.cli", "run the built-in or a user's conformance suite"),
}


def _usage() -> str:
    rows = "\n".join(f"  {name:<12} {help_}" for name, (_, help_) in SUBCOMMANDS.items())
    return f"usage: mixbridge <command> [options]\n\ncommands:\n{rows}\n"


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        sys.stdout.write(_usage())
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        sys.stderr.write(f"mixbridge: unknown command {name!r}\n\n{_usage()}")
        return 2
    module = importlib.import_module(SUBCOMMANDS[name][0])
    entry = getattr(module, f"{name}_main", None) or module.main
    return int(entry(rest) or 0)


if __name__ == "__main__":
    sys.exit(main())
