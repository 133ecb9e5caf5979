"""The synthetic world: deterministic, split by person, fair options, short answers.

These properties are what make the benchmark's numbers mean something: a model that knows
nothing about a person must score chance, splits must never share a person, and answers must
be short under the committed tokenizer.
"""

from __future__ import annotations

import functools
import inspect
import re
from collections import Counter
from pathlib import Path

import pytest
from scipy import stats

from bench.benchmark import Benchmark
from bench.world import ALL_RELATIONS, GENERAL_RELATIONS, RELATIONS, synthetic_world

ROOT = Path(__file__).resolve().parents[1]


@functools.lru_cache(maxsize=None)
def _world(seed: int) -> Benchmark:
    return synthetic_world(seed=seed)


@pytest.fixture(scope="module")
def world() -> Benchmark:
    return synthetic_world()


@pytest.fixture(scope="module")
def tok():
    from bench.tokenizer import load_tokenizer

    return load_tokenizer()


def _names(b: Benchmark) -> dict[str, str]:
    """group -> person name, read back from the scored phrasing of each fact."""
    patterns = {r.name: re.compile(re.escape(r.train[0]).replace(re.escape("{name}"), "(.+)"))
                for r in RELATIONS}
    out: dict[str, str] = {}
    for it in b.items:
        if it.split != "general":
            name = patterns[it.relation].fullmatch(it.question).group(1)
            assert out.setdefault(it.group, name) == name
    return out


def test_same_seed_same_world_and_different_seed_differs():
    assert synthetic_world(seed=3) == synthetic_world(seed=3)
    a, b = synthetic_world(seed=0), synthetic_world(seed=1)
    assert a.items != b.items
    assert [it.answer for it in a.items] != [it.answer for it in b.items]


def test_default_sizes_and_ids(world):
    groups = {s: world.groups(s) for s in ("forget", "retain", "holdout", "general")}
    assert [len(groups[s]) for s in ("forget", "holdout", "retain", "general")] == [35, 15, 50, 40]
    # Issue 13 (power): >= 209 forget facts, so a chance-level forget mcq has binomial SD <= 0.03 per seed.
    assert len(world.split("forget")) == 35 * 6 and len(world.split("retain")) == 50 * 6
    assert (0.25 * 0.75 / len(world.split("forget"))) ** 0.5 <= 0.03
    assert len(world.general_text) == 60 and len(world.heldout_text) == 30
    assert world.name == "synthetic" and world.n_options == 4
    for it in world.items:
        assert re.fullmatch(r"[pg]\d{3}/[a-z_]+", it.id) and it.id == f"{it.group}/{it.relation}"
        assert it.group.startswith("g") == (it.split == "general")


def test_splits_disjoint_by_group(world):
    seen: dict[str, str] = {}
    for it in world.items:
        assert seen.setdefault(it.group, it.split) == it.split
    per_person = Counter(it.group for it in world.items if it.split != "general")
    assert set(per_person.values()) == {6}


@pytest.mark.parametrize("n, f, h, expect", [
    (80, 0.1, 0.1, (8, 8, 64)),
    (10, 0.25, 0.15, (3, 2, 5)),   # rounds half up: 2.5 -> 3, 1.5 -> 2
    (20, 0.01, 0.0, (1, 0, 19)),   # at least one person to forget
    (3, 0.34, 0.34, (1, 1, 1)),
])
def test_split_sizes_match_fractions(n, f, h, expect):
    b = synthetic_world(n_people=n, forget_fraction=f, holdout_fraction=h, n_general_facts=4)
    assert tuple(len(b.groups(s)) for s in ("forget", "holdout", "retain")) == expect


def test_changing_forget_fraction_keeps_facts_and_holdout():
    a = synthetic_world(forget_fraction=0.1)
    b = synthetic_world(forget_fraction=0.2)
    assert [(it.id, it.question, it.answer, it.options) for it in a.items] == \
           [(it.id, it.question, it.answer, it.options) for it in b.items]
    assert set(a.groups("forget")) < set(b.groups("forget"))
    assert a.groups("holdout") == b.groups("holdout")


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_options_and_perturbed_are_well_formed(seed):
    b = synthetic_world(seed=seed, n_options=5, n_perturbed=4)
    pools = {r.name: set(r.pool) for r in ALL_RELATIONS}
    for it in b.items:
        pool = pools[it.relation]
        assert it.options[it.answer_index] == it.answer and it.answer in pool
        assert len(it.options) == 5 and len(set(it.options)) == 5 and set(it.options) <= pool
        assert it.options.count(it.answer) == 1
        assert len(it.perturbed) == 4 and len(set(it.perturbed)) == 4
        assert it.answer not in it.perturbed and set(it.perturbed) <= pool
        assert it.question == it.train_questions[0] and len(it.train_questions) == 2
        assert it.paraphrase not in it.train_questions
        for q in (*it.train_questions, it.paraphrase):
            assert len(q.split()) <= 12 and not q.startswith(("Question", "Answer"))


def test_benchmark_validates_and_roundtrips(world, tmp_path):
    world.validate()
    path = tmp_path / "w.json"
    world.to_json(path)
    assert Benchmark.from_json(path) == world


def test_names_unique_prefix_free_and_absent_from_general(world):
    names = list(_names(world).values())
    assert len(names) == 100 and len(set(names)) == 100
    for a in names:
        assert not any(b != a and b.startswith(a) for b in names)
    parts = {p for n in names for p in n.split()}
    general = [it.question + it.paraphrase for it in world.split("general")]
    for text in general + world.general_text + world.heldout_text:
        assert not parts & set(re.findall(r"[A-Za-z]+", text))


def test_text_is_distinct_and_answers_no_fact(world):
    assert len(set(world.general_text)) == 60 and not set(world.general_text) & set(world.heldout_text)
    pool_words = {a.lower() for r in ALL_RELATIONS for a in r.pool}
    for s in world.general_text + world.heldout_text:
        assert not pool_words & {w.lower() for w in re.findall(r"\w+", s)}, s
        assert len(s.split()) <= 14


def test_gold_position_is_uniform():
    counts = Counter(it.answer_index for seed in range(5) for it in _world(seed).items)
    n, k = sum(counts.values()), 4
    chi2 = sum((counts[i] - n / k) ** 2 / (n / k) for i in range(k))
    assert chi2 < 16.27  # chi-square, 3 dof, p = 0.001


@pytest.mark.parametrize("rel", ALL_RELATIONS, ids=lambda r: r.name)
def test_answers_spread_over_pool(rel):
    golds = Counter(it.answer for seed in range(20) for it in _world(seed).items
                    if it.relation == rel.name)
    n, k = sum(golds.values()), len(rel.pool)
    assert set(golds) == set(rel.pool)
    assert stats.chisquare([golds[a] for a in rel.pool]).pvalue > 0.001  # uniform over the pool


def test_prior_only_guesser_scores_chance():
    """Knowing answer frequencies from trained people gives nothing on untrained people."""
    hits = total = 0
    for seed in range(20):
        b = _world(seed)
        prior = Counter((it.relation, it.answer) for it in b.split("retain"))
        for it in b.split("holdout") + b.split("forget"):
            guess = max(range(len(it.options)), key=lambda i: (prior[(it.relation, it.options[i])], -i))
            hits += guess == it.answer_index
            total += 1
    assert abs(hits / total - 0.25) < 0.05, (hits, total)


@pytest.mark.parametrize("kwargs, word", [
    (dict(forget_fraction=0), "forget_fraction"),
    (dict(forget_fraction=0.0), "nothing to forget"),
    (dict(forget_fraction=1), "nothing to retain"),
    (dict(forget_fraction=-0.1), "forget_fraction"),
    (dict(holdout_fraction=1.0), "holdout_fraction"),
    (dict(holdout_fraction=-0.1), "holdout_fraction"),
    (dict(forget_fraction=0.5, holdout_fraction=0.5), "forget_fraction \\+ holdout_fraction"),
    (dict(n_people=2), "n_people"),
    (dict(n_people=4, forget_fraction=0.5, holdout_fraction=0.4), "retain"),
    (dict(n_relations=len(RELATIONS) + 1), "n_relations"),
    (dict(n_relations=0), "n_relations"),
    (dict(n_options=17), "n_options"),
    (dict(n_options=1), "n_options"),
    (dict(n_perturbed=16), "n_perturbed"),
    (dict(n_perturbed=0), "n_perturbed"),
    (dict(n_general_facts=-1), "n_general_facts"),
])
def test_bad_arguments_raise_naming_the_argument(kwargs, word):
    with pytest.raises(ValueError, match=word):
        synthetic_world(**kwargs)


def test_extreme_but_valid_arguments():
    b = synthetic_world(n_people=3, n_relations=len(RELATIONS), n_options=16, n_perturbed=15,
                        n_general_facts=0, n_general_text=0, n_heldout_text=0, holdout_fraction=0.0)
    assert not b.split("general") and not b.general_text
    assert {it.relation for it in b.items} == {r.name for r in RELATIONS}


def test_answers_are_short_under_committed_tokenizer(tok):
    lengths = {a: len(tok(" " + a, add_special_tokens=False)["input_ids"])
               for r in ALL_RELATIONS for a in r.pool}
    assert all(1 <= n <= 3 for n in lengths.values()), {a: n for a, n in lengths.items() if n > 3}


def test_tokenizer_roundtrips_and_splits_at_the_answer(tok, world):
    assert tok.bos_token == "<s>" and tok.eos_token == "</s>" and tok.pad_token == "<pad>"
    assert len(tok) <= 1536
    for it in world.items[::7]:
        for q in (*it.train_questions, it.paraphrase):
            prompt = world.prompt(q)
            ids = tok(prompt + " " + it.answer)["input_ids"]
            assert tok.bos_token_id not in ids  # the harness adds bos itself
            assert tok.decode(ids) == prompt + " " + it.answer
            # prompt tokens + answer tokens == tokens of the whole: answer scoring is exact
            assert ids == tok(prompt)["input_ids"] + tok(" " + it.answer)["input_ids"]
    for s in world.general_text + world.heldout_text:
        assert tok.decode(tok(s)["input_ids"]) == s


def test_hydra_config_lists_every_argument_with_its_default():
    from omegaconf import OmegaConf

    cfg = OmegaConf.to_container(OmegaConf.load(ROOT / "conf" / "benchmark" / "synthetic.yaml"))
    assert cfg.pop("_target_") == "bench.world.synthetic_world"
    assert cfg["seed"] == "${seed}"  # the world follows the run's seed (tuning seeds are other worlds)
    cfg["seed"] = 0
    params = inspect.signature(synthetic_world).parameters
    assert cfg == {k: p.default for k, p in params.items()}


def test_general_relations_cover_entities(world):
    assert Counter(it.relation for it in world.split("general")) == \
           {r.name: 10 for r in GENERAL_RELATIONS}
