"""`drcl-fast train ...`, `eval`, `sweep`, `ablate`, `index`, `search` and `export` (also `python -m drcl_fast ...`)."""
from __future__ import annotations

import argparse
import difflib
import logging
import sys
from typing import Callable, Sequence

from drcl_fast.flags import add_train_flags
from drcl_fast.retrieval.eval_cli import add_eval_flags, run_eval
from drcl_fast.serving.commands import add_index_flags, add_search_flags
from drcl_fast.serving.export import add_export_flags
from drcl_fast.studies.flags import add_ablate_flags, add_sweep_flags


# Misspelt flags: plain argparse leaves a subcommand's unknown arguments to the top-level parser,
# which prints the top-level usage and no hint; here the subcommand's own parser reports them,
# with the closest known flag (`drcl-fast train: error: unrecognized arguments: --epocs 3;
# did you mean --epochs?`).
class Parser(argparse.ArgumentParser):
    """argparse.ArgumentParser; unknown arguments are reported by the command they were given to."""

    def parse_args(self, args: Sequence[str] | None = None,   # type: ignore[override]
                   namespace: argparse.Namespace | None = None) -> argparse.Namespace:
        parsed, unknown = self.parse_known_args(args, namespace)
        if unknown:
            reject(self._command_parser(parsed), unknown)
        return parsed

    def _command_parser(self, parsed: argparse.Namespace) -> "argparse.ArgumentParser":
        """The parser of the subcommand in `parsed` (this one if it has none)."""
        for action in self._actions:
            if isinstance(action, argparse._SubParsersAction):
                chosen = getattr(parsed, action.dest, None)
                if chosen in action.choices:
                    return action.choices[chosen]
        return self


def closest_flag(parser: argparse.ArgumentParser, given: str) -> str | None:
    """The known flag of `parser` nearest to `given` (ignoring case and any `=value`), if one is near."""
    flag = given.split("=", 1)[0]
    known: dict[str, str] = {}
    for option in parser._option_string_actions:      # every spelling, dashed aliases included
        known.setdefault(option.lower(), option)
    match = difflib.get_close_matches(flag.lower(), [k for k in known if k.startswith("--")], n=1, cutoff=0.6)
    return known[match[0]] if match else None


def reject(parser: argparse.ArgumentParser, unknown: list[str]) -> None:
    """Exit as argparse does (usage, message, status 2) naming `unknown` and the flags they come nearest."""
    hints = [(given.split("=", 1)[0], closest_flag(parser, given)) for given in unknown if given.startswith("-")]
    hints = [(flag, near) for flag, near in hints if near is not None]
    message = f"unrecognized argument{'s' if len(unknown) > 1 else ''}: {' '.join(unknown)}"
    if len(hints) == 1:
        message += f"; did you mean {hints[0][1]}?"
    elif hints:
        message += "; did you mean " + ", ".join(f"{near} for {flag}" for flag, near in hints) + "?"
    parser.error(message)


# Each command: its one-line help, its --help description, and what adds its flags.
COMMANDS: dict[str, tuple[str, str, Callable[[argparse.ArgumentParser], None]]] = {
    "train": ("train DRCL and evaluate MAP (the released main.py)",
              "Train DRCL on a dataset: SPL, RSC per modality, MAP@all and MAP@50.", add_train_flags),
    "eval": ("MAP and the other retrieval metrics (P@K, R@K, NDCG@K, ...) of saved embeddings",
             "Evaluate saved test embeddings in every direction: MAP@all and MAP@50, or the metrics --metrics names.",
             add_eval_flags),
    "sweep": ("train an alpha x beta grid, or each modality's prior (paper Fig. 3)",
              "The sensitivity study: every point is the train run with its alpha and beta (SPL once), or with "
              "--prior each, with each modality's prior and W0.", add_sweep_flags),
    "ablate": ("DRCL without SPL, without MRR, without FA, over seeds",
               "The ablations: the full train run and its variants without SPL (W0), without MRR (alpha = beta = 0) "
               "and without FA (gamma = 1).", add_ablate_flags),
    "index": ("encode a gallery once with a trained model, for drcl-fast search",
              "Encode gallery rows of one modality with a model folder and write an index: embeddings, ids and the "
              "model's fingerprint.", add_index_flags),
    "search": ("each query's k nearest gallery items (CSV or JSON lines)",
               "Encode query rows with the model that made the index and write, per query, the k nearest gallery "
               "items: rank, id and cosine score.", add_search_flags),
    "export": ("an encoder as a .pt2 or .onnx file, for serving without drcl_fast",
               "Write one modality's encoder (with its preprocessing) as a torch.export .pt2 or an ONNX file, then "
               "check it against the model on random rows.", add_export_flags),
}


def build_parser() -> argparse.ArgumentParser:
    """The `drcl-fast` parser; a command's misspelt flag is reported by that command, with the closest flag."""
    import drcl_fast
    parser = Parser(prog="drcl-fast", description="Deep Reversible Consistency Learning for cross-modal retrieval")
    parser.add_argument("--version", action="version", version=f"drcl-fast {drcl_fast.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (summary, description, add_flags) in COMMANDS.items():
        add_flags(commands.add_parser(name, help=summary, description=description))
    return parser


def run_train(args: argparse.Namespace) -> int:
    """Train as the flags say; under torchrun, this rank's share of the units (rank 0 reports)."""
    from drcl_fast.retrieval.report import format_table
    from drcl_fast.runtime import distributed
    from drcl_fast.runtime.runlog import output_lines, setup_run_logging
    from drcl_fast.solver import Solver

    with distributed.process_group():
        logger = setup_run_logging(args.out, args.datasets, args.quiet, distributed.rank())
        logger.debug("arguments: %s", vars(args))
        if distributed.active() and distributed.is_main():
            logger.info("torch.distributed: %d ranks (%s)", distributed.world_size(), distributed.backend_name())
        solver = Solver(args, logging.getLogger("drcl_fast.results"))
        solver.train()
        metrics = solver.result.metrics
        if not args.quiet and distributed.is_main():
            if metrics:
                print(format_table(metrics))
            print("\n".join(output_lines(args.out, args.datasets, solver.result)))
    return 0


def run_study(args: argparse.Namespace) -> int:
    """`sweep` or `ablate`, as the flags say; under torchrun the points spread over the ranks."""
    if args.command == "sweep":
        from drcl_fast.studies.sweep import run_sweep
        return run_sweep(args)
    from drcl_fast.studies.ablate import run_ablate
    return run_ablate(args)


def run_serving(args: argparse.Namespace) -> int:
    """`index`, `search` (drcl_fast/serving/commands.py) or `export` (drcl_fast/serving/export.py)."""
    from drcl_fast.serving import commands, export
    return {"index": commands.run_index, "search": commands.run_search, "export": export.run_export}[args.command](args)


# What a command is doing when a signal stops it outside training, for its one line.
STAGES = {"eval": "evaluation", "index": "indexing", "search": "search", "export": "export"}
RUNS = {"eval": run_eval, "sweep": run_study, "ablate": run_study, "index": run_serving, "search": run_serving,
        "export": run_serving}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    from drcl_fast.errors import DRCLError
    from drcl_fast.runtime import distributed, interrupt
    where = f" (rank {distributed.launched_rank()})" if distributed.launched_by_torchrun() else ""
    # SIGINT and SIGTERM stop the command at the units' next step, checkpoints saved (drcl_fast/runtime/interrupt.py);
    # the handlers are put back after.
    with interrupt.on_signals(), interrupt.stage(STAGES.get(args.command, "start-up")):
        try:
            return RUNS.get(args.command, run_train)(args)
        except interrupt.Interrupted as stop:
            # Stopped on request: one line (what stopped, how to continue), no traceback; 130 or 143.
            sys.stderr.write(f"drcl-fast {args.command}{where}: {stop}\n")
            return interrupt.exit_status(stop.signum)
        except DRCLError as error:
            # A problem with the input or the setup: say what and where, without a traceback.
            parser.exit(2, f"drcl-fast {args.command}{where}: error: {error}\n")


if __name__ == "__main__":
    sys.exit(main())
