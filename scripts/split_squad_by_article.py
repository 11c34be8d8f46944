"""Split a SQuAD json file by article into two files, e.g. SQuAD v1.1's dev set into the first 40
articles (training) and the last 8 (evaluation) where its train set is not at hand:

    python scripts/split_squad_by_article.py ../shared/data/squad_v1.1/dev-v1.1.json --first 40 \
        --output /tmp/squad_split
    # -> /tmp/squad_split/train.json (articles 1-40), /tmp/squad_split/validation.json (the rest)

Articles keep their file order, so the split is the same on every machine.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("squad_json")
    parser.add_argument("--first", type=int, default=40, help="articles that go to train.json")
    parser.add_argument("--output", required=True, help="folder for train.json and validation.json")
    args = parser.parse_args()
    data = json.loads(Path(args.squad_json).read_text(encoding="utf-8"))
    articles = data["data"]
    if not 0 < args.first < len(articles):
        raise SystemExit(f"--first must be between 1 and {len(articles) - 1}: the file has {len(articles)} articles")
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", articles[: args.first]), ("validation", articles[args.first :])):
        (out / f"{name}.json").write_text(json.dumps({**data, "data": part}), encoding="utf-8")
        questions = sum(len(p["qas"]) for a in part for p in a["paragraphs"])
        print(f"{out / f'{name}.json'}: {len(part)} articles, {questions} questions")


if __name__ == "__main__":
    main()
