"""How long after an actor's call ends its batch reaches the driver, by `iter_batches`' ``prefetch_batches``.

Why: extraction's driver writes each result batch as it comes (`acol.distributed.extract._ray_batches`). With
Ray Data 2.60's default prefetch (1), ``iter_batches(batch_size=None)`` hands a block over only once the next
block is out too, so every batch reached the driver one actor call late. An actor that sleeps ``--call-seconds``
per batch stands in for the model, so the lag has nothing to do with CPU contention.

    python benchmarks/ray_data_delivery_lag.py --batches 6 --call-seconds 2
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import pyarrow as pa
import ray


class _Sleeper:
    """A Ray Data actor whose call takes ``seconds`` and stamps the time it ended on its rows."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        time.sleep(self.seconds)
        return {"x": batch["x"], "ended": np.full(len(batch["x"]), time.time())}


def delivery_lags(batches: int, call_seconds: float, prefetch: int) -> list[float]:
    """Seconds from each call's end to the driver receiving its batch, in order."""
    ray.data.DataContext.get_current().execution_options.preserve_order = True
    blocks = [pa.table({"x": np.arange(4 * i, 4 * i + 4)}) for i in range(batches)]
    ds = ray.data.from_blocks(blocks).map_batches(
        _Sleeper,
        fn_constructor_kwargs={"seconds": call_seconds},
        compute=ray.data.ActorPoolStrategy(size=1),
        batch_size=4,
        batch_format="numpy",
    )
    return [
        round(time.time() - float(batch["ended"][0]), 3)
        for batch in ds.iter_batches(batch_size=None, batch_format="numpy", prefetch_batches=prefetch)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--batches", type=int, default=6)
    parser.add_argument("--call-seconds", type=float, default=2.0)
    parser.add_argument("--prefetch", type=int, nargs="+", default=[1, 0])
    args = parser.parse_args()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        for prefetch in args.prefetch:
            lags = delivery_lags(args.batches, args.call_seconds, prefetch)
            # the last batch has no next one to wait for: the median of the others is the steady lag
            summary = {"prefetch_batches": prefetch, "lags_s": lags, "median_s": statistics.median(lags[:-1])}
            print(json.dumps(summary))
    finally:
        ray.shutdown()


if __name__ == "__main__":
    main()
