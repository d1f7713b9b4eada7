"""Generate the benchmark records page and the README's model table from the JSON records.

    python tools/make_records.py            # docs/benchmarks.md and README.md's model table
    python tools/make_records.py --check    # exit 1 when any of them is not what the records give

Reads every `benchmarks/records/*.json` (written by tools/benchmark.py --json,
tools/benchmark_peers.py, tools/time_demos.py and the other benchmark tools, each record with
its command, date and CPU), writes one section per file onto the records page, replaces the
README's model table (between its markers) with the variants' and MobileNetV2's figures from the
same records, and fills each `<!-- duration: NAME -->` marker of the README and of the Markdown
pages beside the records page (docs/*.md) with the measured durations of that command. Also
`make records`.
"""
from __future__ import annotations

import sys
from pathlib import Path

from _cli import ArgumentParser, run

ROOT = Path(__file__).resolve().parents[1]


def main(argv: list[str] | None = None) -> int:
    parser = ArgumentParser(prog="make_records", description=__doc__)
    parser.add_argument("--records", type=Path, default=Path("benchmarks/records"),
                        help="folder of JSON record files (default: benchmarks/records)")
    parser.add_argument("--page", type=Path, default=Path("docs/benchmarks.md"), help="records page to write")
    parser.add_argument("--readme", type=Path, default=Path("README.md"),
                        help="README whose model table (between its markers) is replaced")
    parser.add_argument("--check", action="store_true",
                        help="write nothing; exit 1 when the page, the README table or a duration in the README or "
                             "the page's folder differ from the records")
    args = parser.parse_args(argv)
    from deploy.durations import fill_durations
    from deploy.records import load_record_dir, render_model_table, render_page, replace_between_markers

    files = load_record_dir(args.records)
    records = [r for f in files for r in f.records]
    page = render_page(files)
    new_readme = replace_between_markers(args.readme.read_text(), render_model_table(files, page=args.page.as_posix()))
    outputs = {args.page: page, args.readme: fill_durations(new_readme, records, where=str(args.readme))}
    for doc in sorted(args.page.parent.glob("*.md")):
        if doc not in outputs:
            outputs[doc] = fill_durations(doc.read_text(), records, where=str(doc))
    stale = [p for p, text in outputs.items() if not p.is_file() or p.read_text() != text]
    if args.check:
        for p in stale:
            print(f"make_records: {p} is not what the records give: run `make records`", file=sys.stderr)
        return 1 if stale else 0
    args.page.parent.mkdir(parents=True, exist_ok=True)
    for p in stale:
        p.write_text(outputs[p])
    print(f"make_records: {len(files)} record files -> {args.page}, the model table of {args.readme} and the "
          "durations in the docs")
    return 0


if __name__ == "__main__":
    sys.exit(run(main, "make_records"))
