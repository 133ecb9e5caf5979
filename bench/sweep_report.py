"""The sweep's report: a Hydra callback that, at the end of a multirun, writes and prints the sweep's tables
(``bench.report``) and, where asked, the seed plan of its relearn columns (``bench.power``). A module of its own
because it uses both (``bench.power`` builds on ``bench.report``)."""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback

from bench.errors import UserError
from bench.power import plan_summary, seed_plan
from bench.report import find_records, load_frame, report


def check_plan_half_width(value: Any) -> None:
    """``hydra.callbacks.report.plan_half_width``: null or a positive finite number (``bench.run`` checks it
    before a sweep starts; the callback again when Hydra makes it)."""
    if value is not None and not (isinstance(value, (int, float)) and not isinstance(value, bool)
                                  and math.isfinite(value) and value > 0):
        raise UserError(f"hydra.callbacks.report.plan_half_width must be a positive number (a 95% interval's "
                        f"half-width) or null; got {value!r}; e.g. hydra.callbacks.report.plan_half_width=0.10")


class ReportCallback(Callback):
    """Hydra callback: after a multirun, write and print the comparison table of the sweep.

    ``baseline`` (``hydra.callbacks.report.baseline=graddiff``): also the seed-paired table
    against that row. ``plan_half_width`` (the ``paper`` preset: 0.10): where the sweep has relearn columns and
    several seeds, also the seed plan for that 95% half-width on them (``bench.power.seed_plan``: which rows need
    more seeds, and the overrides that run them). Records older than the start of this multirun were complete
    already and skipped (resume).
    """

    def __init__(self, baseline: str | None = None, plan_half_width: float | None = None) -> None:
        check_plan_half_width(plan_half_width)
        self.baseline = baseline
        self.plan_half_width = plan_half_width

    def on_multirun_start(self, config, **kwargs) -> None:
        self._started = time.time()

    def on_multirun_end(self, config, **kwargs) -> None:
        from bench import distributed

        if not distributed.world().is_main:  # a multi-process sweep: rank 0 writes the tables
            return
        sweep_dir = Path(config.hydra.sweep.dir)
        records = find_records([sweep_dir]) if sweep_dir.exists() else []
        skipped = sum(p.stat().st_mtime < getattr(self, "_started", 0.0) for p in records)
        print(f"{len(records)} run records in {sweep_dir}; {skipped} were already complete and skipped, "
              f"{len(records) - skipped} computed now")
        if not records:
            print(f"no records under {sweep_dir}")
            return
        try:
            print(report([sweep_dir], sweep_dir, self.baseline))
        except UserError as err:  # the sweep's runs are done: say what was wrong in one line, no traceback
            if self.baseline is not None:  # a bad baseline: the main tables still help
                try:
                    print(report([sweep_dir], sweep_dir, None))
                except UserError:
                    pass
            print(f"bench.report: error: {' '.join(str(err).split())}")
            return
        print(f"tables written to {sweep_dir}/table.{{md,csv,tex}}, plots to {sweep_dir}/plots/")
        if self.plan_half_width is not None:
            self._print_seed_plan(sweep_dir)

    def _print_seed_plan(self, sweep_dir: Path) -> None:
        frame = load_frame([sweep_dir])
        if frame["seed"].nunique() < 2:
            return
        plan = seed_plan(frame, self.plan_half_width, ["relearn"])
        if not plan.empty:  # empty: the sweep ran no relearn suite
            print(plan_summary(plan, frame, self.baseline, self.plan_half_width, ["relearn"]))

