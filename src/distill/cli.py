"""`distill` command line: run, sweep, compare, provenance, study, fingerprint, serve,
models, params."""

from __future__ import annotations

import argparse
import os
import sys

from .core.params import PRECISIONS, ParamsError, RunParams, describe


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="distill", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="execute the notebooks 01 -> 02 -> 03 with papermill")
    run.add_argument("source", help="a params YAML (new run) or an existing run folder (resume)")
    run.add_argument("--set", dest="overrides", action="append", default=[],
                     metavar="SECTION.KEY=VALUE", help="override one parameter (repeatable)")
    run.add_argument("--from", dest="from_stage", metavar="STAGE",
                     help="start at this stage: 01/02/03 or its name (with an existing run)")
    run.add_argument("--to", dest="to_stage", metavar="STAGE",
                     help="stop after this stage: 01/02/03 or its name")
    run.add_argument("--log-output", action="store_true",
                     help="stream the notebooks' output to this terminal")
    run.add_argument("--seeds", metavar="SEEDS",
                     help="run each seed (0,1,2 or 0-2) as a whole run, in one folder with "
                     "their aggregate (mean, sd, t-interval per figure); given that folder "
                     "instead of a params file, go on where it stopped")

    sweep = commands.add_parser("sweep", help="run the variants of a sweep file on shared samples")
    sweep.add_argument("sweep_file", help="a sweep YAML, e.g. params/sweeps/objectives.yaml")
    sweep.add_argument("--set", dest="overrides", action="append", default=[],
                       metavar="SECTION.KEY=VALUE", help="override one parameter in every variant")

    compare = commands.add_parser("compare", help="one table of several runs' students, each "
                                  "tested against the first; or two seeds folders, seed by seed")
    compare.add_argument("runs", nargs="+", help="run folders, or two seeds folders (--seeds)")
    compare.add_argument("--csv", help="also write the table to this CSV file")

    serve = commands.add_parser(
        "serve", help="serve a model over an OpenAI-compatible HTTP API (FastAPI + uvicorn)")
    serve.add_argument("model", nargs="?", default=RunParams().teacher,
                       help="embedded teacher name, Hugging Face id, model folder, or a run "
                       "folder (serves its distilled student); default: the default teacher, "
                       "%(default)s")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port to listen on")
    serve.add_argument("--name", help="model name clients ask for (default: the model argument)")
    serve.add_argument("--api-key-env", metavar="VAR",
                       help="require the key held by this environment variable")
    serve.add_argument("--max-batch-size", type=int,
                       help="requests generated together (default 8)")
    serve.add_argument("--batch-wait-ms", type=float,
                       help="how long the first request waits for others to batch with "
                       "(default 50)")
    serve.add_argument("--request-timeout", type=float,
                       help="seconds after which a request nobody answered is dropped "
                       "(default 600; sooner where the client says its own timeout)")
    serve.add_argument("--precision", default="auto", choices=PRECISIONS,
                       help="the weights' number format; auto measures, as run.precision "
                       "auto does (default %(default)s)")

    provenance = commands.add_parser(
        "provenance", help="was SUSPECT distilled from a candidate? three tests with p-values "
        "(notebook 05)")
    provenance.add_argument("suspect", help="the model under suspicion: embedded name, folder, "
                            "run folder (its student), or BASE_URL#MODEL (an endpoint)")
    provenance.add_argument("--candidate", dest="candidates", action="append", required=True,
                            metavar="MODEL", help="a candidate teacher (repeatable)")
    provenance.add_argument("--control", metavar="MODEL",
                            help="a model known not to be the suspect's teacher (test 1 compares "
                            "with it; test 2 needs its answers)")
    provenance.add_argument("--reference", metavar="MODEL",
                            help="a local model the suspect grew from, e.g. a run's student_init "
                            "(test 2)")
    provenance.add_argument("--prompts", metavar="FILE", help="prompt file (default: builtin)")
    provenance.add_argument("--n-prompts", type=int, metavar="N", help="prompts used (default 200)")
    provenance.add_argument("--max-edit", type=float, metavar="SHARE",
                            help="test 1: answers agree within this share of edited words")
    provenance.add_argument("--watermark-key-env", metavar="VAR",
                            help="test 3: the environment variable holding the watermark key")
    provenance.add_argument("--api-key-env", metavar="VAR",
                            help="the key of BASE_URL#MODEL endpoints (default OPENAI_API_KEY)")
    provenance.add_argument("--set", dest="settings", action="append", default=[],
                            metavar="NAME=VALUE",
                            help="any other key of the provenance section (distill params), "
                            "as YAML")
    provenance.add_argument("--output-dir", help="where the folder goes (default outputs)")

    study = commands.add_parser(
        "study", aliases=["provenance-study"], help="run a study file of params/studies/: "
        "provenance (notebook 06), drift (07) or collapse (08), as its `study:` key says")
    study.add_argument("study_file", help="a study YAML, e.g. params/studies/teacher_drift.yaml, "
                       "or a study folder to go on in")
    study.add_argument("--set", dest="settings", action="append", default=[],
                       metavar="NAME=VALUE", help="override one key of the study's section "
                       "(distill params), as YAML (repeatable)")

    fingerprint = commands.add_parser(
        "fingerprint", help="record a teacher's answers to fixed probes, or check that a model "
        "or endpoint is still the one recorded (exit 0: same model, 1: changed)")
    fingerprint.add_argument("model", help="BASE_URL#MODEL (an endpoint), embedded name, "
                             "folder, or run folder (its student)")
    fingerprint.add_argument("-o", "--output", default="fingerprint.json",
                             help="where to write a new fingerprint (default %(default)s)")
    fingerprint.add_argument("--check", metavar="FILE",
                             help="compare with this fingerprint, or a run folder's teacher "
                             "fingerprint, instead of recording")
    fingerprint.add_argument("--precision", default="fp32", choices=PRECISIONS[1:],
                             help="a local model's weights (default %(default)s)")
    fingerprint.add_argument("--api-key-env", default="OPENAI_API_KEY", metavar="VAR",
                             help="the endpoint's key (default %(default)s)")

    commands.add_parser("models", help="list the embedded teachers and whether each is installed")
    commands.add_parser("params", help="list every parameter with its default and meaning")

    args = parser.parse_args(argv)
    if args.command == "models":
        from .lm.models import embedded_status
        from .speech.whisper import embedded_status as speech_status

        for row in [*embedded_status(), *speech_status()]:
            state = "installed" if row["installed"] else f"not installed: {row['install']}"
            cached = ", converted" if row["cached"] else ""
            print(f"{row['name']:<24} {state}{cached}\n    {row['description']}")
        return 0
    if args.command == "params":
        print(describe())
        return 0

    if args.command == "serve":
        return _serve(args)

    from .experiments import is_seeds_folder, parse_seeds, run_seeds, run_sweep
    from .lm.models import ModelNotFound
    from .pipeline import StageFailed, run_pipeline
    from .teachers.api_client import ApiTeacherError

    try:
        if args.command == "compare":
            return _compare(args.runs, args.csv)
        if args.command == "provenance":
            return _provenance(args)
        if args.command in ("study", "provenance-study"):
            return _study(args)
        if args.command == "fingerprint":
            return _fingerprint(args)
        if args.command == "sweep":
            return _compare(run_sweep(args.sweep_file, args.overrides), None)
        if args.seeds or is_seeds_folder(args.source):
            if args.from_stage or args.to_stage:
                raise ParamsError("--from and --to apply to one run; with seeds, give the "
                                  "seeds folder to go on where it stopped")
            group = run_seeds(args.source, parse_seeds(args.seeds) if args.seeds else None,
                              args.overrides, args.log_output)
            return _print_aggregate(group)
        run_pipeline(args.source, args.overrides, args.from_stage, args.log_output,
                     args.to_stage)
    except (ParamsError, ValueError, FileNotFoundError, ApiTeacherError,
            ModelNotFound) as error:
        print(f"distill: error: {error}", file=sys.stderr)
        return 2
    except StageFailed as error:
        print(f"distill: {error}", file=sys.stderr)
        return 1
    return 0


def _serve(args) -> int:
    # Before torch loads OpenMP: its threads then sleep at barriers instead of spinning.
    # A server shares its machine; beside another CPU-heavy process, spinning threads
    # made a batch of 2 x 24 tokens take 67.8 s instead of 8.5 s (2 cores, measured).
    # An OMP_WAIT_POLICY set by the user wins.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from .core.secrets import api_key_from_env
    from .lm.models import ModelNotFound
    from .serve.server import create_app, load_for_serving

    try:
        api_key = None if args.api_key_env is None else api_key_from_env(
            args.api_key_env, f"--api-key-env {args.api_key_env}: the environment variable "
            f"{args.api_key_env} is not set or empty; export {args.api_key_env}=<key> first, "
            "or drop --api-key-env")
        from .core.precision import describe, resolve, weights_dtype

        choice, why = resolve(args.precision)
        if args.precision == "auto":
            print(describe(choice, why))
        model, tokenizer, name = load_for_serving(args.model, weights_dtype(choice))
    except (ValueError, ModelNotFound) as error:
        print(f"distill: error: {error}", file=sys.stderr)
        return 2
    name = args.name or name
    batching = {"max_batch_size": args.max_batch_size, "batch_wait_ms": args.batch_wait_ms,
                "request_timeout": args.request_timeout}
    app = create_app(model, tokenizer, name, api_key=api_key,
                     **{key: value for key, value in batching.items() if value is not None})
    print(f"Serving {name!r} at http://{args.host}:{args.port}/v1 "
          f"({'key from $' + args.api_key_env if api_key else 'no key required'})")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def _provenance(args) -> int:
    import pandas as pd

    from .pipeline import run_provenance
    from .studies.provenance import TABLE

    parameters = {"suspect": args.suspect, "candidates": args.candidates}
    for name in ("control", "reference", "prompts", "n_prompts", "max_edit",
                 "watermark_key_env", "api_key_env", "output_dir"):
        if getattr(args, name) is not None:
            parameters[name] = getattr(args, name)
    run_dir = run_provenance({**parameters, **_settings(args.settings)})
    with pd.option_context("display.width", 200, "display.max_colwidth", 80):
        print(pd.read_csv(run_dir / TABLE).to_string(index=False))
    return 0


def _study(args) -> int:
    import pandas as pd

    from .pipeline import run_study
    from .studies.runner import SUMMARY

    run_dir = run_study(args.study_file, _settings(args.settings))
    if (run_dir / SUMMARY).exists():  # every study writes its headline table there
        with pd.option_context("display.width", 200):
            print(pd.read_csv(run_dir / SUMMARY).round(3).to_string(index=False))
    return 0


def _fingerprint(args) -> int:
    import openai

    from .core.runs import write_json
    from .teachers import fingerprint
    from .teachers.api_client import (
        ApiTeacherError,
        check_endpoint,
        endpoint_from_spec,
        is_endpoint,
    )

    old = fingerprint.load(args.check) if args.check else None  # a bad file stops here
    if is_endpoint(args.model):
        endpoint = endpoint_from_spec(args.model, args.api_key_env)
        check_endpoint(endpoint)
        probes = fingerprint.EndpointProbes(endpoint)
    else:
        from .core.precision import weights_dtype
        from .lm.models import load_model

        probes = fingerprint.LocalProbes(*load_model(args.model,
                                                     dtype=weights_dtype(args.precision)))
    try:
        if old is None:
            write_json(args.output, fingerprint.record(probes, args.model))
            print(f"fingerprint of {args.model} written to {args.output}")
            return 0
        found = fingerprint.check(old, probes)
    except openai.APIError as error:  # after the client's own retries
        raise ApiTeacherError(f"{args.model}: the endpoint failed a probe: {error}") from None
    print(found.table().round(6).to_string(index=False))
    print(f"{args.model} against the fingerprint of {old['model']} ({old['recorded']}): "
          f"{found.summary()}")
    return 1 if found.decision == fingerprint.CHANGED else 0


def _settings(settings: list[str]) -> dict:
    """--set NAME=VALUE options as a dict, each value read as YAML."""
    import yaml

    parsed = {}
    for setting in settings:
        name, equals, value = setting.partition("=")
        if not equals:
            raise ValueError(f"--set {setting}: expected NAME=VALUE")
        parsed[name.strip()] = yaml.safe_load(value)
    return parsed


def _print_aggregate(group) -> int:
    import pandas as pd

    from .evaluation.seeds import AGGREGATE

    table = pd.read_csv(group / AGGREGATE, index_col=["model", "figure"])
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.loc["student"].round(4).to_string() if "student" in table.index
              else table.round(4).to_string())
    print(f"Every model's figures: {group / AGGREGATE}")
    return 0


def _compare(run_dirs, csv_path) -> int:
    from pathlib import Path

    import pandas as pd

    from .evaluation.compare import compare_runs, differences_in_words, paired_differences
    from .experiments import is_seeds_folder

    if len(run_dirs) == 2 and all(is_seeds_folder(d) for d in run_dirs):
        from .evaluation.seeds import compare_groups  # one setting, seed by seed

        table = compare_groups(*map(Path, run_dirs))
        with pd.option_context("display.width", 200, "display.max_columns", 20):
            print(f"{run_dirs[1]} - {run_dirs[0]}, the student, paired by seed "
                  "(95% t-intervals across seeds):")
            print(table.round(4).to_string())
        return 0
    table = compare_runs(run_dirs)
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.round(4).to_string())
    if csv_path:
        table.to_csv(csv_path)
    if len(run_dirs) > 1:  # is a difference real? paired on the held-out items the runs share
        differences = paired_differences(run_dirs)
        if not differences.empty:
            print("\nEach run's student against the first run's (95% intervals, p-values):")
            print(differences_in_words(differences))
    return 0


if __name__ == "__main__":
    sys.exit(main())
