"""`python -m bench COMMAND ...`: list and train reference models, run sweeps, make reports, check baselines."""
from __future__ import annotations

import argparse
import importlib
import sys

from bench import plugins

# command -> (module defining add_<command>_arguments(parser) and main_<command>(args) -> exit code, help)
COMMANDS = {
    "list": ("bench.models_cmd", "list the reference models"),
    "train": ("bench.models_cmd", "train a reference model into the model cache"),
    "run": ("bench.run", "sweep models x solvers x NFE x seeds and record quality, error and cost"),
    "report": ("bench.report", "make the comparison report of one or more run directories"),
    "baseline": ("bench.baseline", "compare solver accuracy with results/baselines (or --update them)"),
    "check": ("bench.check", "check solvers' numerics: declared order, exact NFE, finite, batch-independent, "
                             "deterministic, convergent (exit 0 when all pass, 1 otherwise)"),
}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((a for a in argv if not a.startswith("-")), None)
    if chosen in plugins.COMMANDS and not {"-h", "--help"} & set(argv):
        try:  # before parsing: --solvers must know the names the plugins register
            plugins.load_all(plugins.from_argv(argv))
        except plugins.PluginError as e:
            print(f"python -m bench {chosen}: error: {e}", file=sys.stderr)
            return 2
    for name, (module, help_) in COMMANDS.items():
        p = sub.add_parser(name, help=help_, description=help_)
        if name == chosen:  # import only the module of the command asked for
            getattr(importlib.import_module(module), f"add_{name}_arguments")(p)
    args = parser.parse_args(argv)
    mod = importlib.import_module(COMMANDS[args.command][0])
    return int(getattr(mod, f"main_{args.command}")(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
