"""Relearn suite: attack specs, folds by person, trajectory aggregation, copies, LoRA, end to end."""

import copy
import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from bench.attacks import (AttackConfigError, AttackSpec, Fold, Trajectory, attack_folds, max_over_trajectory, parse_attacks,
                           person_folds, pooled_curve, run_attack, worst_over_grid, wrong_before)
from bench.run import run
from bench.suites import SuiteContext
from bench.suites import relearn as relearn_suite
from tests.conftest import compose_config

FAST = {"lrs": [1e-2], "steps": 4, "eval_steps": [0, 2, 4], "batch_size": 4, "repeats": 1}
ATTACKS = ("harmful", "rtt", "benign", "benign_qa", "lora")
# The default attacks shrunk to the micro world (2 forget people), a few steps and one repeat.
MICRO_ATTACKS = ["attack.rtt.folds=2"] + [f"attack.{a}.{k}={v}".replace(" ", "") for a in ATTACKS for k, v in FAST.items()]


pytestmark = pytest.mark.usefixtures("one_thread")  # tests/conftest.py


def test_default_attack_configs_parse_and_fit_the_default_world():
    cfg = compose_config(micro=False)
    specs = parse_attacks(OmegaConf.to_container(cfg.suite_settings.relearn.attacks, resolve=True))
    names = [n for s in specs for n, _ in s.variants()]
    assert names == ["harmful_p0.1", "harmful_p0.3", "rtt", "benign", "benign_qa", "lora_p0.3"]
    from hydra.utils import instantiate
    bench = instantiate(cfg.benchmark, _convert_="all")
    for s in specs:
        s.check_world(bench)
    assert [s.name for s in parse_attacks(compose_config("attack=[rtt]", micro=False).attack)] == ["rtt"]


@pytest.mark.parametrize("raw, needle", [
    ({"data": "forget_folds", "lrs": [1e-3], "steps": 5}, "folds >= 2"),
    ({"data": "forget_fraction", "fractions": [1.5], "lrs": [1e-3], "steps": 5}, "fractions"),
    ({"data": "benign", "lrs": [], "steps": 5}, "lrs"),
    ({"data": "benign", "lrs": [1e-3], "steps": 5, "eval_steps": [0, 9]}, "eval_steps"),
    ({"data": "benign", "lrs": [1e-3], "steps": 5, "finetune": "qlora"}, "finetune"),
    ({"data": "benign", "lrs": [1e-3], "steps": 5, "lr": 1e-3}, "unknown key"),
    ({"data": "elsewhere", "lrs": [1e-3], "steps": 5}, "data must be"),
])
def test_bad_attack_specs_fail_before_compute(raw, needle):
    with pytest.raises(AttackConfigError, match=needle):
        AttackSpec.from_config("x", raw)


def test_world_checks_run_before_compute(micro_bench, tmp_path):
    spec = AttackSpec.from_config("rtt", {"data": "forget_folds", "folds": 4, "lrs": [1e-3], "steps": 5})
    with pytest.raises(AttackConfigError, match="folds <= 2"):
        spec.check_world(micro_bench)
    # The runner checks suite settings before it trains anything (no cache dir gets created).
    cfg = compose_config(f"cache_dir={tmp_path / 'cache'}", "suites=[relearn]")
    with pytest.raises(AttackConfigError, match="folds"):
        run(cfg, tmp_path / "run", "ga")
    assert not (tmp_path / "cache").exists()


def test_folds_by_person_are_disjoint_and_cover_the_forget_split():
    from bench.world import synthetic_world
    bench = synthetic_world(seed=0, n_people=40, forget_fraction=0.25, holdout_fraction=0.1, n_relations=3,
                            n_general_facts=2, n_general_text=2, n_heldout_text=1)
    forget = {it.id for it in bench.split("forget")}
    people = bench.groups("forget")
    folds = person_folds(people, 4)
    assert sorted(p for f in folds for p in f) == sorted(people) and max(map(len, folds)) - min(map(len, folds)) <= 1
    rtt = AttackSpec.from_config("rtt", {"data": "forget_folds", "folds": 4, "lrs": [1e-3], "steps": 5})
    for repeat in (0, 1):
        cut = attack_folds(rtt, bench, seed=0, repeat=repeat)
        held = [it.id for f in cut for it in f.heldout]
        assert sorted(held) == sorted(forget)  # every forget fact scored exactly once
        for f in cut:
            train_people, held_people = {it.group for it in f.train_items}, {it.group for it in f.heldout}
            assert not train_people & held_people  # split by person
            assert {it.id for it in f.train_items} | {it.id for it in f.heldout} == forget
    harmful = AttackSpec.from_config("harmful", {"data": "forget_fraction", "fractions": [0.1, 0.3], "lrs": [1e-3], "steps": 5})
    (small,), (large,) = attack_folds(harmful, bench, 0, 0, 0.1), attack_folds(harmful, bench, 0, 0, 0.3)
    assert len({it.group for it in small.train_items}) == 1 and len({it.group for it in large.train_items}) == 3
    assert {it.group for it in small.train_items} <= {it.group for it in large.train_items}
    for f in (small, large):
        assert not {it.group for it in f.train_items} & {it.group for it in f.heldout}
        assert {it.id for it in f.train_items} | {it.id for it in f.heldout} == forget
    benign = AttackSpec.from_config("benign", {"data": "benign", "sources": ["retain"], "lrs": [1e-3], "steps": 5})
    (b,) = attack_folds(benign, bench, 0, 0)
    assert {it.id for it in b.heldout} == forget and all(it.split == "retain" for it in b.train_items)


def _traj(steps, rows):
    arr = np.array(rows, bool)
    return Trajectory(steps=steps, mcq=arr, em=arr, train_mcq=1.0, train_em=1.0, losses=[], diverged=False, wall_s=0.0)


def test_max_over_trajectory_and_worst_over_grid_on_scripted_scores():
    assert max_over_trajectory([0.25, 0.5, 0.375, 0.25]) == 0.5
    assert max_over_trajectory([0.1, float("nan"), 0.3]) == 0.3
    grid = {1e-4: [0.25, 0.30, 0.35], 1e-3: [0.25, 0.60, 0.40], 1e-2: [0.25, 0.55, 0.60]}
    assert worst_over_grid(grid) == (1e-3, 0.60)  # ties keep the first lr in grid order
    assert worst_over_grid({1e-4: [0.2, 0.4], 1e-3: [0.1, 0.7]}) == (1e-3, 0.7)
    # Folds are pooled over items: fold A (2 items) and fold B (1 item) at steps 0, 2, 4.
    a = _traj([0, 2, 4], [[0, 0], [1, 0], [1, 1]])
    b = _traj([0, 2, 4], [[1], [0], [0]])
    assert pooled_curve([a, b], [0, 2, 4], "mcq").tolist() == pytest.approx([1 / 3, 1 / 3, 2 / 3])
    # A fold that stopped early (diverged) leaves nan where it has no score; the max ignores it.
    c = _traj([0, 2], [[1], [1]])
    curve = pooled_curve([a, c], [0, 2, 4], "mcq")
    assert np.isnan(curve[2]) and max_over_trajectory(curve) == pytest.approx(2 / 3)


def _outcome(curves, before, reference, n_heldout=4, key="mcq_acc"):
    """An Outcome with scripted per-repeat curves (rows: repeats) for one lr."""
    spec = AttackSpec.from_config("rtt", {"data": "forget_folds", "folds": 2, "lrs": list(curves), "steps": 4,
                                          "eval_steps": [0, 2, 4], "repeats": len(before)})
    out = relearn_suite.Outcome("rtt", spec, n_heldout=n_heldout, before=before, reference=reference, n_wrong=[2] * len(before))
    out.curves = {k: {lr: np.array(c, float) for lr, c in curves.items()} for k in relearn_suite.KEYS}
    return out


def test_repeats_score_the_mean_of_each_repeats_maximum_and_record_the_spread():
    # two repeats at two lrs: repeat maxima 0.5 and 1.0 (mean 0.75) at lr 1e-3; 0.75 and 0.5 (mean 0.625) at 1e-2
    out = _outcome({1e-3: [[0.25, 0.5, 0.25], [0.0, 0.75, 1.0]], 1e-2: [[0.25, 0.75, 0.5], [0.0, 0.5, 0.5]]},
                   before=[0.25, 0.0], reference=[1.0, 1.0])
    assert out.worst("mcq_acc") == (1e-3, 0.75)  # not the max of the mean curve (0.625): each run's attacker keeps its best step
    rows = {r.metric: r.value for r in relearn_suite.outcome_rows("unlearned", out, None)}
    assert rows["mcq_acc"] == 0.75 and rows["attack_lr@mcq_acc"] == 1e-3 and rows["mcq_acc@lr0.01"] == 0.625
    assert rows["mcq_acc@repeat_std"] == pytest.approx(np.std([0.5, 1.0], ddof=1))
    assert (rows["mcq_acc@repeat_min"], rows["mcq_acc@repeat_max"]) == (0.5, 1.0)
    assert rows["mcq_acc@step2"] == pytest.approx(0.625)  # the curve is the mean over repeats at the worst lr
    summary = {r.metric: r.value for r in relearn_suite.summary_rows("unlearned", [out], None)}
    assert summary["mcq_acc@rtt"] == 0.75 and summary["mcq_acc_repeat_std@rtt"] == rows["mcq_acc@repeat_std"]
    one = _outcome({1e-3: [[0.25, 0.5, 0.25]]}, before=[0.25], reference=[1.0])
    assert not any("repeat_" in r.metric for r in relearn_suite.outcome_rows("unlearned", one, None))  # no spread of one


def test_recovered_share_is_deeb_and_rogers_ratio_or_nan_with_a_reason():
    out = _outcome({1e-3: [[0.25, 0.5, 0.75], [0.25, 0.25, 0.5]]}, before=[0.25, 0.25], reference=[1.0, 0.75])
    share, reason = out.recovered_share()
    assert share == pytest.approx((0.625 - 0.25) / (0.875 - 0.25)) and reason == ""
    flat = _outcome({1e-3: [[0.5, 0.75, 0.75]]}, before=[0.5], reference=[0.5])  # nothing was unlearned: 0 / 0
    share, reason = flat.recovered_share()
    assert np.isnan(share) and "nothing to recover" in reason
    rows = {r.metric: r.value for r in relearn_suite.outcome_rows("unlearned", flat, None)}
    assert np.isnan(rows["recovered_share"])  # recorded as an explicit NaN (null in record.json), not a default


def test_wrong_only_pools_the_facts_wrong_before_the_attack():
    # fold A: items 0, 1 wrong at step 0, item 2 right; fold B: item 0 wrong
    a = _traj([0, 2, 4], [[0, 0, 1], [1, 0, 1], [1, 1, 1]])
    b = _traj([0, 2, 4], [[0], [0], [1]])
    masks = [wrong_before(a), wrong_before(b)]
    assert masks[0].tolist() == [True, True, False] and masks[1].tolist() == [True]
    assert pooled_curve([a, b], [0, 2, 4], "mcq", masks).tolist() == pytest.approx([0, 1 / 3, 1])
    none_wrong = _traj([0, 2], [[1], [1]])
    assert np.isnan(pooled_curve([none_wrong], [0, 2], "mcq", [wrong_before(none_wrong)])).all()  # empty subset: nan


def test_micro_repeats_wrong_only_and_recovered_share_rows_end_to_end(tmp_path):
    """repeats > 1 on the micro experiment: per-repeat examples back every aggregate row."""
    cfg = compose_config(f"cache_dir={tmp_path / 'cache'}", "suites=[knowledge,relearn]", "threads=1", "method.lr=1e-2", "attack=[rtt]",
                         "attack.rtt.folds=2", *[f"attack.rtt.{k}={v}".replace(" ", "") for k, v in {**FAST, "repeats": 2}.items()])
    record = run(cfg, tmp_path / "run", "ga")
    rows = {(r["stage"], r["metric"]): r for r in record["rows"] if r["suite"] == "relearn"}
    examples = [json.loads(line) for line in (tmp_path / "run" / "examples.jsonl").read_text().splitlines()]
    reps = [e for e in examples if e.get("kind") == "repeat" and e["stage"] == "attacked/rtt"]
    assert len(reps) == 2
    assert rows[("attacked/rtt", "mcq_acc")]["value"] == pytest.approx(np.mean([e["mcq_acc"] for e in reps]))
    assert rows[("attacked/rtt", "mcq_acc@repeat_max")]["value"] == max(e["mcq_acc"] for e in reps)
    wrong = rows[("attacked/rtt", "mcq_acc@wrong_only")]
    assert wrong["n"] == sum(e["n_wrong_before"] for e in reps) > 0
    assert rows[("attacked/rtt", "n_items@wrong_only")]["value"] == np.mean([e["n_wrong_before"] for e in reps])
    assert ("oracle_attacked/rtt", "mcq_acc@wrong_only") in rows and ("attacked/rtt", "recovery@wrong_only") in rows
    for stage in ("unlearned", "oracle"):
        assert (stage, "recovered_share@rtt") in rows and (stage, "mcq_acc@rtt@wrong_only") in rows
        assert (stage, "mcq_acc_repeat_std@rtt") in rows


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _harmful_fold(bench):
    spec = AttackSpec.from_config("h", {"data": "forget_fraction", "fractions": [0.5], **FAST})
    return spec, attack_folds(spec, bench, 0, 0, 0.5)[0]


def test_attack_never_modifies_the_model_it_was_given(fresh_micro, micro_bench, tokenizer):
    spec, fold = _harmful_fold(micro_bench)
    # A forward hook stands in for a method's wrapping (MRP): the attack keeps it on the copy.
    calls = []
    model = copy.deepcopy(fresh_micro)
    model.model.layers[0].register_forward_hook(lambda mod, inp, out: calls.append(1))
    before = _state(model)
    traj, attacked = run_attack(model, spec, fold, 1e-2, 0, micro_bench, tokenizer)
    after = _state(model)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert any(not torch.equal(v, attacked.state_dict()[k]) for k, v in before.items())
    assert attacked is not model and calls  # the hook ran during the attack
    assert traj.steps == [0, 2, 4] and traj.mcq.shape == (3, len(fold.heldout)) and not traj.diverged


def test_lora_attack_trains_only_adapters(fresh_micro, micro_bench, tokenizer):
    spec = AttackSpec.from_config("l", {"data": "forget_fraction", "fractions": [0.5], "finetune": "lora",
                                        "lora": {"r": 2, "alpha": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]}, **FAST})
    fold = attack_folds(spec, micro_bench, 0, 0, 0.5)[0]
    base = _state(fresh_micro)
    _, attacked = run_attack(fresh_micro, spec, fold, 1e-2, 0, micro_bench, tokenizer)
    state = attacked.state_dict()
    lora_keys = [k for k in state if "lora_" in k]
    assert lora_keys and all(("q_proj" in k or "v_proj" in k or "down_proj" in k) for k in lora_keys)
    assert any("lora_B" in k and state[k].abs().sum() > 0 for k in lora_keys)  # adapters moved (B starts at 0)
    for k, v in base.items():  # every base weight (peft renames wrapped ones to ...base_layer.weight)
        k2 = k if k in state else k.replace(".weight", ".base_layer.weight")
        assert torch.equal(v, state[k2]), k
    trainable = {n for n, p in attacked.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    assert all("lora_" not in k for k in _state(fresh_micro))  # the original got no adapters


def test_oracle_control_is_computed_once_per_run(fresh_micro, micro_bench, tokenizer, monkeypatch):
    ctx = SuiteContext(bench=micro_bench, tokenizer=tokenizer, oracle=fresh_micro,
                       settings={"relearn": {"attacks": {"harmful": {"data": "forget_fraction", "fractions": [0.5], **FAST}},
                                             "stages": ["target", "unlearned"]}})
    seen = []
    real = relearn_suite.attack_all
    monkeypatch.setattr(relearn_suite, "attack_all", lambda model, c: seen.append(model) or real(model, c))
    rows = []
    for stage in ("oracle", "target", "unlearned"):
        rows += relearn_suite.evaluate(fresh_micro, stage, ctx).rows
    assert seen.count(fresh_micro) == 3  # oracle once (memoised), then target and unlearned
    stages = [r.stage for r in rows if r.metric == "mcq_acc" and r.split == "forget_heldout"]
    assert stages == ["oracle_attacked/harmful_p0.5", "target_attacked/harmful_p0.5", "attacked/harmful_p0.5"]
    # The same model attacked as control and as stage: same data and seeds, so recovery is exactly 0.
    assert {r.value for r in rows if r.metric == "recovery"} == {0.0}


def test_oracle_control_is_cached_on_disk_and_invalidated_by_its_settings(fresh_micro, micro_bench, tokenizer, monkeypatch,
                                                                            tmp_path):
    def context(lr):
        attacks = {"harmful": {"data": "forget_fraction", "fractions": [0.5], **FAST, "lrs": [lr]}}
        return SuiteContext(bench=micro_bench, tokenizer=tokenizer, oracle=fresh_micro, cache_dir=str(tmp_path),
                            oracle_key="oracle-abc", settings={"relearn": {"attacks": attacks}})

    calls = []
    real = relearn_suite.attack_all
    monkeypatch.setattr(relearn_suite, "attack_all", lambda model, c: calls.append(1) or real(model, c))
    first = relearn_suite.evaluate(fresh_micro, "oracle", context(1e-2)).rows
    assert len(calls) == 1 and len(list((tmp_path / "relearn_control").glob("*.pkl"))) == 1
    again = relearn_suite.evaluate(fresh_micro, "oracle", context(1e-2)).rows  # a new run, same control: read from disk
    assert len(calls) == 1
    assert [r.as_dict() for r in again] == [r.as_dict() for r in first]
    relearn_suite.evaluate(fresh_micro, "oracle", context(2e-2))  # another lr grid: computed afresh
    assert len(calls) == 2 and len(list((tmp_path / "relearn_control").glob("*.pkl"))) == 2


@pytest.mark.slow  # moved out of the default run to keep it under 10 minutes on 2 cores; test_micro_repeats_wrong_only_and_recovered_share_rows_end_to_end stays default
def test_micro_end_to_end_writes_attacked_and_oracle_rows(tmp_path):
    cfg = compose_config(f"cache_dir={tmp_path / 'cache'}", "suites=[knowledge,relearn]", "suite_settings.relearn.stages=[unlearned]",
                         "threads=1", *MICRO_ATTACKS)
    record = run(cfg, tmp_path / "run", "ga")
    rows = {(r["stage"], r["split"], r["metric"]): r["value"] for r in record["rows"] if r["suite"] == "relearn"}
    for attack in ("harmful_p0.1", "harmful_p0.3", "rtt", "benign", "benign_qa", "lora_p0.3"):
        for stage in (f"attacked/{attack}", f"oracle_attacked/{attack}"):
            for metric in ("mcq_acc", "em", "mcq_acc@step0", "mcq_acc@step4", "em@step2", "mcq_acc@lr0.01", "wall_s"):
                assert (stage, "forget_heldout", metric) in rows, (stage, metric)
        worst = rows[(f"attacked/{attack}", "forget_heldout", "mcq_acc")]
        control = rows[(f"oracle_attacked/{attack}", "forget_heldout", "mcq_acc")]
        assert rows[(f"attacked/{attack}", "forget_heldout", "recovery")] == pytest.approx(worst - control)
        assert worst == max(rows[(f"attacked/{attack}", "forget_heldout", f"mcq_acc@step{s}")] for s in (0, 2, 4))
        assert (f"oracle_attacked/{attack}", "forget_heldout", "recovery") not in rows
    assert ("attacked/rtt", "forget_trained", "mcq_acc") in rows and ("attacked/benign_qa", "retain", "em") in rows
    assert not any(s.startswith("target_attacked/") for s, _, _ in rows)
    assert len([k for k in rows if k[0] == "oracle_attacked/rtt" and k[2] == "mcq_acc"]) == 2  # heldout + trained, once
    # Summary rows on the unlearned and oracle stages feed the report's relearn columns.
    assert ("unlearned", "forget_heldout", "recovery@worst") in rows and ("oracle", "forget_heldout", "mcq_acc@rtt") in rows
    from bench.report import records_frame, table
    text, _ = table(records_frame([record]))
    assert {"rtt relearn mcq", "max recovery"} <= set(text.columns) and text.loc["ga", "max recovery"] != ""
