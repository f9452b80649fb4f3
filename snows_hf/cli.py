"""The ``snows-hf`` command line: its commands, built from the options of :mod:`snows_hf.cli_options`.

Every failure a user can cause ends as one line on stderr and a non-zero exit code;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from typing import Any, Sequence

from .version import __version__
from .cli_options import (Choices, Parser, add_allow_pickle, add_common, add_data_options, add_execution_options, add_field,
                          add_method_options, add_push_options, add_task_options, check_given, flag_spelling,
                          flag_taken)
from .config import PruneConfig
from .console import log_to_console, other_libraries_to_log, output_closed, sigterm_as_interrupt
from .data import CalibrationConfig
from .demo import DemoSettings, format_table, run_demo
from .export import convert
from .fields import spelled
from .harness import TaskSettings
from .hub import push_folder
from .inspection import inspect_folder
from .masks import SELECTORS
from .methods import METHOD_ALIASES, METHODS
from .plan import plan
from .recipe import bundled_recipes, load_recipe, load_recipe_tasks, recipe_summary, resolve_recipe, resolve_settings
from .report import dumps_json
from .workflow import EvalOptions, LoadOptions, SaveOptions, evaluate, push_saved, run


def build_parser() -> argparse.ArgumentParser:
    """The full ``snows-hf`` parser (``prune``, ``eval``, ``push``, ``convert``, ``inspect``, ``recipes``, ``demo``)."""
    parser = Parser(prog="snows-hf", description="One-shot pruning of Hugging Face models with SNOWS re-fitting.")
    parser.add_argument("--version", action="version", version=f"snows-hf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True

    prune = sub.add_parser("prune", help="prune a model folder or Hub id and save the result")
    prune.add_argument("model", metavar="MODEL", nargs="?", help="local model folder or Hugging Face Hub id "
                       "(default: the recipe's model)")
    prune.add_argument("--recipe", metavar="FILE|NAME",
                       help="a recipe.yaml (of an earlier run, or your own) or a bundled recipe's name "
                       "(snows-hf recipes); flags given here override its fields")
    add_field(prune, PruneConfig, "sparsity")
    add_field(prune, PruneConfig, "method", described={name: method.description for name, method in METHODS.items()},
              choices=Choices(sorted(METHODS), also=METHOD_ALIASES))
    add_field(prune, PruneConfig, "mask", choices=sorted(SELECTORS))
    for name in ("allocation", "max_layer_sparsity"):
        add_field(prune, PruneConfig, name)
    add_field(prune, PruneConfig, "targets", metavar="REGEX")
    add_field(prune, PruneConfig, "ignore", metavar="REGEX")
    add_field(prune, PruneConfig, "stats_dtype")
    add_field(prune, PruneConfig, "diagnostics",
              help="skip the per-layer magnitude-vs-Hessian comparison (saves one block forward per module)")
    add_data_options(prune)
    prune.add_argument("--no-eval", action="store_true", help="skip the dense and pruned evaluation on held-out data "
                       "(lm-eval tasks named with --tasks still run)")
    add_task_options(prune)
    prune.add_argument("--dry-run", action="store_true",
                       help="print the plan (blocks, modules, shapes, windows, calibration, HVPs, memory) and exit; "
                       "reads no weights when it can and writes nothing")
    add_execution_options(prune)
    add_field(prune, PruneConfig, "max_memory", metavar="SIZES")
    for name in ("offload_activations", "offload_dir", "block_path"):
        add_field(prune, PruneConfig, name)
    add_method_options(prune)  # one flag per option of the methods registered by now
    prune.add_argument("--output-dir", help="where to save the pruned model (default: MODEL-NAME-pruned-SPARSITY)")
    prune.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder once the new one is complete")
    prune.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from its checkpoint (kept beside the output after each block)")
    prune.add_argument("--save-format", choices=["dense", "compact"], default="dense",
                       help="dense: plain safetensors with zeros; compact: kept values + codes, smaller, "
                       "read by from_pretrained after `import snows_hf` (default: dense)")
    prune.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    add_allow_pickle(prune)
    add_push_options(prune, "--push-to-hub", "after saving, push the output folder to this Hub repo (NAME or NAMESPACE/NAME)")
    add_common(prune)
    prune.set_defaults(func=cmd_prune)

    evaluation = sub.add_parser("eval", help="evaluate a saved model (optionally against a reference) on held-out data")
    evaluation.add_argument("model", metavar="MODEL", help="model folder or Hub id to evaluate; a snows-hf output's "
                            "recipe.yaml chooses which rows (its held-out ones: dataset, split, seed, the calibration "
                            "samples to skip), never how many are read: the held-out count, sequence length and "
                            "streaming are eval's own options and defaults")
    evaluation.add_argument("--reference", help="a second model (the dense one) to evaluate on the same samples")
    add_data_options(evaluation, streaming_flag=True)
    add_task_options(evaluation, "; with tasks and no data option, only the tasks run")
    add_execution_options(evaluation)
    evaluation.add_argument("--max-memory", metavar="SIZES",
                            help="load each model with accelerate within these limits, e.g. 2GiB (the device) or "
                            "cuda:0=20GiB,cpu=64GiB, the rest waiting in CPU memory or on disk, and evaluate it where "
                            "it is placed (default: the whole model on --device)")
    evaluation.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                            help="precision to run in (default auto: the checkpoint's own; with --sparse-inference "
                                 "on a GPU, bfloat16 for float32 checkpoints)")
    evaluation.add_argument("--sparse-inference", action="store_true",
                            help="run MODEL's 2:4 linear layers on PyTorch's sparse GPU kernels (cuSPARSELt or CUTLASS; "
                                 "NVIDIA GPUs of compute capability 8.0+), print which were converted and why others "
                                 "were not, and report throughput; elsewhere the model runs unchanged")
    evaluation.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    evaluation.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    add_allow_pickle(evaluation)
    add_common(evaluation)
    evaluation.set_defaults(func=cmd_eval)

    push = sub.add_parser("push", help="push a saved output folder to the Hugging Face Hub")
    push.add_argument("model", metavar="DIR", help="the folder to push")
    push.add_argument("repo", metavar="REPO", help="Hub repo id (NAME or NAMESPACE/NAME); created if missing")
    add_push_options(push)
    add_common(push)
    push.set_defaults(func=cmd_push)

    convert = sub.add_parser("convert", help="rewrite a snows-hf output in the dense or the compact format")
    convert.add_argument("model", metavar="DIR", help="a folder written by snows-hf prune")
    convert.add_argument("--to", required=True, choices=["dense", "compact"], help="the format to write")
    convert.add_argument("--output-dir", help="where to write (default: DIR-FORMAT)")
    convert.add_argument("--overwrite", action="store_true", help="replace an earlier snows-hf output folder (never DIR itself)")
    convert.add_argument("--trust-remote-code", action="store_true", help="allow model code from the folder (off by default)")
    add_common(convert)
    convert.set_defaults(func=cmd_convert)

    inspect = sub.add_parser("inspect", help="per-layer sparsity and pattern check, format, metadata and size of a folder")
    inspect.add_argument("model", metavar="DIR", help="a folder written by snows-hf prune (or any model folder)")
    inspect.add_argument("--json", metavar="FILE", help="also write the findings to this JSON file")
    add_allow_pickle(inspect)
    add_common(inspect)
    inspect.set_defaults(func=cmd_inspect)

    recipes = sub.add_parser("recipes", help="list the bundled recipes (use one with prune --recipe NAME)")
    recipes.add_argument("name", metavar="NAME", nargs="?", help="print this recipe in full")
    add_common(recipes)
    recipes.set_defaults(func=cmd_recipes)

    demo = sub.add_parser("demo", help="offline demo: prune all-MiniLM-L6-v2 on BBC News and compare")
    demo.add_argument("--output-dir", default="snows-hf-demo", help="where to save the pruned demo model (default: snows-hf-demo)")
    demo.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder that is not an earlier demo")
    for name in ("num_samples", "eval_samples"):
        add_field(demo, DemoSettings, name, default=getattr(DemoSettings, name))
    add_common(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def _task_settings(args: argparse.Namespace) -> Any:
    """The lm-eval tasks of a command: its recipe's (``prune --recipe``; registered names
    only), with the flags on top (``--tasks`` may name task files: the user's own choice)."""

    flags = _split_fields(args, TaskSettings)
    if getattr(args, "recipe", None):
        return load_recipe_tasks(args.recipe, **flags)
    return TaskSettings(**flags) if flags else None


def _split_fields(args: argparse.Namespace, names: Any) -> dict[str, Any]:
    """The options given on the command line among ``names`` (a dataclass: its fields)."""
    names = {f.name for f in dataclasses.fields(names)} if dataclasses.is_dataclass(names) else set(names)
    return {k: v for k, v in vars(args).items() if k in names}


def cmd_prune(args: argparse.Namespace) -> int:
    """``snows-hf prune``: :func:`snows_hf.run` with the recipe's settings and the flags on top."""

    args.model, config, cal_cfg = resolve_settings(args.model, args.recipe, _split_fields(args, PruneConfig.flat_keys()),
                                                   _split_fields(args, CalibrationConfig))
    save = SaveOptions(args.output_dir, save_format=args.save_format, overwrite=args.overwrite, resume=args.resume)
    load = LoadOptions(args.processor, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    if args.dry_run:  # what the run would do and where it would save; nothing written
        found = plan(args.model, config, cal_cfg, save=save, load=load)
        print(f"{found.format()}\n\nwould save to {found.output_dir}")
        print("dry run: nothing was loaded beyond the config" + ("" if found.traced_on == "meta" else " and weights")
              + ", nothing written")
        return 0
    # the push comes after the summary is printed, so a failed push still shows what was saved
    result = run(args.model, config, cal_cfg, save=save, load=load, progress=not args.quiet,
                 evaluation=EvalOptions(held_out=not args.no_eval, tasks=_task_settings(args)))
    if result.output_dir is None:  # a data-parallel process other than the main one
        return 0
    print(result.format())
    print(f"saved to {result.output_dir}")
    if args.push_to_hub:
        _push(push_saved, result.output_dir, args.push_to_hub, args)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``snows-hf inspect DIR``: exit 0 when every layer follows its pattern, 1 when one breaks it."""

    found = inspect_folder(args.model, allow_pickle=args.allow_pickle)
    print(found.format())
    _write_json(args.json, found.to_dict())
    return 0 if found.valid else 1


def cmd_recipes(args: argparse.Namespace) -> int:
    """``snows-hf recipes [NAME]``: the bundled recipes, one line each, or one in full."""

    if args.name:
        print(resolve_recipe(args.name).read_text(), end="")
        return 0
    recipes = bundled_recipes()
    width = max(map(len, recipes))
    for name, path in recipes.items():
        prune, _, model = load_recipe(path)
        print(f"{name:<{width}}  {prune.pattern.label:>4}  {model}")
        summary = recipe_summary(path)
        print(f"    {summary if len(summary) <= 92 else summary[:89] + '...'}")
    print("\nrun one:  snows-hf prune --recipe NAME [flags that override its fields]")
    print("show one: snows-hf recipes NAME")
    return 0


def cmd_push(args: argparse.Namespace) -> int:
    """``snows-hf push``: one commit of a saved folder to a Hub model repo."""

    _push(push_folder, args.model, args.repo, args)
    return 0


def _push(push: Any, folder: str, repo: str, args: argparse.Namespace) -> None:
    print(f"pushed {folder} to {repo}: {push(folder, repo, token=args.token, private=args.private)}")


def cmd_eval(args: argparse.Namespace) -> int:
    """``snows-hf eval``: :func:`snows_hf.workflow.evaluate`, printed (and written with ``--json``)."""

    load = LoadOptions(args.processor, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
    evaluation = EvalOptions(tasks=_task_settings(args), **_split_fields(args, ("batch_size",)))
    result = evaluate(args.model, _split_fields(args, CalibrationConfig), reference=args.reference, load=load,
                      evaluation=evaluation, dtype=args.dtype, sparse_inference=args.sparse_inference,
                      max_memory=args.max_memory, **_split_fields(args, ("device",)))
    print(result.format())
    _write_json(args.json, result.figures)
    return 0


def _write_json(path: str | None, value: Any) -> None:
    """``value`` as JSON in ``path`` (``--json FILE``), when one is given."""

    if path:
        with open(path, "w") as fh:
            fh.write(dumps_json(value))


def cmd_convert(args: argparse.Namespace) -> int:
    """``snows-hf convert``: :func:`snows_hf.export.convert`."""

    saved, report = convert(args.model, args.to, args.output_dir, overwrite=args.overwrite,
                            trust_remote_code=args.trust_remote_code)
    print(f"wrote {args.to} checkpoint of {len(report.layers)} pruned layers to {args.output_dir or saved}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    """``snows-hf demo``: the offline end-to-end run on a real model."""

    settings = DemoSettings(num_samples=args.num_samples, eval_samples=args.eval_samples)
    print(f"snows-hf demo: all-MiniLM-L6-v2 to {settings.sparsity} on BBC News, magnitude and SparseGPT masks vs SNOWS on "
          "the SparseGPT mask (offline)")
    figures = run_demo(args.output_dir, args.overwrite, settings, progress=not args.quiet)
    print()
    print(format_table(figures))
    print(f"\n{figures['saved']} model saved to {args.output_dir} (load it with AutoModel.from_pretrained)")
    return 0


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snows-hf`` console script.

    Example:
        >>> main(["prune", "my-vit", "--sparsity", "2:4"])  # doctest: +SKIP
        0
    """
    try:
        parser = build_parser()  # with the methods registered by now
    except argparse.ArgumentError as exc:  # a registered method's option with the flag of another option
        _say(f"snows-hf: error: {flag_taken(exc)}")
        return 1
    args = parser.parse_args(argv)
    log_to_console(args.quiet, args.debug, getattr(args, "verbose", False))
    try:
        with sigterm_as_interrupt(), other_libraries_to_log(args.debug), spelled(flag_spelling(parser, args.command)):
            check_given(parser, args)  # bounds as a recipe's and a Python call's, with the same message
            code = args.func(args)
            sys.stdout.flush()  # a reader that went away shows here, not in the interpreter's last flush
            return code
    except KeyboardInterrupt:
        _say("snows-hf: interrupted")
        return 130
    except Exception as exc:  # every failure reaches the user as one line
        if isinstance(exc, BrokenPipeError) and output_closed():  # `snows-hf inspect DIR | head -1`
            return CLOSED_PIPE
        if args.debug:
            raise
        _say(f"snows-hf: error: {_one_line(exc)}")
        return 1


#: The exit code of a command whose reader closed the pipe: what a shell reports for a
#: process that SIGPIPE ended (128 + 13), as `yes | head -1` does.
CLOSED_PIPE = 141


def _say(line: str) -> None:
    """``line`` on stderr, unless nobody reads stderr any more."""
    try:
        print(line, file=sys.stderr)
    except BrokenPipeError:
        output_closed()
