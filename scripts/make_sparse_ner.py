"""A sparse-entity NER set from CoNLL-2003: users' data is rarely as dense as CoNLL's (about one token
in six is part of an entity there).

    python scripts/make_sparse_ner.py ../shared/data/conll2003 --output sparse_conll

Recipe, deterministic, the same for each split (train.txt, valid.txt): keep the ``--types`` (default
PER and LOC) and tag every other entity ``O``; keep every sentence with no entity left; of the sentences
with entities, keep them in the order of a hash of their text until entity tokens are ``--share`` (default
1/15) of all kept tokens. Documents' ``-DOCSTART-`` lines are dropped. Writes CoNLL column files (the
same four columns) and prints each split's sentences, tokens and entity-token share.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path


def sentences(path: Path) -> list[list[list[str]]]:
    """Sentences of a CoNLL column file, each a list of [token, pos, chunk, tag] rows."""
    out, current = [], []
    for line in path.read_text(encoding="utf-8").splitlines():
        columns = line.split()
        if not columns or columns[0] == "-DOCSTART-":
            if current:
                out.append(current)
            current = []
        else:
            current.append(columns)
    if current:
        out.append(current)
    return out


def sparse(rows: list[list[list[str]]], types: set[str], share: float) -> list[list[list[str]]]:
    kept_types = [[[*r[:-1], r[-1] if r[-1] == "O" or r[-1][2:] in types else "O"] for r in s] for s in rows]
    plain = [s for s in kept_types if all(r[-1] == "O" for r in s)]
    with_entities = sorted((s for s in kept_types if any(r[-1] != "O" for r in s)),
                           key=lambda s: hashlib.sha1(" ".join(r[0] for r in s).encode()).hexdigest())
    tokens, entity_tokens, chosen = sum(len(s) for s in plain), 0, []
    for s in with_entities:
        count = sum(r[-1] != "O" for r in s)
        if entity_tokens + count > share * (tokens + len(s)):
            continue
        chosen.append(s)
        tokens, entity_tokens = tokens + len(s), entity_tokens + count
    keep = {id(s) for s in chosen + plain}
    return [s for s in kept_types if id(s) in keep]  # in the file's order


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("conll", type=Path, help="folder with CoNLL-2003's train.txt and valid.txt")
    p.add_argument("--output", type=Path, required=True)
    p.add_argument("--types", nargs="+", default=["PER", "LOC"])
    p.add_argument("--share", type=float, default=1 / 15, help="entity tokens / all tokens")
    args = p.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    for split in ("train.txt", "valid.txt"):
        rows = sparse(sentences(args.conll / split), set(args.types), args.share)
        (args.output / split).write_text("".join(" ".join(r) + "\n" for s in rows for r in [*s, []]), encoding="utf-8")
        tokens = sum(len(s) for s in rows)
        entity = sum(r[-1] != "O" for s in rows for r in s)
        with_entities = sum(any(r[-1] != "O" for r in s) for s in rows)
        print(f"{split}: {len(rows)} sentences ({with_entities} with entities), {tokens} tokens, "
              f"{entity} entity tokens ({entity / tokens:.4f} = 1 in {tokens / max(entity, 1):.1f}), types {args.types}")


if __name__ == "__main__":
    main()
