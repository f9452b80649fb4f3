"""The ``snows-hf`` command line. Option help comes from the config dataclasses.

Every failure a user can cause ends as one line on stderr and a non-zero exit code;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import os
import re
import sys
import time
from typing import Any, Iterator, Sequence

from . import __version__

logger = logging.getLogger("snows_hf")


class _Parser(argparse.ArgumentParser):
    """argparse that reports errors on one line (no usage dump) and exits with code 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"snows-hf: error: {message}\n")


def _help(cls: type, name: str) -> str:
    field = {f.name: f for f in dataclasses.fields(cls)}[name]
    default = field.default
    text = field.metadata.get("help", "")
    suffix = f" (default: {default})" if default not in (None, dataclasses.MISSING) else ""
    return (text + suffix).replace("%", "%%")


def _add(parser: argparse.ArgumentParser, cls: type, name: str, **kwargs: Any) -> None:
    """Add ``--name`` for dataclass field ``name``; unset flags keep the dataclass default.
    A field that declares its allowed values (``choices`` in its metadata) offers those."""
    choices = {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("choices")
    if choices is not None:
        kwargs.setdefault("choices", list(choices))
    parser.add_argument("--" + name.replace("_", "-"), dest=name, default=argparse.SUPPRESS, help=_help(cls, name), **kwargs)


def _int_at_least(minimum: int):
    """An argparse type for integers >= ``minimum``, with a one-line error otherwise."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
        return value

    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def build_parser() -> argparse.ArgumentParser:
    """The full ``snows-hf`` parser (``prune``, ``eval``, ``push``, ``convert``, ``inspect``, ``recipes``, ``demo``)."""
    from .config import PruneConfig
    from .masks import SELECTORS
    from .methods import METHODS, SnowsConfig

    parser = _Parser(prog="snows-hf", description="One-shot pruning of Hugging Face models with SNOWS re-fitting.")
    parser.add_argument("--version", action="version", version=f"snows-hf {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    prune = sub.add_parser("prune", help="prune a model folder or Hub id and save the result")
    prune.add_argument("model", metavar="MODEL", nargs="?", help="local model folder or Hugging Face Hub id "
                       "(default: the recipe's model)")
    prune.add_argument("--recipe", metavar="FILE|NAME",
                       help="a recipe.yaml (of an earlier run, or your own) or a bundled recipe's name "
                       "(snows-hf recipes); flags given here override its fields")
    _add(prune, PruneConfig, "sparsity")
    _add(prune, PruneConfig, "method", choices=sorted(METHODS))
    _add(prune, PruneConfig, "mask", choices=sorted(SELECTORS))
    _add(prune, PruneConfig, "allocation")
    _add(prune, PruneConfig, "max_layer_sparsity", type=float)
    _add(prune, PruneConfig, "targets", nargs="+", metavar="REGEX")
    _add(prune, PruneConfig, "ignore", nargs="+", metavar="REGEX")
    _add(prune, PruneConfig, "stats_dtype")
    prune.add_argument("--no-diagnostics", dest="diagnostics", action="store_false", default=argparse.SUPPRESS,
                       help="skip the per-layer magnitude-vs-Hessian comparison (saves one block forward per module)")
    _data_options(prune)
    prune.add_argument("--no-eval", action="store_true", help="skip the dense and pruned evaluation")
    prune.add_argument("--dry-run", action="store_true",
                       help="print the plan (blocks, modules, shapes, windows, calibration, HVPs, memory) and exit; "
                       "reads no weights when it can and writes nothing")
    _add(prune, PruneConfig, "batch_size", type=_positive_int)
    _add(prune, PruneConfig, "device")
    _add(prune, PruneConfig, "max_memory", metavar="SIZES")
    _add(prune, PruneConfig, "offload_activations")
    _add(prune, PruneConfig, "offload_dir")
    _add(prune, PruneConfig, "block_path")
    snows = prune.add_argument_group("SNOWS re-fit (with --method snows)")
    numbers = {"k_step": _non_negative_int, "newton_steps": _non_negative_int, "cg_iters": _positive_int, "damping": float,
               "holdout": float, "batches_per_step": _positive_int, "hessian_batches": _positive_int}
    for option in dataclasses.fields(SnowsConfig):  # one flag per option, in the config's order
        _add(snows, SnowsConfig, option.name, **({"type": numbers[option.name]} if option.name in numbers else {}))
    prune.add_argument("--output-dir", help="where to save the pruned model (default: MODEL-NAME-pruned-SPARSITY)")
    prune.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder once the new one is complete")
    prune.add_argument("--resume", action="store_true",
                       help="continue an interrupted run from its checkpoint (kept beside the output after each block)")
    prune.add_argument("--save-format", choices=["dense", "compact"], default="dense",
                       help="dense: plain safetensors with zeros; compact: kept values + codes, smaller, "
                       "read by from_pretrained after `import snows_hf` (default: dense)")
    prune.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    _allow_pickle(prune)
    _push_options(prune, "--push-to-hub", "after saving, push the output folder to this Hub repo (NAME or NAMESPACE/NAME)")
    _common(prune)
    prune.set_defaults(func=cmd_prune)

    evaluation = sub.add_parser("eval", help="evaluate a saved model (optionally against a reference) on held-out data")
    evaluation.add_argument("model", metavar="MODEL", help="model folder or Hub id to evaluate; the data settings of a "
                            "snows-hf output's recipe.yaml are the defaults, so its held-out rows are evaluated")
    evaluation.add_argument("--reference", help="a second model (the dense one) to evaluate on the same samples")
    _data_options(evaluation)
    _add(evaluation, PruneConfig, "batch_size", type=_positive_int)
    _add(evaluation, PruneConfig, "device")
    evaluation.add_argument("--dtype", choices=["auto", "float32", "float16", "bfloat16"], default="auto",
                            help="precision to run in (default auto: the checkpoint's own; with --sparse-inference "
                                 "on a GPU, bfloat16 for float32 checkpoints)")
    evaluation.add_argument("--sparse-inference", action="store_true",
                            help="run MODEL's 2:4 linear layers on PyTorch's sparse GPU kernels (cuSPARSELt or CUTLASS; "
                                 "NVIDIA GPUs of compute capability 8.0+), print which were converted and why others "
                                 "were not, and report throughput; elsewhere the model runs unchanged")
    evaluation.add_argument("--json", metavar="FILE", help="also write the figures to this JSON file")
    evaluation.add_argument("--trust-remote-code", action="store_true", help="allow model code from the Hub (off by default)")
    _allow_pickle(evaluation)
    _common(evaluation)
    evaluation.set_defaults(func=cmd_eval)

    push = sub.add_parser("push", help="push a saved output folder to the Hugging Face Hub")
    push.add_argument("model", metavar="DIR", help="the folder to push")
    push.add_argument("repo", metavar="REPO", help="Hub repo id (NAME or NAMESPACE/NAME); created if missing")
    _push_options(push)
    _common(push)
    push.set_defaults(func=cmd_push)

    convert = sub.add_parser("convert", help="rewrite a snows-hf output in the dense or the compact format")
    convert.add_argument("model", metavar="DIR", help="a folder written by snows-hf prune")
    convert.add_argument("--to", required=True, choices=["dense", "compact"], help="the format to write")
    convert.add_argument("--output-dir", help="where to write (default: DIR-FORMAT)")
    convert.add_argument("--overwrite", action="store_true", help="replace an earlier snows-hf output folder (never DIR itself)")
    convert.add_argument("--trust-remote-code", action="store_true", help="allow model code from the folder (off by default)")
    _common(convert)
    convert.set_defaults(func=cmd_convert)

    inspect = sub.add_parser("inspect", help="per-layer sparsity and pattern check, format, metadata and size of a folder")
    inspect.add_argument("model", metavar="DIR", help="a folder written by snows-hf prune (or any model folder)")
    inspect.add_argument("--json", metavar="FILE", help="also write the findings to this JSON file")
    _allow_pickle(inspect)
    _common(inspect)
    inspect.set_defaults(func=cmd_inspect)

    recipes = sub.add_parser("recipes", help="list the bundled recipes (use one with prune --recipe NAME)")
    recipes.add_argument("name", metavar="NAME", nargs="?", help="print this recipe in full")
    _common(recipes)
    recipes.set_defaults(func=cmd_recipes)

    demo = sub.add_parser("demo", help="offline demo: prune all-MiniLM-L6-v2 on BBC News and compare")
    demo.add_argument("--output-dir", default="snows-hf-demo", help="where to save the pruned demo model (default: snows-hf-demo)")
    demo.add_argument("--overwrite", action="store_true", help="replace a non-empty output folder that is not an earlier demo")
    demo.add_argument("--num-samples", type=_positive_int, default=64, help="calibration sequences of 128 tokens (default: 64)")
    demo.add_argument("--eval-samples", type=_positive_int, default=300, help="held-out articles to compare on (default: 300)")
    _common(demo)
    demo.set_defaults(func=cmd_demo)
    return parser


def _allow_pickle(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--allow-pickle", action="store_true",
                        help="read pickle (.bin) weights when a model has no safetensors (weights only; off by default)")


def _push_options(parser: argparse.ArgumentParser, repo_flag: str | None = None, repo_help: str = "") -> None:
    if repo_flag:
        parser.add_argument(repo_flag, dest="push_to_hub", metavar="REPO", help=repo_help)
    parser.add_argument("--private", action="store_true", help="create the Hub repo as private")
    parser.add_argument("--token", help="Hub token (default: HF_TOKEN or the cached `hf auth login`); never written anywhere")


def _data_options(parser: argparse.ArgumentParser) -> None:
    from .calibration import CalibrationConfig

    group = parser.add_argument_group("data (calibration and held-out evaluation; they never overlap)")
    _add(group, CalibrationConfig, "dataset")
    _add(group, CalibrationConfig, "dataset_config")
    _add(group, CalibrationConfig, "split")
    _add(group, CalibrationConfig, "num_samples", type=_positive_int)
    _add(group, CalibrationConfig, "seq_len", type=_positive_int)
    _add(group, CalibrationConfig, "eval_samples", type=_positive_int)
    _add(group, CalibrationConfig, "text_column")
    _add(group, CalibrationConfig, "image_column")
    _add(group, CalibrationConfig, "label_column")
    _add(group, CalibrationConfig, "seed", type=int)
    group.add_argument("--no-streaming", dest="streaming", action="store_false", default=argparse.SUPPRESS,
                       help="download and prepare a Hub dataset's whole split before reading it (default: stream "
                       "only the rows used)")
    group.add_argument("--processor", help="tokenizer or image processor folder/id (default: the model's own)")


def _common(parser: argparse.ArgumentParser) -> None:
    noise = parser.add_mutually_exclusive_group()
    noise.add_argument("--quiet", action="store_true", help="print only warnings, errors and the result")
    noise.add_argument("--verbose", action="store_true", help="also print one line per pruned layer "
                       "(window loss before and after, CG iterations, seconds)")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")


def default_output_dir(model: str, sparsity: str) -> str:
    """``MODEL-NAME-pruned-2of4`` / ``...-pruned-50pct`` in the current folder."""
    name = model.rstrip("/").split("/")[-1] or "model"
    tag = re.sub(r"[^\w.-]", "", sparsity.replace(":", "of").replace("%", "pct"))
    return f"{name}-pruned-{tag}"


def _split_fields(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in vars(args).items() if k in names}


def cmd_prune(args: argparse.Namespace) -> int:
    """``snows-hf prune``: validate everything, load, calibrate, evaluate, prune, evaluate, save.

    Under ``torchrun`` or ``accelerate launch`` every process prunes its shard of the
    calibration micro-batches in step with the others; the main one evaluates, saves and pushes.
    """
    from .activations import check_offload_dir
    from .calibration import CalibrationConfig
    from .config import PruneConfig
    from .checkpoint import CheckpointError, RunCheckpoint
    from .devices import resolve_device
    from .distributed import start_processes
    from .export import check_output_dir, remove_stale_temporaries

    config, cal_cfg = _configs(args, PruneConfig, CalibrationConfig)
    if args.save_format == "compact":
        from .compact_format import check_compact_sparsity

        check_compact_sparsity(config.sparsity)  # refused now, not at save after the whole run
    if config.block_path is not None and not config.block_path.strip():
        raise ValueError("--block-path is empty; name the block list (e.g. model.layers) or leave it out to find it")
    if config.offload_dir is not None:
        check_offload_dir(config.offload_dir)
    if args.dry_run:
        return _dry_run(args, config, cal_cfg)
    device = resolve_device(config.device)  # an absent device fails before any loading
    output_dir = args.output_dir if args.output_dir is not None else default_output_dir(args.model, config.sparsity)
    check_output_dir(output_dir, args.overwrite, keep=[args.model])
    if config.offload_activations == "disk" and config.offload_dir is None:
        from pathlib import Path

        config.offload_dir = str(Path(os.path.realpath(output_dir)).parent)  # the output's filesystem
    checkpoint = RunCheckpoint(checkpoint_dir(output_dir), resume=args.resume)
    processes = start_processes(device)
    main = processes.is_main
    if main:  # one live run per output: a second one is refused, naming the first one's pid
        checkpoint.lock()
    try:
        checkpoint.check_resumable()  # before any loading
        if args.resume and not checkpoint.exists:
            logger.info("nothing to resume in %s: starting from the first block", checkpoint.folder)
        if main:  # what a killed save left, before the free space is measured
            remove_stale_temporaries(output_dir)
        else:  # the main process speaks for all
            logger.setLevel(logging.ERROR)
        with _placement(config, device, processes, output_dir) as load_options, _run_log() as log:
            return _prune_and_save(args, config, cal_cfg, output_dir, processes, load_options, checkpoint, log)
    except KeyboardInterrupt:
        if checkpoint.exists and main:
            print(f"snows-hf: the finished blocks are kept in {checkpoint.folder}; "
                  "rerun the same command with --resume to continue", file=sys.stderr)
        raise
    except CheckpointError as exc:  # resuming cannot get past it: the hint is to delete, not --resume
        text = _one_line(exc)
        if str(checkpoint.folder) not in text:
            text += f"; delete {checkpoint.folder} to start over (--resume cannot continue it)"
        raise CheckpointError(text) from exc
    except Exception as exc:
        if checkpoint.exists and main and checkpoint.state is not None:  # this run's blocks, not a refused one's
            full = isinstance(exc, OSError) and exc.errno == errno.ENOSPC  # resuming alone would fail again
            first = "free disk space, then " if full else ""
            raise RuntimeError(f"{_one_line(exc)} (the finished blocks are kept in {checkpoint.folder}: "
                               f"{first}rerun with --resume to continue)") from exc
        raise
    finally:
        checkpoint.release()


def _configs(args: argparse.Namespace, prune_cls: type, data_cls: type) -> tuple[Any, Any]:
    """The run's ``PruneConfig`` and ``CalibrationConfig``: the recipe's, if any, with the
    flags given on the command line on top (unset flags never override). Sets ``args.model``."""
    from .recipe import load_recipe

    from .recipe import bundled_recipes, recipe_for_model

    if args.model in bundled_recipes() and not os.path.exists(args.model):
        raise ValueError(f"{args.model!r} names a bundled recipe, not a model: run snows-hf prune --recipe {args.model}")
    prune_keys = set(prune_cls.flat_keys())  # the methods' options too: flags for another method's are ignored
    prune_fields = {k: v for k, v in vars(args).items() if k in prune_keys}
    data_fields = _split_fields(args, data_cls)
    if args.recipe is None and args.model and "dataset" not in data_fields:
        found = recipe_for_model(args.model, prune_fields.get("sparsity"))
        if found is not None:
            logger.info("%s is the model of the bundled recipe %s: it is the base of this run (flags override its "
                        "fields; snows-hf recipes %s shows it)", args.model, found.stem, found.stem)
            args.recipe = str(found)
    if args.recipe is None:
        base_prune, base_data, model = None, None, None
    else:
        base_prune, base_data, model = load_recipe(args.recipe)
    args.model = args.model or model
    if args.model is None:
        raise ValueError("MODEL is required (or a --recipe whose model: names one)")
    if base_prune is None and "sparsity" not in prune_fields:
        raise ValueError("--sparsity is required (or a --recipe with prune.sparsity)")
    prune = prune_cls.from_dict((base_prune.to_dict() if base_prune else {}) | prune_fields)
    data = dataclasses.replace(base_data, **data_fields) if base_data else data_cls(**data_fields)
    return prune, data


def _dry_run(args: argparse.Namespace, config: Any, cal_cfg: Any) -> int:
    """Print what ``prune`` would do: traced without weights (meta device) when the
    family's code allows, else on the loaded weights. Writes nothing."""
    from .calibration import random_calibration, with_default_dataset
    from .datasources import RANDOM
    from .loading import load_model
    from .plan import empty_model, plan_run

    model = empty_model(args.model, trust_remote_code=args.trust_remote_code)
    _check_seq_len(args, model)
    example = random_calibration(model, dataclasses.replace(cal_cfg, num_samples=1, dataset=RANDOM))
    cal_cfg = with_default_dataset(cal_cfg, model)
    source = "of random inputs (--dataset random)" if cal_cfg.dataset == RANDOM else f"of {cal_cfg.dataset}"
    ids = example.get("input_ids")
    size = f"{cal_cfg.num_samples} images" if ids is None else f"{cal_cfg.num_samples} x {ids.shape[1]} tokens"
    # Some mask code asks an all-ones attention mask for its values, which meta tensors
    # cannot give: without one it is all ones anyway. Only then are the weights read.
    bare = {k: v for k, v in example.items() if k != "attention_mask"}
    plan = None
    for inputs in (example, bare) if len(bare) < len(example) else (example,):
        try:
            plan = plan_run(model, config, inputs, f"{size} {source}", cal_cfg.num_samples)
            break
        except (RuntimeError, NotImplementedError) as exc:
            if "meta" not in str(exc).lower():
                raise
            reason = _one_line(exc)
    if plan is None:
        logger.info("this model's code needs values to run (%s): tracing on its weights", reason)
        model, _ = load_model(args.model, trust_remote_code=args.trust_remote_code, allow_pickle=args.allow_pickle)
        plan = plan_run(model, config, example, f"{size} {source}", cal_cfg.num_samples)
    print(plan.format())
    from .export import check_output_dir

    output_dir = args.output_dir if args.output_dir is not None else default_output_dir(args.model, config.sparsity)
    check_output_dir(output_dir, args.overwrite, keep=[args.model])  # what the run would refuse, said now
    print(f"\nwould save to {output_dir}")
    print("dry run: nothing was loaded beyond the config" + ("" if plan.traced_on == "meta" else " and weights")
          + ", nothing written")
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    """``snows-hf inspect DIR``: exit 0 when every layer follows its pattern, 1 when one breaks it."""
    from pathlib import Path

    from .inspection import inspect_folder
    from .report import dumps_json

    found = inspect_folder(args.model, allow_pickle=args.allow_pickle)
    print(found.format())
    if args.json:
        Path(args.json).write_text(dumps_json(dataclasses.asdict(found) | {"valid": found.valid}))
    return 0 if found.valid else 1


def cmd_recipes(args: argparse.Namespace) -> int:
    """``snows-hf recipes [NAME]``: the bundled recipes, one line each, or one in full."""
    from .recipe import bundled_recipes, load_recipe, recipe_summary, resolve_recipe

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


def checkpoint_dir(output_dir: str) -> str:
    """Where a run writing ``output_dir`` keeps its checkpoint (and its lock): a hidden
    folder beside the real output folder, so a symlink and its target share one.

    Example:
        >>> checkpoint_dir("/data/out")  # doctest: +SKIP
        '/data/.out.snows-hf-checkpoint'
    """
    from pathlib import Path

    out = Path(os.path.realpath(os.path.expanduser(output_dir)))
    return str(out.parent / f".{out.name}.snows-hf-checkpoint")


def _prune_and_save(args: argparse.Namespace, config: Any, cal_cfg: Any, output_dir: str, processes: Any,
                    load_options: dict[str, Any], checkpoint: Any, log: _RunLog) -> int:
    from .api import prune_
    from .data import prepare_run_data
    from .export import check_free_space, model_bytes, save_pruned
    from .loading import load_model
    from .methods import get_method
    from .recipe import recipe_dict

    main = processes.is_main
    phases = _Phases()
    with phases("load"):
        model, processor = load_model(args.model, trust_remote_code=args.trust_remote_code,
                                      allow_pickle=args.allow_pickle, **load_options)
        processor = _processor(args, model, processor)
    _check_seq_len(args, model)
    if main:  # the output and the checkpoint of its blocks, before hours of work rather than after
        check_free_space(output_dir, 2 * model_bytes(model))
    with phases("data"):
        fits_data = get_method(config.method)(config).fits_data
        data, cal_cfg = prepare_run_data(cal_cfg, model, processor, 0 if args.no_eval else cal_cfg.eval_samples, fits_data)
    evaluation = _Evaluation(data.evaluation, config.batch_size) if data.evaluation is not None and main else None
    if evaluation:
        with phases("dense eval"):
            evaluation.run("dense", model)
    with phases("prune"):
        report = prune_(model, config, data.calibration, progress=not args.quiet and main, checkpoint=checkpoint)
    if not main:
        processes.finish()
        return 0
    if evaluation:
        with phases("pruned eval"):
            evaluation.run("pruned", model)
    extra = {
        "source_model": args.model, "calibration": dataclasses.asdict(cal_cfg), "data": data.source,
        "evaluation": evaluation.figures() if evaluation else None, "phases": phases.seconds,
        "processes": processes.world_size,
    }
    with phases("save"):
        recipe = recipe_dict(config, cal_cfg, args.model)
        logger.info("saving to %s", output_dir)
        save_pruned(model, report, output_dir, processor, overwrite=args.overwrite, extra_report=extra, recipe=recipe,
                    save_format=args.save_format, extra_files={LOG_FILE: log.text()})
    checkpoint.remove()
    print(report.format_table(extra["evaluation"], phases.seconds))
    print(f"saved to {output_dir}")
    if args.push_to_hub:
        _push(output_dir, args.push_to_hub, args, saved=True)
    processes.finish()
    return 0


@contextlib.contextmanager
def _placement(config: Any, device: Any, processes: Any, output_dir: str) -> Iterator[dict[str, Any]]:
    """``from_pretrained`` options for ``--max-memory``: accelerate's ``device_map="auto"``
    within those limits, offloading the rest to a temporary folder beside the output
    (removed at the end, also on error)."""
    if config.max_memory is None:
        yield {}
        return
    from pathlib import Path

    from .activations import scratch_folder
    from .placement import parse_max_memory

    if processes.parallel:
        raise ValueError("--max-memory places one model across devices; it cannot be combined with several processes")
    max_memory = parse_max_memory(config.max_memory, device)
    with scratch_folder(".snows-hf-offload-", config.offload_dir or Path(output_dir).absolute().parent) as folder:
        yield {"device_map": "auto", "max_memory": max_memory, "offload_folder": str(folder)}


def cmd_push(args: argparse.Namespace) -> int:
    """``snows-hf push``: one commit of a saved folder to a Hub model repo."""
    _push(args.model, args.repo, args, saved=False)
    return 0


def _push(folder: str, repo: str, args: argparse.Namespace, saved: bool) -> None:
    from .hub import PushError, push_folder

    try:
        url = push_folder(folder, repo, token=args.token, private=args.private)
    except PushError as err:
        hint = f"; the model is saved in {folder}, retry with: snows-hf push {folder} {repo}" if saved else ""
        raise ValueError(f"{err}{hint}") from None
    print(f"pushed {folder} to {repo}: {url}")


def cmd_eval(args: argparse.Namespace) -> int:
    """``snows-hf eval``: one model (or a model and its reference) on held-out samples."""

    from .calibration import CalibrationConfig
    from .devices import resolve_device, semi_structured_support
    from .evaluation import check_reference
    from .loading import load_model, quieted
    from .report import dumps_json, format_metrics

    from .data import prepare_run_data
    from .datasources import RANDOM
    from .recipe import data_settings_of

    base = data_settings_of(args.model) if os.path.isdir(os.path.expanduser(args.model)) else None
    fields = _split_fields(args, CalibrationConfig)
    if base is not None:
        logger.info("data settings from %s's recipe.yaml (dataset %s, seed %d, the first %d samples calibrated): "
                    "evaluating the rows that run held out; flags override", args.model, base.dataset, base.seed,
                    base.num_samples)
    cal_cfg = dataclasses.replace(base, **fields) if base is not None else CalibrationConfig(**fields)
    batch_size = getattr(args, "batch_size", 8)
    device = resolve_device(getattr(args, "device", "auto"))  # an absent device fails before any loading
    options = {"trust_remote_code": args.trust_remote_code, "allow_pickle": args.allow_pickle}
    model, processor = load_model(args.model, dtype=args.dtype, **options)
    processor = _processor(args, model, processor)
    _check_seq_len(args, model)
    if cal_cfg.dataset == RANDOM:
        raise ValueError("eval needs real held-out data: random inputs have nothing to compare against")
    data, cal_cfg = prepare_run_data(cal_cfg, model, processor, cal_cfg.eval_samples, fits_data=False)
    if data.evaluation is None:
        raise ValueError("no held-out samples are left after the calibration rows; lower --num-samples")
    dtype = _eval_dtype(args, model, device, semi_structured_support(device) is None)
    evaluation = _Evaluation(data.evaluation, batch_size, timed=True)
    if args.reference:  # first, alone on the device, in the same precision as MODEL
        reference, _ = load_model(args.reference, dtype=args.dtype, processor=False, **options)
        check_reference(model, reference)
        evaluation.run("dense", reference.to(device=device, dtype=dtype))
        del reference
    model.to(device=device, dtype=dtype)
    sparse = None
    if args.sparse_inference:
        from .sparse_inference import sparse_inference_

        with quieted("snows_hf.sparse_inference"):  # its warning repeats the summary printed below
            sparse = sparse_inference_(model)
        print(sparse.format())
    evaluation.run("pruned" if args.reference else "model", model)
    figures = evaluation.figures() | {"data": data.source, "model_path": args.model, "reference_path": args.reference,
                                      "device": str(device), "dtype": str(dtype).replace("torch.", "")}
    if sparse is not None:
        figures["sparse_inference"] = sparse.to_dict()
    print(format_metrics(figures, columns=("dense", "pruned") if args.reference else ("model",),
                         headers=("reference", "model") if args.reference else ("model",)))
    if args.json:
        with open(args.json, "w") as fh:
            fh.write(dumps_json(figures))
    return 0


def _eval_dtype(args: argparse.Namespace, model: Any, device: Any, kernels: bool) -> Any:
    """The precision ``eval`` runs in: ``--dtype``, else the checkpoint's, except that
    ``--sparse-inference`` on a GPU with 2:4 kernels runs float32 checkpoints in bfloat16
    (the kernels' precision, and float16's range problems avoided)."""
    import torch

    dtype = model.dtype
    if args.sparse_inference and args.dtype == "auto" and kernels and dtype == torch.float32:
        logger.info("--sparse-inference: running the float32 checkpoint in bfloat16, the precision of the 2:4 "
                    "kernels (--dtype float16 or float32 to choose otherwise)")
        return torch.bfloat16
    return dtype


def cmd_convert(args: argparse.Namespace) -> int:
    """``snows-hf convert``: the same pruned weights, bit for bit, in the other format."""
    import json
    from pathlib import Path

    from .export import check_output_dir, save_pruned
    from .loading import load_model
    from .recipe import read_recipe_yaml
    from .report import PruneReport

    source = Path(args.model)
    try:
        payload = json.loads((source / "report.json").read_text())
    except (OSError, ValueError):
        raise ValueError(f"{str(source)!r} has no readable report.json: not a snows-hf output folder") from None
    output_dir = args.output_dir if args.output_dir is not None else f"{str(source).rstrip('/')}-{args.to}"
    check_output_dir(output_dir, args.overwrite, keep=[source])  # never DIR itself: it is the input
    try:  # before any weight is read
        report = PruneReport.from_dict(payload)
    except (AttributeError, KeyError, TypeError, ValueError) as err:
        missing = f"no {err}" if isinstance(err, KeyError) else "fields missing or of the wrong kind"
        raise ValueError(f"{str(source / 'report.json')!r} is not a snows-hf report ({missing}): "
                         "convert reads folders written by snows-hf prune") from None
    model, processor = load_model(str(source), trust_remote_code=args.trust_remote_code)
    extra = {k: v for k, v in payload.items() if k not in report.to_dict()}
    recipe_file = source / "recipe.yaml"
    recipe = read_recipe_yaml(recipe_file) if recipe_file.exists() else None
    if isinstance(recipe, dict):
        recipe.pop("snows_hf_version", None)
    save_pruned(model, report, output_dir, processor, overwrite=args.overwrite, extra_report=extra,
                recipe=recipe, save_format=args.to)
    print(f"wrote {args.to} checkpoint of {len(report.layers)} pruned layers to {output_dir}")
    return 0


class _Phases:
    """Wall time per phase of a run, in order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextlib.contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = round(time.perf_counter() - start, 3)


class _Evaluation:
    """Dense and pruned figures on the same held-out samples."""

    def __init__(self, eval_set: Any, batch_size: int, timed: bool = False) -> None:
        self.eval_set, self.batch_size, self.timed = eval_set, batch_size, timed
        self.outputs: dict[str, Any] = {}
        self.metrics: dict[str, dict[str, float]] = {}

    def run(self, label: str, model: Any) -> None:
        from .evaluation import compute_metrics, model_outputs, throughput

        if self.timed:
            outputs, per_second = throughput(model, self.eval_set, self.batch_size)
        else:
            outputs, per_second = model_outputs(model, self.eval_set, self.batch_size), None
        reference = self.outputs.get("dense")
        self.metrics[label] = compute_metrics(self.eval_set, outputs, reference)
        if per_second is not None:
            self.metrics[label]["samples_per_second"] = per_second
        self.outputs[label] = outputs

    def figures(self) -> dict[str, Any]:
        return {"task": self.eval_set.task, "samples": len(self.eval_set), **self.metrics}


def _check_seq_len(args: argparse.Namespace, model: Any) -> None:
    """A --seq-len given here beyond the model's positions is refused (the default is shortened)."""
    from .calibration import fit_seq_len

    if getattr(args, "seq_len", None) is not None:
        fit_seq_len(args.seq_len, model, explicit=True)


def _processor(args: argparse.Namespace, model: Any, processor: Any) -> Any:
    if not getattr(args, "processor", None):
        return processor
    from .loading import load_processor

    loaded = load_processor(args.processor, model, trust_remote_code=getattr(args, "trust_remote_code", False))
    if loaded is None:
        raise ValueError(f"--processor {args.processor!r} holds no tokenizer or image processor for this model")
    return loaded


def cmd_demo(args: argparse.Namespace) -> int:
    """``snows-hf demo``: the offline end-to-end run on a real model."""
    from .demo import DemoSettings, format_table, run_demo

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


LOG_FILE = "snows-hf.log"


class _RunLog(logging.Handler):
    """Every record of a run, timestamped, kept in memory until the output is saved
    (so a refused or failed run leaves no file behind)."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


@contextlib.contextmanager
def _run_log() -> Iterator[_RunLog]:
    handler = _RunLog()
    logger.addHandler(handler)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)


class _Console(logging.Handler):
    """stderr through ``tqdm.write``, so lines land above the progress bars, never through
    them; per-layer lines (``snows_hf.layers``) only when ``verbose``."""

    def __init__(self, verbose: bool):
        super().__init__()
        self.verbose = verbose

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "snows_hf.layers" and not self.verbose:
            return
        from tqdm.auto import tqdm

        try:
            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def _configure_logging(quiet: bool, debug: bool, verbose: bool = False) -> None:
    """Our own messages to stderr, one line each; other libraries keep their settings.
    The logger itself passes everything from INFO up, so a log file gets it all."""
    handler = _Console(verbose or debug)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s" if debug else "snows-hf: %(message)s"))
    handler.setLevel(logging.DEBUG if debug else logging.WARNING if quiet else logging.INFO)
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    logger.propagate = False
    if quiet:
        import transformers

        transformers.utils.logging.disable_progress_bar()


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (a scheduler's stop, ``kill``) ends the command like Ctrl-C: cleanly, keeping
    what is saved. The previous handler comes back after; off the main thread nothing changes."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``snows-hf`` console script.

    Example:
        >>> main(["prune", "my-vit", "--sparsity", "2:4"])  # doctest: +SKIP
        0
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    _configure_logging(args.quiet, args.debug, getattr(args, "verbose", False))
    try:
        with _sigterm_as_interrupt():
            return args.func(args)
    except KeyboardInterrupt:
        print("snows-hf: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # every failure reaches the user as one line
        if args.debug:
            raise
        print(f"snows-hf: error: {_one_line(exc)}", file=sys.stderr)
        return 1
