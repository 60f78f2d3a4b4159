"""Tiny hand-written benchmark files in the formats of the real data sets (field names
and answer conventions), for tests only: written into a data folder as
gsm8k/test.jsonl, math500/test.jsonl, aime/test.jsonl, mmlu/test.jsonl, mbpp/test.jsonl."""

from __future__ import annotations

import json
import os

GSM8K = [
    {"question": "Tom has 3 apples and buys 4 more. How many apples does he have?",
     "answer": "He has 3 + 4 = <<3+4=7>>7 apples.\n#### 7"},
    {"question": "A box holds 6 eggs. How many eggs are in 5 boxes?",
     "answer": "5 * 6 = <<5*6=30>>30 eggs.\n#### 30"},
    {"question": "A farm sells 1200 eggs a day. How many in 10 days?",
     "answer": "1200 * 10 = 12000\n#### 12,000"},
]
GSM8K_TRAIN = [{"question": "Ann has 2 pens and gets 2 more. How many pens?",
                "answer": "2 + 2 = 4\n#### 4"}]
MATH500 = [
    {"problem": "What is $\\frac{1}{2} + \\frac{1}{4}$?", "solution": "... $\\boxed{\\frac{3}{4}}$",
     "answer": "\\frac{3}{4}", "subject": "Prealgebra", "level": 1, "unique_id": "test/pre/1.json"},
    {"problem": "Expand $(x+1)^2 - 2x$.", "solution": "... $\\boxed{x^2+1}$", "answer": "x^2+1",
     "subject": "Algebra", "level": 2, "unique_id": "test/alg/2.json"},
]
MATH = [{"problem": "Compute $2^5$.", "solution": "We have $2^5 = \\boxed{32}$.",
         "level": "Level 1", "type": "Algebra"}]
AIME = [{"id": 60, "problem": "Find the remainder when $2^{10}$ is divided by $1000$.",
         "answer": "24", "solution": "1024 mod 1000 = 24"}]
MMLU = [
    {"question": "What is the capital of France?", "subject": "geography",
     "choices": ["Berlin", "Paris", "Rome", "Madrid"], "answer": 1},
    {"question": "Which planet is largest?", "subject": "astronomy",
     "choices": ["Mars", "Venus", "Jupiter", "Earth"], "answer": 2},
]
MBPP = [{"task_id": 11, "text": "Write a function to add two numbers.",
         "code": "def add(a, b):\n    return a + b",
         "test_list": ["assert add(1, 2) == 3", "assert add(-1, 1) == 0"],
         "test_setup_code": "", "challenge_test_list": []}]
FILES = {"gsm8k/test": GSM8K, "gsm8k/train": GSM8K_TRAIN, "math500/test": MATH500,
         "math/test": MATH, "aime/test": AIME, "mmlu/test": MMLU, "mbpp/test": MBPP}


def write_bench_data(folder) -> str:
    for stem, rows in FILES.items():
        path = os.path.join(str(folder), stem + ".jsonl")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.writelines(json.dumps(row) + "\n" for row in rows)
    return str(folder)
