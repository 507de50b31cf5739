"""Build the bundled rows.json snapshot of NYS COVID-19 testing (xdss-u53e) from the portal's CSV export.

    python tools/build_ny_testing_snapshot.py                 # the bundled 1x snapshot
    python tools/build_ny_testing_snapshot.py --scale 100 --out /tmp/xdss-u53e_x100.json.gz

The output is gzip with mtime 0 and no file name, so the same input always gives the same bytes.
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing the package

from covid_lakehouse.defs.ny_testing.snapshot import read_export_csv, scaled_rows, write_rows_json  # noqa: E402

DEFAULT_CSV = ROOT.parent / "shared/data/ny_testing/xdss-u53e_rows.csv_export_thru_2022-09-13.csv"
DEFAULT_OUT = ROOT / "covid_lakehouse/defs/ny_testing/data/xdss-u53e_rows.json.gz"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=DEFAULT_CSV, help="portal CSV export (rows.csv)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="gzip rows.json to write")
    parser.add_argument("--scale", type=int, default=1, help="synthetic copies over later dates (benchmarks)")
    args = parser.parse_args(argv)

    columns, rows = read_export_csv(args.csv)
    if args.scale != 1:
        rows = scaled_rows(rows, args.scale, date_index=[c.field_name for c in columns].index("test_date"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as out:
        n = write_rows_json(out, columns, rows)
    tmp.replace(args.out)  # never leave a half-written snapshot under the final name
    print(f"wrote {n:,} rows to {args.out} ({args.out.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
