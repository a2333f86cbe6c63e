"""Write an sd-scripts training script's arguments in tests/sd_scripts_*args.json's form (run by hand, not a test).

    cd SD_SCRIPTS && python /path/to/tests/sd_scripts_dump_args.py anima_train_network > args.json

Imports the script's module from the current folder (an sd-scripts checkout, its requirements installed), builds
its parser with `setup_parser()` and keeps, per option, what a --config_file value must fit: type, action, nargs,
choices. On sdxl_train_network at 48d368fa it gives tests/sd_scripts_args.json's "arguments" exactly;
tests/sd_scripts_anima_args.json's come from anima_train_network.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

FLAGS = {argparse._StoreTrueAction: "store_true", argparse._StoreFalseAction: "store_false",
         argparse._StoreConstAction: "store_const"}


def spec(action: argparse.Action) -> dict:
    flag = FLAGS.get(type(action))
    out: dict = {"action": flag} if flag else {"type": getattr(action.type, "__name__", "str")}
    if not flag and action.nargs is not None:
        out["nargs"] = action.nargs
    if action.choices is not None:
        out["choices"] = list(action.choices)
    return out


def main(script: str) -> dict:
    sys.path.insert(0, os.getcwd())
    parser = importlib.import_module(script).setup_parser()
    return dict(sorted((a.dest, spec(a)) for a in parser._actions if a.option_strings and a.dest != "help"))


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1]), indent=1))
