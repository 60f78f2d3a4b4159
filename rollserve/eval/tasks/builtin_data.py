"""The small task sets that ship with rollserve, generated here (deterministically from a
seed) so every evaluation runs offline: arithmetic word problems with exact answers,
templated multiple-choice facts, and short texts for perplexity."""

from __future__ import annotations

import random
from fractions import Fraction
from typing import Callable, Dict, List, Tuple

NAMES = ["Ava", "Ben", "Chloe", "Dan", "Ella", "Finn", "Grace", "Hugo", "Iris", "Jack", "Lena",
         "Max", "Nora", "Owen", "Pia", "Sam"]
ITEMS = ["apples", "pencils", "marbles", "stickers", "books", "cookies", "stamps", "shells"]


# ---- arithmetic word problems -------------------------------------------------------------------
def _add(r: random.Random, name: str, item: str) -> Tuple[str, object]:
    a, b = r.randint(2, 60), r.randint(2, 40)
    return f"{name} has {a} {item}. {name} buys {b} more. How many {item} does {name} have now?", a + b


def _subtract(r, name, item):
    a = r.randint(20, 90)
    b = r.randint(1, a - 1)
    friend = r.choice([n for n in NAMES if n != name])
    return (f"{name} had {a} {item} and gave {b} of them to {friend}. "
            f"How many {item} does {name} have left?", a - b)


def _multiply(r, name, item):
    a, b = r.randint(2, 12), r.randint(2, 12)
    return f"A box holds {a} {item}. How many {item} are in {b} boxes?", a * b


def _divide(r, name, item):
    each, friends = r.randint(2, 12), r.randint(2, 9)
    return (f"{name} shares {each * friends} {item} equally among {friends} friends. "
            f"How many {item} does each friend get?", each)


def _two_steps(r, name, item):
    a, b = r.randint(10, 50), r.randint(2, 30)
    c = r.randint(1, a + b - 1)
    return (f"{name} has {a} {item}, buys {b} more and then gives away {c}. "
            f"How many {item} does {name} have at the end?", a + b - c)


def _fraction(r, name, item):
    q = r.choice([2, 3, 4, 5, 8])
    p = r.randint(1, q - 1)
    cakes = r.randint(2, 7)
    total = Fraction(p, q) * cakes
    return (f"A recipe needs {p}/{q} cup of flour for one cake. How many cups of flour are "
            f"needed for {cakes} cakes?", str(total))


def _rate(r, name, item):
    pages, days = r.randint(5, 40), r.randint(2, 14)
    return (f"{name} reads {pages} pages every day. How many pages does {name} read in "
            f"{days} days?", pages * days)


PROBLEM_KINDS: List[Callable] = [_add, _subtract, _multiply, _divide, _two_steps, _fraction, _rate]

ARITHMETIC_FEWSHOT = [
    ("Sam has 3 pencils. Sam buys 4 more. How many pencils does Sam have now?",
     "Sam has 3 + 4 = 7 pencils.", "7"),
    ("A box holds 6 eggs. How many eggs are in 5 boxes?", "5 boxes hold 5 * 6 = 30 eggs.", "30"),
    ("A recipe needs 1/3 cup of sugar for one cake. How many cups of sugar are needed for 2 cakes?",
     "2 cakes need 2 * 1/3 = 2/3 cup of sugar.", "2/3"),
]


def arithmetic_problems(count: int = 60, seed: int = 1234) -> List[Dict]:
    r = random.Random(seed)
    rows = []
    for i in range(count):
        make = PROBLEM_KINDS[i % len(PROBLEM_KINDS)]
        question, answer = make(r, r.choice(NAMES), r.choice(ITEMS))
        rows.append({"id": f"arithmetic-{i}", "question": question, "answer": str(answer),
                     "kind": make.__name__.lstrip("_")})
    return rows


def arithmetic_prompt(question: str) -> str:
    shots = "".join(f"Question: {q}\nAnswer: {work}\n#### {a}\n\n" for q, work, a in ARITHMETIC_FEWSHOT)
    return f"{shots}Question: {question}\nAnswer:"


# ---- multiple-choice facts ----------------------------------------------------------------------
CAPITALS = [("France", "Paris"), ("Germany", "Berlin"), ("Italy", "Rome"), ("Spain", "Madrid"),
            ("Japan", "Tokyo"), ("Egypt", "Cairo"), ("Russia", "Moscow"), ("China", "Beijing"),
            ("England", "London"), ("Greece", "Athens"), ("Portugal", "Lisbon"),
            ("Austria", "Vienna"), ("Norway", "Oslo"), ("Ireland", "Dublin"), ("Poland", "Warsaw"),
            ("Canada", "Ottawa"), ("Kenya", "Nairobi"), ("Peru", "Lima")]
YOUNG = [("dog", "puppy"), ("cat", "kitten"), ("cow", "calf"), ("sheep", "lamb"), ("horse", "foal"),
         ("frog", "tadpole"), ("bear", "cub"), ("duck", "duckling"), ("kangaroo", "joey"),
         ("deer", "fawn"), ("goose", "gosling"), ("swan", "cygnet")]
OPPOSITES = [("hot", "cold"), ("up", "down"), ("big", "small"), ("fast", "slow"), ("light", "dark"),
             ("early", "late"), ("happy", "sad"), ("open", "closed"), ("full", "empty"),
             ("wet", "dry"), ("loud", "quiet"), ("strong", "weak")]
COLORS = [("the clear daytime sky", "blue"), ("fresh grass", "green"), ("snow", "white"),
          ("coal", "black"), ("a ripe banana", "yellow"), ("blood", "red"), ("a carrot", "orange"),
          ("a lemon", "yellow"), ("milk", "white")]
SYMBOLS = [("gold", "Au"), ("silver", "Ag"), ("iron", "Fe"), ("oxygen", "O"), ("hydrogen", "H"),
           ("sodium", "Na"), ("carbon", "C"), ("helium", "He"), ("copper", "Cu"),
           ("potassium", "K"), ("nitrogen", "N")]
COUNTS = [("How many legs does a spider have?", "8"), ("How many legs does an insect have?", "6"),
          ("How many days are in a week?", "7"), ("How many months are in a year?", "12"),
          ("How many hours are in a day?", "24"), ("How many minutes are in an hour?", "60"),
          ("How many sides does a triangle have?", "3"), ("How many sides does a hexagon have?", "6"),
          ("How many wheels does a bicycle have?", "2"), ("How many continents are there?", "7")]

# (question template, statement template, pairs): the statement is the fact as prose
FACT_FAMILIES = [
    ("What is the capital of {0}?", "The capital of {0} is {1}.", CAPITALS),
    ("What is a baby {0} called?", "A baby {0} is called a {1}.", YOUNG),
    ("What is the opposite of {0}?", "The opposite of {0} is {1}.", OPPOSITES),
    ("What color is {0}?", "The color of {0} is {1}.", COLORS),
    ("What is the chemical symbol of {0}?", "The chemical symbol of {0} is {1}.", SYMBOLS),
    ("{0}", "{0} The answer is {1}.", COUNTS),
]


def fact_questions(num_choices: int = 4, seed: int = 1234) -> List[Dict]:
    """One question per fact, families mixed; the distractors are other answers of the
    same family."""
    r = random.Random(seed)
    rows = []
    for question, _, pairs in FACT_FAMILIES:
        answers = sorted({a for _, a in pairs})
        for subject, answer in pairs:
            wrong = r.sample([a for a in answers if a != answer], num_choices - 1)
            gold = r.randrange(num_choices)
            choices = wrong[:gold] + [answer] + wrong[gold:]
            rows.append({"question": question.format(subject), "choices": choices, "gold": gold})
    r.shuffle(rows)  # so that --limit N takes facts of every family
    return [{"id": f"facts-{i}", **row} for i, row in enumerate(rows)]


def fact_context(question: str) -> str:
    return f"Question: {question}\nAnswer:"


# ---- texts for perplexity ----------------------------------------------------------------------
PROSE = [
    "Rivers carry water from the mountains to the sea. Along the way they shape valleys, feed "
    "lakes and give towns a reason to grow on their banks.",
    "A good recipe lists its ingredients first and then the steps in the order a cook needs "
    "them, so that nothing is forgotten halfway through.",
    "Trains were the fastest way to cross a country for most of the nineteenth century, and "
    "many cities still keep their old stations at the centre.",
    "Plants turn sunlight, water and carbon dioxide into sugar and oxygen. The sugar feeds the "
    "plant, and the oxygen goes into the air that animals breathe.",
    "When you learn a new language, short daily practice helps more than one long session a "
    "week, because memory is built through repetition.",
    "The library opens at nine in the morning. Students come early to find a quiet table near "
    "the windows before the reading room fills up.",
]


def perplexity_texts(seed: int = 1234, facts_per_text: int = 4) -> List[Dict]:
    """Hand-written prose plus paragraphs made of fact statements."""
    statements = [statement.format(s, a) for _, statement, pairs in FACT_FAMILIES
                  for s, a in pairs]
    random.Random(seed).shuffle(statements)
    texts = list(PROSE) + [" ".join(statements[i:i + facts_per_text])
                           for i in range(0, len(statements), facts_per_text)]
    return [{"id": f"text-{i}", "text": t} for i, t in enumerate(texts)]
