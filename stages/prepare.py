"""DVC stage ``prepare``: the prepared datasets and FID reference statistics of every run.

    python -m stages.prepare [--params params.yaml]
"""

from __future__ import annotations

import logging

from stages.common import start
from trip.evaluate import reference_statistics
from trip.train import load_data, resolve_device

log = logging.getLogger("stages.prepare")


def main(argv=None) -> None:
    grid = start(__doc__, argv)
    done = set()
    for cfg in grid.runs.values():
        key = (cfg.data.name, cfg.data.image_size, repr(sorted(cfg.data.options.items())), cfg.eval.fid_samples,
               cfg.eval.fid_split)
        if key in done:
            continue
        done.add(key)
        train, test = load_data(cfg)
        log.info("prepared %s: %d train / %d test images", cfg.data.name, len(train.images), len(test.images))
        _, count, _ = reference_statistics(cfg, cfg.eval, train, test, resolve_device(cfg.device))
        log.info("FID reference statistics of %s/%s ready (n=%d)", cfg.data.name, cfg.eval.fid_split, count)


if __name__ == "__main__":
    main()
