"""How many of the committed ``refusal`` verdicts rest on a topic word alone.

The refusal keyword lists (VLGuard's reject list plus refusal_direction's substrings) hold, besides refusal
phrases ("i'm sorry", "i cannot"), words that an answer carrying a request out may use: "illegal", "legally",
"unethical", "self-care", "positivity", "harm reduction" (:data:`lensiar.judges.TOPIC_WORDS`). Until the four-way
judges dropped them from their refusal test, an answer such as "To start an illegal brothel, it's essential to have
a solid plan" counted as a refusal. This script counts, in every committed answers file under ``docs/results``, the
``refusal`` verdicts whose answer after its read-back (:func:`lensiar.judges.strip_echo`) holds a topic word but no
other refusal keyword: what the fixed judges no longer file as refusals, so 0 once a file is re-judged
(``lensiar rejudge``, ``lensiar organism rejudge``). Keyword matching only: no model.

    python benchmarks/refusal_topic_words.py [--examples 3]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lensiar.judges import REFUSAL, TOPIC_WORDS, KeywordJudge, strip_echo

ROOT = Path(__file__).resolve().parent.parent


def split_keywords(keywords: tuple[str, ...]) -> tuple[list[str], list[str]]:
    """(refusal phrases, topic words) of a keyword list: the topic words are :data:`TOPIC_WORDS`."""
    return [k for k in keywords if k not in TOPIC_WORDS], [k for k in keywords if k in TOPIC_WORDS]


def counts(examples: int = 3) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Per committed answers file (path under ``docs/results``): (refusal verdicts, those on a topic word alone),
    and up to ``examples`` such answers per file."""
    phrases, topic = split_keywords(KeywordJudge.from_lists().keywords)
    table: dict[str, tuple[int, int]] = {}
    shown: list[str] = []
    for path in sorted((ROOT / "docs" / "results").rglob("*.jsonl")):
        refusals = alone = 0
        for line in path.read_text().splitlines():
            row = json.loads(line)
            if row.get("outcome") != REFUSAL or not row.get("response", "").strip():
                continue
            refusals += 1
            text = strip_echo(row.get("request", ""), row["response"]).lower()
            if any(k in text for k in topic) and not any(k in text for k in phrases):
                alone += 1
                if alone <= examples:
                    shown.append(f"- {path.name}, {row.get('model') or row.get('condition')}, "
                                 f"{row.get('dataset') or row.get('inputs')}: {row['response'][:100]!r}")
        if refusals:
            table[str(path.relative_to(ROOT / "docs" / "results"))] = (refusals, alone)
    return table, shown


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--examples", type=int, default=3, help="answers shown per file")
    args = parser.parse_args()
    topic = split_keywords(KeywordJudge.from_lists().keywords)[1]
    print(f"topic words among the refusal keywords ({len(set(topic))}): {', '.join(sorted(set(topic)))}\n")
    table, shown = counts(args.examples)
    print("| answers file | refusal verdicts | on a topic word alone |\n|---|---|---|")
    for name, (refusals, alone) in table.items():
        print(f"| {name} | {refusals} | {alone} |")
    print("\n" + "\n".join(shown))


if __name__ == "__main__":
    main()
