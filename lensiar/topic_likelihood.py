"""Whether an answer is about its request, measured as a likelihood under a small causal LM.

An answer about the request is more likely when the LM is shown the request than when it is shown a neutral
prompt: the *information* the request gives about the answer,

    info(q, a) = mean_t [ log p(a_t | chat(q), a_<t) - max_n log p(a_t | chat(n), a_<t) ]   (nats per token),

over the answer's first ``max_tokens`` tokens, with ``n`` over :data:`NULL_PROMPTS`. An answer that acts on a
*misreading* of the request (an image read back as "generate new martiale", then steps for a martiale) is better
explained by the misread restatement r than by the request: its *misreading preference*

    pref(q, r, a) = mean_t [ log p(a_t | chat(r), a_<t) - log p(a_t | chat(q), a_<t) ]   (nats per token)

is high. :class:`~lensiar.judges.OnTopicJudge` with a :class:`TopicLikelihood` uses both in place of word
overlap (``docs/judges.md``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

#: neutral prompts whose best log-likelihood is the baseline of :meth:`TopicLikelihood.information`
NULL_PROMPTS = ("Say something.", "Hello.")


@dataclass
class TopicLikelihood:
    """Scores answers against requests under ``model`` (any HF causal LM with a chat template), batched."""

    model: Any
    tokenizer: Any
    max_tokens: int = 48
    batch_size: int = 16
    null_prompts: tuple[str, ...] = NULL_PROMPTS
    cache_size: int = 200_000
    #: (prompt, answer) -> log-probs already computed: a revised and an unrevised answer are often the same text
    _seen: dict[tuple[str, str], Tensor] = field(default_factory=dict, repr=False, compare=False)

    def answer_logprobs(self, users: Sequence[str], answers: Sequence[str]) -> list[Float[Tensor, " tokens"]]:
        """log p(token | chat prompt of the user turn, earlier answer tokens) for each of the first ``max_tokens``
        tokens of each answer (nats; an empty answer gives an empty tensor). Pairs seen before (up to
        ``cache_size``) are not recomputed."""
        if len(users) != len(answers):
            raise ValueError(f"{len(users)} prompts but {len(answers)} answers")
        pairs = list(zip(users, answers, strict=True))
        if len(self._seen) + len(pairs) > self.cache_size:
            self._seen.clear()
        todo = list(dict.fromkeys(p for p in pairs if p not in self._seen))
        if todo:
            self._seen.update(zip(todo, self._compute([u for u, _ in todo], [a for _, a in todo]), strict=True))
        return [self._seen[p] for p in pairs]

    def _compute(self, users: Sequence[str], answers: Sequence[str]) -> list[Tensor]:
        rows: list[tuple[list[int], list[int]]] = []
        for user, answer in zip(users, answers, strict=True):
            prefix = self.tokenizer.apply_chat_template([{"role": "user", "content": user}],
                                                        add_generation_prompt=True, tokenize=False)
            head = self.tokenizer(prefix, add_special_tokens=False)["input_ids"]
            rows.append((head, self.tokenizer(answer, add_special_tokens=False)["input_ids"][: self.max_tokens]))
        device = next(self.model.parameters()).device
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        out: list[Tensor] = [torch.empty(0)] * len(rows)
        order = sorted(range(len(rows)), key=lambda i: -sum(len(x) for x in rows[i]))
        for start in range(0, len(order), self.batch_size):
            chunk = [i for i in order[start : start + self.batch_size] if rows[i][1]]
            if not chunk:
                continue
            width = max(len(rows[i][0]) + len(rows[i][1]) for i in chunk)
            ids = torch.full((len(chunk), width), pad, dtype=torch.long)
            mask = torch.zeros((len(chunk), width), dtype=torch.long)
            for row, i in enumerate(chunk):
                seq = rows[i][0] + rows[i][1]
                ids[row, : len(seq)], mask[row, : len(seq)] = torch.tensor(seq), 1
            with torch.no_grad():
                logp = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits.float()
            logp = logp.log_softmax(-1).cpu()
            for row, i in enumerate(chunk):
                head_ids, answer_ids = rows[i]
                positions = torch.arange(len(head_ids) - 1, len(head_ids) - 1 + len(answer_ids))
                out[i] = logp[row, positions, torch.tensor(answer_ids)]
        return out

    def information(self, requests: Sequence[str], answers: Sequence[str]) -> list[float]:
        """``info(q, a)`` per pair (nats per answer token; ``-inf`` for an empty answer)."""
        given = self.answer_logprobs(requests, answers)
        nulls = [self.answer_logprobs([n] * len(answers), answers) for n in self.null_prompts]
        out = []
        for k, lp in enumerate(given):
            if not len(lp):
                out.append(float("-inf"))
                continue
            base = torch.stack([n[k] for n in nulls]).max(0).values
            out.append(float((lp - base).mean()))
        return out

    def misreading_preference(self, requests: Sequence[str], restatements: Sequence[str],
                              answers: Sequence[str]) -> list[float]:
        """``pref(q, r, a)`` per triple (nats per answer token; 0 for an empty answer)."""
        asked, read = self.answer_logprobs(requests, answers), self.answer_logprobs(restatements, answers)
        return [float((r - q).mean()) if len(q) else 0.0 for q, r in zip(asked, read, strict=True)]


@lru_cache(maxsize=1)
def smollm2_likelihood() -> TopicLikelihood:
    """:class:`TopicLikelihood` under SmolLM2-135M-Instruct (the organism's backbone before tuning; local, fp32)."""
    import transformers as tf

    from lensiar.models import smollm2_path

    path = smollm2_path()
    model = tf.AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    return TopicLikelihood(model, tf.AutoTokenizer.from_pretrained(path, local_files_only=True))
