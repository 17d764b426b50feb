"""`persona doctor [--repair]`: check the library; with --repair, back it up and fix what can be fixed."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "doctor",
        help="check the library (integrity, schema, tensor checksums, orphan rows) and say how to repair it",
        description="Check the persona library and list every problem with its repair. --repair first copies the "
        "library to LIBRARY.backup-TIMESTAMP, then rebuilds a damaged file from the rows that still read, removes "
        "damaged versions and orphan rows, and migrates an older schema.",
    )
    parser.add_argument(
        "--library",
        metavar="PATH",
        type=Path,
        help="the persona library file (default: in the data dir)",
    )
    parser.add_argument("--repair", action="store_true", help="back the library up, then repair it")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.set_defaults(func=run_doctor)


def run_doctor(args: argparse.Namespace) -> int:
    from persona.doctor import check_library, repair_library
    from persona.paths import library_path

    path = args.library.expanduser() if args.library is not None else library_path()
    findings = check_library(path)
    if args.json and not args.repair:
        print(
            json.dumps(
                [
                    {"problem": f.problem, "repair": f.repair, "repairable": f.repairable}
                    for f in findings
                ],
                indent=2,
            )
        )
        return 1 if findings else 0
    if not findings:
        print(f"{path}: healthy (integrity, schema, tensor checksums and references all check out)")
        return 0
    for finding in findings:
        print(f"problem: {finding.problem}\n  repair: {finding.repair}")
    if not args.repair:
        print(
            f"{len(findings)} problem(s); run `persona doctor --repair` to back the library up and repair it"
        )
        return 1
    backup, done = repair_library(path)
    print(f"backed up the library to {backup}")
    for action in done:
        print(f"repaired: {action}")
    remaining = check_library(path)
    for finding in remaining:
        print(f"still wrong: {finding.problem}; {finding.repair}")
    return 1 if remaining else 0
