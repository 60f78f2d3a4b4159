"""lm-evaluation-harness task files for the tests: a multiple_choice task on local
JSONL, as a yaml under an --include-path folder."""

from __future__ import annotations

import json

MC_DOCS = [
    {"question": "What is the capital of France?", "choices": ["Paris", "Tokyo", "Cairo", "Athens"],
     "gold": 0},
    {"question": "What is a baby cat called?", "choices": ["puppy", "kitten", "foal"], "gold": 1},
    {"question": "What color is snow?", "choices": ["green", "black", "white"], "gold": 2},
]
MC_YAML = """task: rs_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "Question: {{{{question}}}}\\nAnswer:"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: gold
metric_list:
  - metric: acc
  - metric: acc_norm
"""

def write_task(folder, name, yaml_text, docs):
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(d) + "\n" for d in docs))
    (folder / f"{name}.yaml").write_text(yaml_text.format(data=data))
