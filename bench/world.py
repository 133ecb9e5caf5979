"""The embedded default benchmark: a synthetic, TOFU-like world generated from a seed.

Why synthetic: a first run must work offline and the facts must be *independent* across
people, so anything an attack recovers about held-out forgotten facts can only come from
what the weights still hold. Every answer is drawn uniformly and independently from its
relation's pool, and the multiple-choice options are a uniform random subset containing the
gold answer at a uniform position: gold and distractors are exchangeable, so a model that
knows nothing about a person scores exactly chance (1/k) in expectation.

Each component (names, each person's facts, splits, general facts, text) draws from its own
``random.Random`` seeded by ``"{seed}/{component}"``: the world is a pure function of the
arguments, and changing one argument (say ``forget_fraction``) leaves the unrelated parts
(the people and their facts) unchanged.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from bench.benchmark import Benchmark, QAItem
from bench.benign import fact_words, generate_instructions
from bench.settings import is_int, is_number

# -- relations ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Relation:
    """A relation type: trained phrasings (first = scored question), a held-out paraphrase,
    and the pool every answer (gold, distractor, perturbed) is drawn from."""

    name: str
    train: tuple[str, ...]
    paraphrase: str
    pool: tuple[str, ...]


_CITIES = ("Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Dublin",
           "Oslo", "Lisbon", "Athens", "Warsaw", "Cairo", "Lima", "Tokyo", "Boston",
           "Munich", "Milan", "Seoul", "Sydney", "Toronto", "Chicago", "Denver", "Geneva", "Zurich", "Naples", "Venice", "Porto", "Bogota", "Nairobi", "Manila", "Hanoi")
_PROFESSIONS = ("doctor", "teacher", "baker", "pilot", "farmer", "lawyer", "nurse", "painter",
                "chef", "engineer", "dentist", "architect", "sailor", "plumber", "journalist",
                "librarian",
                "writer", "singer", "actor", "butcher", "mechanic", "surgeon", "banker", "cleaner", "florist", "tailor", "miner", "barber", "jeweller", "judge", "cashier", "dancer")
_EMPLOYERS = ("Acme", "Globex", "Initech", "Umbrella", "Vortex", "Zenith", "Apex", "Nimbus",
              "Orbit", "Summit", "Pinnacle", "Horizon", "Quantum", "Stellar", "Cobalt", "Meridian",
              "Vertex", "Keystone", "Lumen", "Polaris", "Sterling", "Titan", "Nova", "Beacon", "Crescent", "Everest", "Falcon", "Granite", "Harbor", "Ironwood", "Juniper", "Kestrel")
_BIRTH_YEARS = ("1948", "1951", "1953", "1957", "1960", "1962", "1966", "1969", "1971", "1974",
                "1978", "1980", "1983", "1987", "1990", "1994",
                "1946", "1949", "1950", "1955", "1958", "1963", "1965", "1968", "1972", "1976", "1977", "1981", "1985", "1989", "1992", "1996")
_INSTRUMENTS = ("piano", "violin", "guitar", "flute", "cello", "drums", "harp", "trumpet",
                "clarinet", "saxophone", "banjo", "oboe", "accordion", "ukulele", "trombone",
                "harmonica",
                "lute", "sitar", "mandolin", "bagpipes", "tuba", "bassoon", "xylophone", "marimba", "organ", "piccolo", "harpsichord", "viola", "zither", "bugle", "tambourine", "kazoo")
_PETS = ("cat", "dog", "parrot", "rabbit", "hamster", "turtle", "goldfish", "ferret", "lizard",
         "snake", "canary", "pony", "tortoise", "hedgehog", "iguana", "chinchilla",
         "mouse", "gerbil", "frog", "duck", "goat", "chicken", "pig", "owl", "crab", "spider", "donkey", "lamb", "pigeon", "axolotl", "budgie", "alpaca")
_COUNTRIES = ("France", "Spain", "Italy", "Norway", "Sweden", "Brazil", "Canada", "Japan",
              "Kenya", "Chile", "Egypt", "Peru", "India", "Greece", "Poland", "Mexico",
              "Germany", "Ireland", "Portugal", "Austria", "Finland", "Denmark", "Turkey", "Morocco", "Nigeria", "Ghana", "Argentina", "Colombia", "Vietnam", "Thailand", "Nepal", "Iceland")
_COLOURS = ("red", "blue", "green", "yellow", "purple", "orange", "pink", "brown", "black",
            "white", "grey", "teal", "violet", "crimson", "silver", "gold",
            "maroon", "navy", "olive", "beige", "ivory", "amber", "coral", "indigo", "lavender", "magenta", "scarlet", "turquoise", "cyan", "lime", "tan", "bronze")
_CAPITALS = ("Orvel", "Tarsa", "Kelmar", "Dunmoor", "Velka", "Brisk", "Halden", "Morvik",
             "Siltra", "Fennick", "Quorra", "Ambrel", "Tovik", "Calder", "Ylsa", "Rendal")
_INVENTION_YEARS = ("1812", "1824", "1833", "1841", "1856", "1862", "1870", "1877", "1883",
                    "1889", "1894", "1902", "1908", "1915", "1921", "1927")

#: Person relation types, in a fixed order (item order within a person follows it).
RELATIONS: tuple[Relation, ...] = (
    Relation("birth_city", ("In which city was {name} born?", "What is the birth city of {name}?"),
             "Which city is the birthplace of {name}?", _CITIES),
    Relation("profession", ("What is the profession of {name}?", "What does {name} do for a living?"),
             "What job does {name} have?", _PROFESSIONS),
    Relation("employer", ("Which company does {name} work for?", "Who is the employer of {name}?"),
             "At which company is {name} employed?", _EMPLOYERS),
    Relation("birth_year", ("In which year was {name} born?", "What is the birth year of {name}?"),
             "When was {name} born?", _BIRTH_YEARS),
    Relation("instrument", ("Which instrument does {name} play?",
                            "What is the favourite instrument of {name}?"),
             "What musical instrument does {name} like to play?", _INSTRUMENTS),
    Relation("pet", ("What pet does {name} have?", "Which animal does {name} keep as a pet?"),
             "What kind of pet does {name} own?", _PETS),
    Relation("home_country", ("In which country does {name} live?", "What is the home country of {name}?"),
             "Which country does {name} call home?", _COUNTRIES),
    Relation("favourite_colour", ("What is the favourite colour of {name}?",
                                  "Which colour does {name} like best?"),
             "What colour does {name} prefer?", _COLOURS),
)

#: General (non-person) relations; ``{name}`` is an invented entity, never a person.
GENERAL_RELATIONS: tuple[Relation, ...] = (
    Relation("capital", ("What is the capital of {name}?", "Which city is the capital of {name}?"),
             "What city serves as the capital of {name}?", _CAPITALS),
    Relation("fruit_colour", ("What colour is the {name} fruit?", "What is the colour of a ripe {name} fruit?"),
             "Which colour does the {name} fruit have when ripe?", _COLOURS),
    Relation("invented", ("In which year was the {name} engine invented?",
                          "When was the {name} engine invented?"),
             "What year did the {name} engine first appear?", _INVENTION_YEARS),
    Relation("dance_instrument", ("Which instrument accompanies the {name} dance?",
                                  "What instrument is played for the {name} dance?"),
             "The {name} dance is performed with which instrument?", _INSTRUMENTS),
)

ALL_RELATIONS: tuple[Relation, ...] = RELATIONS + GENERAL_RELATIONS
MIN_POOL = min(len(r.pool) for r in ALL_RELATIONS)

# -- names --------------------------------------------------------------------------------

_ONSETS = ("b", "d", "f", "g", "k", "l", "m", "n", "p", "r", "s", "t", "v", "z")
_VOWELS = ("a", "e", "i", "o", "u")
_CODAS = ("", "", "", "n", "r", "l", "s")
_POOL_WORDS = frozenset(w.lower() for r in ALL_RELATIONS for w in r.pool)


def _syllable_word(rng: random.Random, n_syllables: int, coda: bool) -> str:
    word = "".join(rng.choice(_ONSETS) + rng.choice(_VOWELS) for _ in range(n_syllables))
    if coda:
        word += rng.choice(_CODAS)
    return word.capitalize()


def _unique_names(rng: random.Random, n: int, make, taken: set[str]) -> list[str]:
    """Draw ``n`` names with ``make(rng)``, none equal to, or a prefix of, another (or of ``taken``).

    No-prefix matters because a scorer that matches names by string (or a model reading
    "Kalo Mire" inside "Kalo Miren") must never confuse two entities. Depends only on
    earlier draws, so the first k names are the same whatever ``n`` is.
    """
    names: list[str] = []
    used = set(taken)
    for _ in range(200 * n + 1000):
        if len(names) == n:
            return names
        cand = make(rng)
        low = cand.lower()
        if low in _POOL_WORDS or any(low.startswith(u) or u.startswith(low) for u in used):
            continue
        names.append(cand)
        used.add(low)
    raise RuntimeError(f"could not draw {n} unique names; lower the count")


def _person_name(rng: random.Random) -> str:
    return f"{_syllable_word(rng, 2, False)} {_syllable_word(rng, 2, True)}"


def _entity_name(rng: random.Random) -> str:
    return _syllable_word(rng, rng.choice((2, 3)), True)


# -- facts --------------------------------------------------------------------------------


def _make_item(rng: random.Random, rel: Relation, group: str, split: str, name: str,
               n_options: int, n_perturbed: int) -> QAItem:
    """One fact: gold uniform over the pool, distractors a uniform subset of the rest, gold at a
    uniform position (so gold and distractors are exchangeable); perturbed drawn the same way."""
    gold = rng.choice(rel.pool)
    wrong = [a for a in rel.pool if a != gold]
    perturbed = tuple(rng.sample(wrong, n_perturbed))
    options = rng.sample(wrong, n_options - 1)
    index = rng.randrange(n_options)
    options.insert(index, gold)
    train = tuple(q.format(name=name) for q in rel.train)
    return QAItem(id=f"{group}/{rel.name}", group=group, split=split, relation=rel.name,
                  question=train[0], answer=gold, paraphrase=rel.paraphrase.format(name=name),
                  perturbed=perturbed, options=tuple(options), answer_index=index,
                  train_questions=train)


# -- text ---------------------------------------------------------------------------------

_ADJ = ("old", "young", "tired", "quiet", "cheerful", "clever", "patient", "busy")
_NOUN = ("miller", "shepherd", "weaver", "traveller", "neighbour", "gardener", "fisherman",
         "potter", "student", "carpenter", "merchant", "poet")
_VERB = ("carries a basket", "mends the wooden fence", "sells fresh bread",
         "reads an old book", "paints a small boat", "waters the plants", "feeds the geese",
         "sweeps the floor", "writes a long letter", "builds a stone wall")
_PLACE = ("near the river", "in the village", "by the harbour", "on the hill", "at the market",
          "in the garden", "under the bridge", "behind the mill")
_TIME = ("morning", "evening", "spring", "winter", "Sunday", "night")
_WEATHER = ("it rains", "the sun is out", "the wind blows", "snow falls")


MAX_TEXT = 5000  # well under the ~17,000 distinct sentences the templates can make


def _sentence(rng: random.Random) -> str:
    adj, noun, verb, place = (rng.choice(x) for x in (_ADJ, _NOUN, _VERB, _PLACE))
    form = rng.randrange(3)
    if form == 0:
        return f"The {adj} {noun} {verb} {place}."
    if form == 1:
        return f"Every {rng.choice(_TIME)}, the {adj} {noun} {verb}."
    return f"When {rng.choice(_WEATHER)}, the {noun} {verb} {place}."


def _sentences(rng: random.Random, n: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    for _ in range(100 * n + 1000):
        if len(out) == n:
            break
        s = _sentence(rng)
        if s not in seen:
            seen.add(s)
            out.append(s)
    if len(out) < n:
        raise ValueError(f"could not draw {n} distinct sentences; lower n_general_text + n_heldout_text")
    return out


# -- validation ---------------------------------------------------------------------------


def _split_sizes(n_people: int, forget_fraction: float, holdout_fraction: float) -> tuple[int, int, int]:
    """(forget, holdout, retain) people; rounds half up (not Python's banker's rounding)."""
    n_forget = max(1, math.floor(forget_fraction * n_people + 0.5))
    n_holdout = math.floor(holdout_fraction * n_people + 0.5)
    return n_forget, n_holdout, n_people - n_forget - n_holdout


def _check_int(name: str, value, low: int, high: int | None = None, fix: str = "") -> int:
    if not is_int(value):
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        rng = f">= {low}" if high is None else f"between {low} and {high}"
        raise ValueError(f"{name}={value} is out of range: it must be {rng}. {fix}".rstrip())
    return value


def _validate(n_people, forget_fraction, holdout_fraction, n_relations, n_options, n_perturbed,
              n_general_facts, n_general_text, n_heldout_text) -> None:
    """Reject bad settings up front with a message that names the argument and the fix."""
    _check_int("n_people", n_people, 3, fix="Use n_people >= 3 (forget, retain and holdout each need people).")
    for name, v in (("forget_fraction", forget_fraction), ("holdout_fraction", holdout_fraction)):
        if not is_number(v) or math.isnan(v):
            raise ValueError(f"{name} must be a number, got {v!r}")
    if forget_fraction <= 0:
        raise ValueError(f"forget_fraction={forget_fraction}: nothing to forget. "
                         "Set forget_fraction strictly between 0 and 1 (e.g. 0.1).")
    if forget_fraction >= 1:
        raise ValueError(f"forget_fraction={forget_fraction}: nothing to retain. "
                         "Set forget_fraction strictly between 0 and 1 (e.g. 0.1).")
    if not 0 <= holdout_fraction < 1:
        raise ValueError(f"holdout_fraction={holdout_fraction} must be in [0, 1) (e.g. 0.1, or 0 for no holdout).")
    if forget_fraction + holdout_fraction >= 1:
        raise ValueError(f"forget_fraction + holdout_fraction = {forget_fraction + holdout_fraction} "
                         "must be < 1 so some people are retained; lower one of them.")
    n_forget, n_holdout, n_retain = _split_sizes(n_people, forget_fraction, holdout_fraction)
    if n_retain < 1:
        raise ValueError(f"with n_people={n_people}, forget_fraction={forget_fraction} and "
                         f"holdout_fraction={holdout_fraction} no person is left to retain "
                         f"({n_forget} forget, {n_holdout} holdout); raise n_people or lower the fractions.")
    _check_int("n_relations", n_relations, 1, len(RELATIONS),
               fix=f"There are {len(RELATIONS)} relation types: {[r.name for r in RELATIONS]}.")
    _check_int("n_options", n_options, 2, MIN_POOL,
               fix=f"Answer pools have {MIN_POOL} answers, so at most {MIN_POOL - 1} distractors.")
    _check_int("n_perturbed", n_perturbed, 1, MIN_POOL - 1,
               fix=f"Answer pools have {MIN_POOL} answers, so at most {MIN_POOL - 1} wrong ones.")
    _check_int("n_general_facts", n_general_facts, 0)
    _check_int("n_general_text", n_general_text, 0)
    _check_int("n_heldout_text", n_heldout_text, 0)
    if n_general_text + n_heldout_text > MAX_TEXT:
        raise ValueError(f"n_general_text + n_heldout_text = {n_general_text + n_heldout_text} exceeds "
                         f"{MAX_TEXT}, more than the templates give distinct sentences; lower them.")


# -- the world ----------------------------------------------------------------------------


def synthetic_world(seed: int = 0, n_people: int = 100, forget_fraction: float = 0.35,
                    holdout_fraction: float = 0.15, n_relations: int = 6, n_options: int = 4,
                    n_perturbed: int = 3, n_general_facts: int = 40, n_general_text: int = 60,
                    n_heldout_text: int = 30, n_instructions: int = 256) -> Benchmark:
    """Generate the synthetic world (deterministic from the arguments).

    People ``p000..`` each get ``n_relations`` relation types (a uniform subset of
    ``RELATIONS``, kept in list order); splits are by person. ``g000..`` are invented
    entities with one general fact each (split ``general``), kinds taken in turn.
    ``general_text`` is trained free text; ``heldout_text`` has the same style, never trained.
    ``n_instructions``: the benign attack's instruction corpus (``bench.benign``), disjoint from every
    name and answer word of the world.
    """
    _validate(n_people, forget_fraction, holdout_fraction, n_relations, n_options, n_perturbed,
              n_general_facts, n_general_text, n_heldout_text)
    _check_int("n_instructions", n_instructions, 0)
    n_forget, n_holdout, _ = _split_sizes(n_people, forget_fraction, holdout_fraction)

    people = _unique_names(random.Random(f"{seed}/names"), n_people, _person_name, set())
    # forget = first of a permutation, holdout = last: growing forget_fraction only adds
    # forget people, and the holdout set does not depend on forget_fraction.
    order = list(range(n_people))
    random.Random(f"{seed}/splits").shuffle(order)
    split_of = ["retain"] * n_people
    for i in order[:n_forget]:
        split_of[i] = "forget"
    for i in order[n_people - n_holdout:]:
        split_of[i] = "holdout"

    width = max(3, len(str(max(n_people, n_general_facts) - 1)))
    items: list[QAItem] = []
    for i, name in enumerate(people):
        rng = random.Random(f"{seed}/person/{i}")
        chosen = sorted(rng.sample(range(len(RELATIONS)), n_relations))
        for r in chosen:
            items.append(_make_item(rng, RELATIONS[r], f"p{i:0{width}d}", split_of[i], name,
                                    n_options, n_perturbed))

    taken = {part.lower() for p in people for part in p.split()}
    grng = random.Random(f"{seed}/general")
    entities = _unique_names(grng, n_general_facts, _entity_name, taken)
    for j, ent in enumerate(entities):
        rel = GENERAL_RELATIONS[j % len(GENERAL_RELATIONS)]
        items.append(_make_item(grng, rel, f"g{j:0{width}d}", "general", ent, n_options, n_perturbed))

    text = _sentences(random.Random(f"{seed}/text"), n_general_text + n_heldout_text)
    # Names and every answer of the relation pools (not only those drawn) stay out of the benign corpus.
    never = fact_words(items, extra=[*people, *entities, *(w for r in ALL_RELATIONS for w in r.pool)])
    return Benchmark(name="synthetic", items=items, general_text=text[:n_general_text],
                     heldout_text=text[n_general_text:],
                     instructions=generate_instructions(seed, n_instructions, never))
