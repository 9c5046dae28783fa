"""DVC stage ``prepare``: the prepared datasets, FID reference statistics and domain-metric caches of every run.

The domain cache (``eval.domain_cache_dir``, see :mod:`trip.metrics.domain`) holds
the attribute classifier whose features the domain metrics use, the features of
the reference test images and the real floor, so that training (the domain FD
curve) and evaluation only read it.

    python -m stages.prepare [--params params.yaml]
"""

from __future__ import annotations

import json
import logging

from stages.common import start
from trip.evaluate import reference_statistics
from trip.metrics.domain import prepare_domain
from trip.train import load_data, resolve_device

log = logging.getLogger("stages.prepare")


def main(argv=None) -> None:
    grid = start(__doc__, argv)
    done, domain_done = set(), set()
    for cfg in grid.runs.values():
        key = (cfg.data.name, cfg.data.image_size, repr(sorted(cfg.data.options.items())), cfg.eval.fid_samples,
               cfg.eval.fid_split)
        domain_key = json.dumps([vars(cfg.data), vars(cfg.eval)], sort_keys=True, default=str)
        if key in done and domain_key in domain_done:
            continue
        train, test = load_data(cfg)
        if key not in done:
            done.add(key)
            log.info("prepared %s: %d train / %d test images", cfg.data.name, len(train.images), len(test.images))
            _, count, _ = reference_statistics(cfg, cfg.eval, train, test, resolve_device(cfg.device))
            log.info("FID reference statistics of %s/%s ready (n=%d)", cfg.data.name, cfg.eval.fid_split, count)
        if domain_key not in domain_done:
            domain_done.add(domain_key)
            if train.attributes.shape[1] > 0:  # the classifier needs attributes to learn
                reference = prepare_domain(cfg, test, resolve_device(cfg.device))
                log.info("domain metrics of %s ready: %s", cfg.data.name, reference.directory)

if __name__ == "__main__":
    main()
