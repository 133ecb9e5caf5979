"""The ``tune`` sweeper (``hydra/sweeper=tune``, set by ``+experiment=tune``): one command tunes every method.

A method's grid lives in its own YAML (``tune:``, bench.tune), so a Hydra basic sweep, one product over
command-line lists, cannot express it. This sweeper composes each swept method's config, expands its
``tune:`` block into jobs (grid point x tuning seed), checks everything before any job starts, hands the
jobs to the configured launcher in batches (``hydra/launcher=joblib`` or ``slurm`` scale it out unchanged),
and, once they are done, selects one setting per method (bench.tune) and writes ``tuned.yaml`` and
``tune_table.{md,csv}`` into the sweep folder (the tuned file also to ``out``).

Settings (``hydra.sweeper.*``): seeds (tuning seeds; reported runs must use others), rule (utility |
lowest_lr), reach_within (share of unlearn.max_steps within which a setting must reach the target to count),
utility (suite/split/metric maximised by the utility rule), out, max_batch_size, params
(``method: ga,npo``: the methods to tune; ``method=ga,npo`` on the command line does the same).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf

log = logging.getLogger(__name__)


class TuneSweeper(BasicSweeper):
    def __init__(self, seeds: Sequence[int], rule: str = "utility", utility: str = "knowledge/retain/model_utility",
                 out: Optional[str] = "results/tuned.yaml", max_batch_size: Optional[int] = None,
                 params: Optional[Dict[str, str]] = None, reach_within: float = 0.5) -> None:
        super().__init__(max_batch_size=max_batch_size, params=params)
        self.reach_within = reach_within
        self.seeds = list(seeds) if seeds is not None else []
        self.rule = rule
        self.utility = utility
        self.out = out

    def plan(self, arguments: List[str]):
        """The tuning plan from the sweep's params and command line; a UserError (one line) if it cannot work."""
        from bench import tune
        from bench.run import resolve

        seeds = tune.check_seeds(list(self.seeds))
        rule = tune.check_rule(self.rule)
        reach_within = tune.check_reach_within(self.reach_within)
        tune.parse_metric(self.utility)
        parser = OverridesParser.create(config_loader=self.hydra_context.config_loader)
        overrides = parser.parse_overrides([*self._parse_config(), *arguments])
        methods: list[str] = []
        fixed: dict[str, str] = {}
        grids: list[str] = []  # method.tune.* from the command line: they shape the grid, not a job
        for o in overrides:
            key = o.get_key_element()
            if key.lstrip("+~") == "seed":
                raise tune.TuneError(f"a tune sweep runs on hydra.sweeper.seeds={seeds}, not on {key}=...; "
                                     "set hydra.sweeper.seeds=[...] (reported runs use other seeds)")
            if key == "method":
                methods = (list(o.sweep_string_iterator()) if o.is_sweep_override() else [o.get_value_element_as_str()])
                continue
            if o.is_sweep_override():
                raise tune.TuneError(f"{key}: a tune sweep expands each method's tune: grid and does not sweep other "
                                     f"keys; give {key} one value (a separate tune run per value)")
            if key.lstrip("+~").startswith("method.tune"):
                # Each job already carries its grid point (method.<key>=...), so a job that also carried the grid
                # would land in a folder named after it, one that a later sweep over another grid would not find.
                grids.append(f"{key}={o.get_value_element_as_str()}")
                continue
            fixed[key] = f"{key}={o.get_value_element_as_str()}"
        if not methods:
            methods = [str(self.config.hydra.runtime.choices.get("method"))]
        spaces: dict[str, dict[str, list]] = {}
        context: dict[str, Any] = {}
        for method in methods:
            cfg = self.hydra_context.config_loader.load_sweep_config(self.config, [*fixed.values(), *grids,
                                                                                   f"method={method}", f"seed={seeds[0]}"])
            with_hydra = OmegaConf.to_container(cfg, resolve=False)
            with_hydra.pop("hydra", None)
            resolved = resolve(OmegaConf.create(with_hydra))
            tune.check_run_config(resolved, self.utility)
            if resolved.get("tuned") is not None:
                raise tune.TuneError(f"tuned={resolved['tuned']}: a tune sweep searches the method grids itself; "
                                     "set tuned=null")
            from bench.run import method_class

            block, raw = tune.split_tune(resolved["method"])
            space = tune.parse_space(method_class(block), block, raw)
            if not space:
                raise tune.TuneError(f"method {method!r} has no tune: block (conf/method/{method}.yaml); add one, "
                                     "e.g. tune: {lr: [1.0e-4, 3.0e-4]}, or leave it out (method=...)")
            spaces[method] = {k: list(v) for k, v in space.items()}
            context = tune.context_of(resolved)
        return tune.Plan(spaces, seeds, rule, self.utility, list(fixed.values()), context, reach_within)

    def sweep(self, arguments: List[str]) -> Any:
        from bench import tune
        from bench.errors import UserError, exit_with

        try:
            plan = self.plan(arguments)
        except UserError as err:
            exit_with(err, "bench.run")
        jobs = plan.jobs()
        sweep_dir = Path(self.config.hydra.sweep.dir)
        sweep_dir.mkdir(parents=True, exist_ok=True)
        OmegaConf.save(self.config, sweep_dir / "multirun.yaml")
        tune.write_plan(plan, sweep_dir)
        log.info("tune sweep: %d methods, %d settings, %d jobs on tuning seeds %s (rule %s, reached by step %g)",
                 len(plan.methods), len(jobs) // len(plan.seeds), len(jobs), plan.seeds, plan.rule, plan.step_limit)
        n = len(jobs) if self.max_batch_size in (None, -1) else self.max_batch_size
        self.overrides = [jobs[i:i + n] for i in range(0, len(jobs), n)]
        returns, dirs, idx = [], [], 0
        while not self.is_done():
            batch = self.get_job_batch()
            tic = time.perf_counter()
            self.validate_batch_is_legal(batch)
            log.debug("validated %d jobs in %.2fs", len(batch), time.perf_counter() - tic)
            results = self.launcher.launch(batch, initial_job_idx=idx)
            for r in results:
                _ = r.return_value  # a failed job re-raises here, as with the basic sweeper
                dirs.append(Path(r.hydra_cfg.hydra.runtime.output_dir))
            idx += len(batch)
            returns.append(results)
        from bench.report import load_record
        from bench.record import RECORD

        records = [load_record(d / RECORD) for d in dirs if (d / RECORD).is_file()]
        selection = tune.select(plan, records)
        print(tune.write_selection(selection, sweep_dir, self.out))
        print(f"tuned settings written to {sweep_dir / tune.TUNED}" + (f" and {self.out}" if self.out else "")
              + f"; the search table to {sweep_dir / tune.TABLE}.{{md,csv}}")
        return returns
