"""The benign instruction corpus (bench/benign.py): generated offline, disjoint from every fact, validated."""

import json
import re

import pytest

from bench.attacks import AttackConfigError, AttackSpec, attack_folds, fold_examples
from bench.benchmark import Benchmark, BenchmarkError
from bench.benchmarks.file import load_benchmark_file
from bench.benchmarks.tofu import load_tofu
from bench.benign import fact_words, generate_instructions, load_instructions
from bench.data import IGNORE, check_lengths
from bench.world import ALL_RELATIONS, synthetic_world
from tests.conftest import ROOT

TOFU = ROOT / "tests" / "fixtures" / "tofu"


def words(text):
    return set(re.findall(r"[a-z]+", text.lower()))


def test_world_corpus_is_deterministic_and_shares_no_word_with_any_name_or_answer():
    world = synthetic_world(seed=3, n_instructions=300)
    assert world.instructions == synthetic_world(seed=3, n_instructions=300).instructions
    assert len(world.instructions) == len(set(world.instructions)) == 300
    assert synthetic_world(seed=4).instructions != world.instructions
    forbidden = {w for r in ALL_RELATIONS for a in r.pool for w in words(a)}
    # every person's and entity's name: the words of a question that its relation's template does not contain
    for it in world.items:
        rel = next(r for r in ALL_RELATIONS if r.name == it.relation)
        forbidden |= words(it.question) - words(rel.train[0])
    used = {w for pair in world.instructions for text in pair for w in words(text)}
    assert forbidden and not used & forbidden
    assert synthetic_world(n_instructions=0).instructions == []


def test_generator_drops_examples_with_excluded_words_and_fails_when_it_cannot_fill():
    pairs = generate_instructions(0, 200, exclude={"lamp", "hot"})
    assert not {"lamp", "hot"} & {w for p in pairs for t in p for w in words(t)}
    with pytest.raises(BenchmarkError, match="could not generate"):  # every template's first word excluded
        generate_instructions(0, 5, exclude={"add", "subtract", "sort", "give", "write", "how", "reverse", "rewrite"})


def test_alpaca_file_is_validated_line_by_line(tmp_path):
    good = tmp_path / "alpaca.jsonl"
    good.write_text(json.dumps({"instruction": "Name a fruit.", "input": "", "output": "Pear."}) + "\n\n"
                    + json.dumps({"instruction": "Add.", "input": "2 and 3", "output": "5"}) + "\n")
    assert load_instructions(good) == [("Name a fruit.", "Pear."), ("Add.\n2 and 3", "5")]
    cases = {"missing output": '{"instruction": "x"}', "not json": "{oops", "blank instruction": '{"instruction": " ", "output": "y"}',
             "input not a string": '{"instruction": "x", "input": 3, "output": "y"}', "empty": ""}
    for name, text in cases.items():
        bad = tmp_path / f"{name}.jsonl"
        bad.write_text(text)
        with pytest.raises(BenchmarkError, match=re.escape(str(bad)) if text else "no instructions"):
            load_instructions(bad)
    with pytest.raises(BenchmarkError, match="does not exist"):
        load_instructions(tmp_path / "nope.jsonl")


def test_real_benchmark_loaders_get_a_generated_or_given_corpus(tmp_path):
    tofu = load_tofu(data_dir=str(TOFU), questions_per_author=2)
    assert tofu.instructions and not fact_words(tofu.items) & {w for p in tofu.instructions for t in p for w in words(t)}
    given = tmp_path / "a.jsonl"
    given.write_text(json.dumps({"instruction": "Say hi.", "output": "Hi."}) + "\n")
    assert load_tofu(data_dir=str(TOFU), questions_per_author=2, instructions=str(given)).instructions == [("Say hi.", "Hi.")]


def test_file_benchmark_round_trips_its_corpus_or_generates_one(tmp_path):
    world = synthetic_world(n_people=10, n_instructions=5)
    world.to_json(tmp_path / "w.json")
    assert load_benchmark_file(str(tmp_path / "w.json")).instructions == world.instructions
    with pytest.raises(BenchmarkError, match="has its own 'instructions'"):
        load_benchmark_file(str(tmp_path / "w.json"), instructions=str(tmp_path / "x.jsonl"))
    bare = json.loads((tmp_path / "w.json").read_text()) | {"instructions": []}
    (tmp_path / "bare.json").write_text(json.dumps(bare))
    assert len(load_benchmark_file(str(tmp_path / "bare.json")).instructions) == 256
    (tmp_path / "bad.json").write_text(json.dumps(bare | {"instructions": [{"instruction": "x"}]}))
    with pytest.raises(BenchmarkError, match="'instructions' must be a list"):
        Benchmark.from_json(tmp_path / "bad.json")


def test_benign_attack_trains_on_responses_only_and_needs_a_corpus(micro_bench, tokenizer):
    spec = AttackSpec.from_config("benign", {"data": "benign", "sources": ["instructions"], "lrs": [1e-3], "steps": 2})
    (fold,) = attack_folds(spec, micro_bench, 0, 0)
    assert not fold.train_items and not fold.train_text and fold.train_instructions == tuple(micro_bench.instructions)
    assert fold.heldout == tuple(micro_bench.split("forget"))
    ids, labels = fold_examples(fold, micro_bench, tokenizer)[0]
    instruction, response = micro_bench.instructions[0]
    assert tokenizer.decode([t for t, y in zip(ids, labels) if y != IGNORE]).strip() == response + tokenizer.eos_token
    assert tokenizer.decode(ids).count(instruction) == 1
    bare = Benchmark(name="bare", items=micro_bench.items)
    with pytest.raises(AttackConfigError, match="none of the benign sources"):
        spec.check_world(bare)


def test_sequence_length_check_covers_the_corpus(micro_bench, tokenizer):
    long = Benchmark(name="long", items=micro_bench.items, instructions=[("Repeat: " + "lamp " * 200, "ok")])
    with pytest.raises(BenchmarkError, match=r"instructions\[0\]"):
        check_lengths(tokenizer, long, 128)
