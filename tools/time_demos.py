"""Time the documented CPU commands (the demos, the toy fit and predict) as a user runs them.

    python tools/time_demos.py --json benchmarks/records/demo_durations_idle.json
    python tools/time_demos.py --condition "one busy core" --json benchmarks/records/demo_durations_busy.json
    python tools/time_demos.py --commands "make demo" predict --json out.json

Runs each command in the repository (in the order given; the default order is the one the docs
follow, `make demo` first, whose model the other demos start from), idle or beside one busy core
(a spinning process pinned to one usable core), and writes one record per command: seconds,
exit status, its last line, the load average before and after, with the command, date and CPU.
`make records` puts them on the records page and into the docs' duration markers.

Time them in a fresh clone (or after `make clean` and removing the generated `data/` toy sets):
the commands write where the docs say, and `fit` refuses to overwrite an earlier run's checkpoints.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from _cli import ArgumentParser, check_writable, run

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    from deploy.durations import COMMANDS, CONDITIONS, time_command
    from deploy.records import provenance

    parser = ArgumentParser(prog="time_demos", description=__doc__)
    parser.add_argument("--commands", nargs="+", choices=list(COMMANDS), default=list(COMMANDS), metavar="NAME",
                        help=f"which commands (default: all, in this order): {', '.join(COMMANDS)}")
    parser.add_argument("--condition", choices=CONDITIONS, default="idle",
                        help="idle (nothing else running) or 'one busy core' (default: idle)")
    parser.add_argument("--json", type=Path, required=True, help="record file to write")
    args = parser.parse_args(argv)
    check_writable(args.json, "--json")
    prov = provenance(["tools/time_demos.py", *(sys.argv[1:] if argv is None else map(str, argv))])
    records = []
    for name in args.commands:
        record = time_command(name, args.condition, cwd=ROOT)
        records.append({**record, **prov})
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(records, indent=1) + "\n")   # written after each, kept if stopped
    failed = [r["demo"] for r in records if r["exit_status"] != 0]
    print(f"time_demos: {len(records)} commands timed ({args.condition}) -> {args.json}"
          + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(run(main, "time_demos"))
