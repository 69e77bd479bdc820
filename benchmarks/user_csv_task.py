"""A user task from CSV files, made from QNLI's dev set (the only labelled QNLI split here).

    python benchmarks/user_csv_task.py --data ../shared/data --out runs/user-task
    bertvision run --task runs/user-task/qnli_csv.toml --out runs/results/qnli_csv

QNLI's train split is not available offline, so its 5,463 labelled dev pairs become a user task:
a seeded 80 / 20 split into train.csv and dev.csv (question, sentence, label), declared in a
TOML file as any user would declare their own (README, "Your own task"). The files are written
under --out, never into the repository.
"""

from __future__ import annotations

import argparse
import csv
import random
from pathlib import Path


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", required=True, help="the GLUE data folder's parent (holds glue/QNLI/dev.tsv)")
    p.add_argument("--out", required=True, help="folder for the CSV files and the task's TOML")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    source = Path(args.data) / "glue" / "QNLI" / "dev.tsv"
    with source.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    random.Random(args.seed).shuffle(rows)
    cut = round(0.8 * len(rows))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", rows[:cut]), ("dev", rows[cut:])):
        with (out / f"{name}.csv").open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f)
            w.writerow(["id", "question", "sentence", "label"])
            for r in part:
                w.writerow([r["index"], r["question"], r["sentence"], r["label"]])
    (out / "qnli_csv.toml").write_text(
        'name = "qnli_csv"\ntitle = "QNLI dev as a user CSV task (80/20 split)"\nkind = "classification"\n'
        'text_fields = ["question", "sentence"]\nlabel_field = "label"\nid_field = "id"\n'
        'labels = ["entailment", "not_entailment"]\nmetrics = ["accuracy"]\n'
        '[splits]\ntrain = "train.csv"\ndev = "dev.csv"\n'
    )
    print(f"{out / 'qnli_csv.toml'}: {cut} train, {len(rows) - cut} dev examples from {source}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
