"""What the default judge costs: the likelihood judge (``on_topic_lm``) against the word-overlap judge
(``on_topic``) and against generating the answers it judges, in the same run.

Takes ``--n`` answers drawn at random (``--seed``) from the committed organism table's answers
(``docs/results/organism_table.answers.jsonl``: text and image requests, 48 or 64 new tokens), judges them with
both judges (the likelihood judge's model loaded before the clock starts), then regenerates ``--generate`` of
the image answers with the committed organism (greedy, 64 new tokens, as the table did). Prints seconds per
answer for each and the ratios.

    python benchmarks/judge_cost.py [--n 200] [--generate 16] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", type=int, default=200, help="answers judged")
    parser.add_argument("--generate", type=int, default=16, help="image answers regenerated for the comparison")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import torch

    from lensiar.judges import OnTopicJudge, default_judge

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    rows = [json.loads(line) for line in (ROOT / "docs/results/organism_table.answers.jsonl").read_text().splitlines()]
    sample = random.Random(args.seed).sample(rows, args.n)
    requests, responses = [r["request"] for r in sample], [r["response"] for r in sample]
    words, likelihood = OnTopicJudge.default(), default_judge()
    t0 = time.perf_counter()
    words.verdicts(requests, responses)
    t_words = time.perf_counter() - t0
    t0 = time.perf_counter()
    verdicts = likelihood.verdicts(requests, responses)
    t_lm = time.perf_counter() - t0
    scored = sum(v in ("on_topic_compliance", "off_topic") for v in verdicts)

    import lensiar
    from lensiar.prompts import phrase_prompt, steps_prompt

    lens = lensiar.Lens.from_pretrained("organism")
    images = [r for r in rows if r["model"] == "organism VLM" and "image" in r["inputs"] and "read" not in r["inputs"]]
    chosen = random.Random(args.seed).sample(images, args.generate)
    prompts = [(phrase_prompt if "TYPO" in r["inputs"] else steps_prompt)(r["request"]) for r in chosen]
    t0 = time.perf_counter()
    lens.generate(prompts, max_new_tokens=64, batch_size=16)
    t_gen = (time.perf_counter() - t0) / args.generate

    result = {"answers": args.n, "scored_by_likelihood": scored, "seed": args.seed,
              "word_judge_s_per_answer": round(t_words / args.n, 5),
              "likelihood_judge_s_per_answer": round(t_lm / args.n, 4),
              "generation_s_per_image_answer": round(t_gen, 3),
              "likelihood_vs_word_judge": round(t_lm / max(t_words, 1e-9), 1),
              "likelihood_judge_vs_generation": round(t_lm / args.n / t_gen, 3)}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
