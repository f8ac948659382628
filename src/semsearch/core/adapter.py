"""A query-side linear adapter: domain adaptation without re-embedding a single document.

The frozen model embeds queries and passages as before; an adapted collection serves
``normalize(W q)`` for a query instead of ``q``, with ``W`` (d x d, started at the identity)
learned from labelled (query, relevant document) pairs. Passage vectors stay the model's own,
so the derived indexes rebuild from the embedding cache and the model never runs over the
corpus again. (Query-side adapters: the "linear adapter" of Chroma's embedding-adaptation
report, and of Yoon et al., 2024, *Search-Adaptor*, in its simplest form.)

Training is plain numpy: a softmax over the collection's document vectors at a low
temperature (every other document is a negative: the hard ones included, with no sampling
on collections of ordinary size), cross-entropy against the relevant documents, an L2 pull of
``W`` toward the identity, Adam, and early stopping on held-out queries by their nDCG@10
against the same document vectors. Everything here is pure: vectors in, weights out.

An adapter is stamped into the identity it serves as a revision suffix
(``<base revision>+adapter:<fingerprint>``), the fingerprint being the first 16 hex digits of
the sha256 of its serialized bytes, which is also the key the store keeps it under. Two
adapters that differ never share an identity, and the identity names the bytes it needs."""

from __future__ import annotations

import hashlib
import json
import math
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Protocol

import numpy as np
from numpy.typing import NDArray

from semsearch.core.types import EmbedderIdentity
from semsearch.errors import InputError

F32 = NDArray[np.float32]
ADAPTER_TAG = "+adapter:"
ARTIFACT_PREFIX = "linear-adapter/"
_MAGIC = b"SEMSEARCH-LINEAR-ADAPTER-1\n"


@dataclass(frozen=True)
class AdapterConfig:
    """How the adapter is trained. The defaults were measured on SciFact (see
    bench/adapt.py); ``l2`` pulls ``W`` toward the identity (larger: a smaller change),
    ``holdout`` is the share of training queries kept aside to stop on."""

    temperature: float = 0.05
    l2: float = 0.01
    learning_rate: float = 0.001
    max_steps: int = 400
    batch_size: int = 256
    eval_every: int = 10
    patience: int = 8  # evaluations without a better held-out nDCG@10 before stopping
    holdout: float = 0.2
    max_negatives: int = 20000  # above this many documents, negatives are sampled
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.temperature > 0:
            raise InputError(f"temperature must be > 0, got {self.temperature}")
        if self.l2 < 0:
            raise InputError(f"l2 must be >= 0, got {self.l2}")
        if not 0 <= self.holdout < 1:
            raise InputError(f"holdout must be in [0, 1), got {self.holdout}")
        if self.max_steps < 1 or self.batch_size < 1 or self.eval_every < 1:
            raise InputError("max_steps, batch_size and eval_every must be >= 1")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class TrainReport:
    """What training did: pairs and queries used, where it stopped and why, and the held-out
    nDCG@10 against the document vectors before (W = I) and after."""

    queries: int
    pairs: int
    train_queries: int
    holdout_queries: int
    documents: int
    steps: int = 0
    best_step: int = 0
    holdout_ndcg_before: float = 0.0
    holdout_ndcg_after: float = 0.0
    train_loss: float = 0.0
    stopped: str = ""
    history: list[dict[str, float]] = field(default_factory=list)
    excluded: int = 0  # training queries left out because the gate asks them (the caller's)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class LinearAdapter:
    """``W`` and what it was trained for (``base``: the identity key of the model it sits on;
    ``meta``: the collection, the data, the settings and the report, for describing it)."""

    weight: F32
    base: str
    meta: Mapping[str, Any] = field(default_factory=dict)

    @property
    def dimension(self) -> int:
        return int(self.weight.shape[0])

    def apply(self, vectors: F32) -> F32:
        """Query vectors (rows) -> ``normalize(W q)``."""
        out = np.asarray(vectors, dtype=np.float32) @ self.weight.T
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        result: F32 = (out / np.maximum(norms, 1e-12)).astype(np.float32)
        return result

    def to_bytes(self) -> bytes:
        """A self-describing, deterministic encoding (no pickle): the same adapter always
        gives the same bytes, so its fingerprint is its content's."""
        header = json.dumps({"base": self.base, "dimension": self.dimension,
                             "meta": dict(self.meta)}, sort_keys=True,
                            ensure_ascii=False, default=str).encode("utf-8")
        weight = np.ascontiguousarray(self.weight, dtype="<f4").tobytes()
        return _MAGIC + struct.pack("<Q", len(header)) + header + weight

    @classmethod
    def from_bytes(cls, data: bytes) -> LinearAdapter:
        if not data.startswith(_MAGIC):
            raise InputError("not a semsearch linear adapter (bad header)")
        start = len(_MAGIC)
        (n,) = struct.unpack("<Q", data[start:start + 8])
        header = json.loads(data[start + 8:start + 8 + n].decode("utf-8"))
        d = int(header["dimension"])
        raw = data[start + 8 + n:]
        if len(raw) != d * d * 4:
            raise InputError(f"linear adapter holds {len(raw)} weight bytes, expected {d * d * 4}")
        weight = np.frombuffer(raw, dtype="<f4").reshape(d, d).astype(np.float32)
        return cls(weight=weight, base=str(header["base"]), meta=header.get("meta", {}))

    def fingerprint(self) -> str:
        return fingerprint(self.to_bytes())


def fingerprint(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:16]


# -- identities ---------------------------------------------------------------------------------
def adapted_identity(base: EmbedderIdentity, fp: str) -> EmbedderIdentity:
    """The identity a collection served through adapter ``fp`` on ``base`` is stamped with."""
    if ADAPTER_TAG in base.revision:
        raise InputError(f"{base.key()} is adapted already; adapt its base model instead")
    return replace(base, revision=f"{base.revision}{ADAPTER_TAG}{fp}")


def split_adapted(identity: EmbedderIdentity) -> tuple[EmbedderIdentity, str] | None:
    """(base identity, fingerprint) of an adapted identity; None for a model's own."""
    if ADAPTER_TAG not in identity.revision:
        return None
    revision, fp = identity.revision.rsplit(ADAPTER_TAG, 1)
    return replace(identity, revision=revision), fp


def artifact_key(fp: str) -> str:
    """Where the store keeps the adapter with fingerprint ``fp``."""
    return f"{ARTIFACT_PREFIX}{fp}"


# -- training -----------------------------------------------------------------------------------
def _normalize(x: NDArray[np.float64]) -> NDArray[np.float64]:
    n = np.linalg.norm(x, axis=1, keepdims=True)
    out: NDArray[np.float64] = x / np.maximum(n, 1e-12)
    return out


def ndcg_at_10(queries: NDArray[np.float64], positives: Sequence[Sequence[int]],
               docs: NDArray[np.float64]) -> float:
    """Mean nDCG@10 (binary relevance) of ranking ``docs`` by dot product, per query."""
    if len(queries) == 0:
        return 0.0
    scores = queries @ docs.T
    k = min(10, docs.shape[0])
    top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
    total = 0.0
    discounts = 1.0 / np.log2(np.arange(2, k + 2))
    for i, pos in enumerate(positives):
        order = top[i][np.argsort(-scores[i, top[i]])]
        rel = np.isin(order, np.asarray(pos))
        dcg = float((rel * discounts).sum())
        ideal = float(discounts[:min(len(pos), k)].sum())
        total += dcg / ideal if ideal else 0.0
    return total / len(queries)


def train_linear_adapter(queries: F32, positives: Sequence[Sequence[int]], docs: F32,
                         config: AdapterConfig | None = None,
                         ) -> tuple[F32, TrainReport]:
    """Learn ``W`` so that ``normalize(W q)`` ranks each query's relevant documents first.

    ``queries``: (n, d) query vectors; ``positives[i]``: indexes into ``docs`` (m, d) of
    query i's relevant documents (each query needs at least one). Returns ``W`` (the
    best on the held-out queries; the identity if nothing beat it) and the report."""
    cfg = config or AdapterConfig()
    q_all = np.asarray(queries, dtype=np.float64)
    d_all = _normalize(np.asarray(docs, dtype=np.float64))
    n, dim = q_all.shape
    if len(positives) != n:
        raise InputError(f"{n} queries but {len(positives)} lists of relevant documents")
    if n == 0:
        raise InputError("no labelled pairs to train on")
    if d_all.shape[1] != dim:
        raise InputError(f"queries have dimension {dim}, documents {d_all.shape[1]}")
    if any(len(p) == 0 for p in positives):
        raise InputError("every training query needs at least one relevant document")
    rng = np.random.default_rng(cfg.seed)
    order = rng.permutation(n)
    n_hold = round(n * cfg.holdout) if n >= 10 else 0
    hold, train = order[:n_hold], order[n_hold:]
    report = TrainReport(queries=n, pairs=sum(len(p) for p in positives),
                         train_queries=len(train), holdout_queries=len(hold),
                         documents=d_all.shape[0])
    q_all = _normalize(q_all)
    q_hold = q_all[hold]
    pos_hold = [positives[i] for i in hold]

    eye = np.eye(dim)
    w = eye.copy()
    best_w, best_score = eye.copy(), ndcg_at_10(q_hold, pos_hold, d_all) if n_hold else 0.0
    report.holdout_ndcg_before = round(best_score, 4)
    m1 = np.zeros_like(w)
    m2 = np.zeros_like(w)
    beta1, beta2, eps = 0.9, 0.999, 1e-8
    since_best = 0
    report.stopped = f"max_steps ({cfg.max_steps})"
    step = 0
    for step in range(1, cfg.max_steps + 1):
        batch = rng.choice(train, size=min(cfg.batch_size, len(train)), replace=False)
        grad, loss = _gradient(w, q_all[batch], [positives[i] for i in batch], d_all, cfg, rng)
        grad += 2 * cfg.l2 * (w - eye)
        m1 = beta1 * m1 + (1 - beta1) * grad
        m2 = beta2 * m2 + (1 - beta2) * grad * grad
        m1_hat = m1 / (1 - beta1 ** step)
        m2_hat = m2 / (1 - beta2 ** step)
        w -= cfg.learning_rate * m1_hat / (np.sqrt(m2_hat) + eps)
        report.train_loss = round(loss, 4)
        if step % cfg.eval_every and step != cfg.max_steps:
            continue
        if not n_hold:  # nothing held out: train to the end
            best_w, report.best_step = w.copy(), step
            continue
        score = ndcg_at_10(_normalize(q_hold @ w.T), pos_hold, d_all)
        report.history.append({"step": step, "loss": round(loss, 4),
                               "holdout_ndcg@10": round(score, 4)})
        if score > best_score + 1e-6:
            best_w, best_score, report.best_step, since_best = w.copy(), score, step, 0
        else:
            since_best += 1
            if since_best >= cfg.patience:
                report.stopped = (f"no better held-out nDCG@10 in {cfg.patience} evaluations "
                                  f"({cfg.patience * cfg.eval_every} steps)")
                break
    report.steps = step
    report.holdout_ndcg_after = round(best_score, 4)
    return best_w.astype(np.float32), report


def _gradient(w: NDArray[np.float64], q: NDArray[np.float64], positives: Sequence[Sequence[int]],
              docs: NDArray[np.float64], cfg: AdapterConfig,
              rng: np.random.Generator) -> tuple[NDArray[np.float64], float]:
    """Gradient of the mean cross-entropy of a softmax over documents (every document a
    negative, or the batch's positives plus a sample above ``max_negatives``) with respect
    to ``W``, through the query's normalization."""
    if docs.shape[0] > cfg.max_negatives:
        wanted = np.unique(np.concatenate([np.asarray(p) for p in positives]))
        others = rng.choice(docs.shape[0], size=cfg.max_negatives, replace=False)
        cand = np.unique(np.concatenate([wanted, others]))
        remap = {int(c): j for j, c in enumerate(cand)}
        positives = [[remap[int(i)] for i in p] for p in positives]
        docs = docs[cand]
    u = q @ w.T
    norms = np.linalg.norm(u, axis=1, keepdims=True)
    z = u / np.maximum(norms, 1e-12)
    logits = z @ docs.T / cfg.temperature
    logits -= logits.max(axis=1, keepdims=True)
    p = np.exp(logits)
    p /= p.sum(axis=1, keepdims=True)
    target = np.zeros_like(p)
    for i, pos in enumerate(positives):
        target[i, list(pos)] = 1.0 / len(pos)
    loss = float(-(target * np.log(np.maximum(p, 1e-30))).sum(axis=1).mean())
    g_logits = (p - target) / len(q)
    g_z = g_logits @ docs / cfg.temperature
    g_u = (g_z - z * (g_z * z).sum(axis=1, keepdims=True)) / np.maximum(norms, 1e-12)
    grad: NDArray[np.float64] = g_u.T @ q
    if not math.isfinite(loss):
        raise InputError("training diverged (loss is not finite); lower the learning rate")
    return grad, loss


# -- full fine-tune (``semsearch adapt --method finetune``) --------------------------------------
# A fine-tuned model is stamped ``<base revision>+finetune:<fingerprint>``, the fingerprint
# being that of its weights' bytes (safetensors), kept in the store under FINETUNE_PREFIX.
# Unlike the linear adapter, its passage vectors are its own: a re-index re-embeds them.
FINETUNE_TAG = "+finetune:"
FINETUNE_PREFIX = "finetuned-model/"


@dataclass(frozen=True)
class FinetuneConfig:
    """How the model is fine-tuned (MultipleNegativesRankingLoss: every other pair's
    document in a batch is a negative). ``max_steps`` caps the optimizer steps (tests);
    ``holdout`` is the share of training queries kept aside to report on."""

    epochs: int = 1
    batch_size: int = 32
    learning_rate: float = 2e-5
    warmup: float = 0.1  # share of the steps the learning rate ramps up over
    max_steps: int | None = None
    max_seq_length: int = 256
    holdout: float = 0.2
    seed: int = 0

    def __post_init__(self) -> None:
        if self.epochs < 1 or self.batch_size < 2:
            raise InputError("epochs must be >= 1 and batch_size >= 2 (in-batch negatives)")
        if not self.learning_rate > 0:
            raise InputError(f"learning_rate must be > 0, got {self.learning_rate}")
        if self.max_steps is not None and self.max_steps < 1:
            raise InputError("max_steps must be >= 1")
        if not 0 <= self.holdout < 1:
            raise InputError(f"holdout must be in [0, 1), got {self.holdout}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


class FineTuner(Protocol):
    """Fine-tunes a local model on (query, relevant passage) pairs and returns its weights
    as safetensors bytes, in the layout its weights package ships (an adapter: torch)."""

    model: str  # the identity.model it fine-tunes

    def train(self, pairs: Sequence[tuple[str, str]], config: FinetuneConfig,
              on_step: Callable[[int, int], None] | None = None) -> bytes: ...


def finetuned_identity(base: EmbedderIdentity, fp: str) -> EmbedderIdentity:
    """The identity of the model fine-tuned from ``base`` whose weights have fingerprint
    ``fp``."""
    if FINETUNE_TAG in base.revision or ADAPTER_TAG in base.revision:
        raise InputError(f"{base.key()} is adapted already; fine-tune its base model")
    return replace(base, revision=f"{base.revision}{FINETUNE_TAG}{fp}")


def split_finetuned(identity: EmbedderIdentity) -> tuple[EmbedderIdentity, str] | None:
    """(base identity, fingerprint) of a fine-tuned identity (not adapted on top); None
    otherwise."""
    if FINETUNE_TAG not in identity.revision or ADAPTER_TAG in identity.revision:
        return None
    revision, fp = identity.revision.rsplit(FINETUNE_TAG, 1)
    return replace(identity, revision=revision), fp


def original_identity(identity: EmbedderIdentity) -> EmbedderIdentity:
    """The model's own identity under any adapter and fine-tune."""
    split = split_adapted(identity)
    if split is not None:
        identity = split[0]
    tuned = split_finetuned(identity)
    return tuned[0] if tuned is not None else identity


def finetune_artifact_key(fp: str) -> str:
    """Where the store keeps the fine-tuned weights with fingerprint ``fp``."""
    return f"{FINETUNE_PREFIX}{fp}"


def holdout_split(n: int, holdout: float, seed: int) -> tuple[list[int], list[int]]:
    """(held-out, training) query indexes: the same split ``train_linear_adapter`` makes."""
    order = np.random.default_rng(seed).permutation(n)
    n_hold = round(n * holdout) if n >= 10 else 0
    return [int(i) for i in order[:n_hold]], [int(i) for i in order[n_hold:]]
