"""The command line of the data-induced-prior experiment: ``python -m trip.induced RUN_DIR --kind ... --out DIR``."""

from __future__ import annotations

import argparse
import logging

from trip.config import ConfigError
from trip.induced import __doc__ as DOC
from trip.induced.config import KINDS, load_induced_config
from trip.induced.experiment import run_induced, summary_line
from trip.io import read_yaml_mapping


# -- command line ----------------------------------------------------------------------
def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m trip.induced", description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir", help="a finished GAN run directory written by trip.train")
    parser.add_argument("--kind", nargs="+", choices=KINDS, default=["trip"],
                        help="induced prior(s): pgan, trip, and original (the control)")
    parser.add_argument("--out", required=True, help="output directory (the run directory is only read)")
    parser.add_argument("--config", help="a YAML file of induced-prior settings (InducedConfig)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides, e.g. continue_steps=100 pgan.steps=500 trip.core_size=4")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        raw = read_yaml_mapping(args.config, "induced config") if args.config else {}
        cfg = load_induced_config(raw, args.set)
        for kind in args.kind:
            out = run_induced(args.run_dir, kind, cfg, args.out, args.device, progress=not args.no_progress)
            print(summary_line(out))
    except (ConfigError, FileNotFoundError, RuntimeError) as err:
        parser.exit(2, f"error: {err}\n")

