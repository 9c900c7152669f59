"""Dynamic int8 quantisation of exported graphs for CPU (its fidelity: bench/fidelity.py).

``quantize_dynamic`` stores MatMul/Gemm weights as int8 and quantises activations per call; the
convolutions of HuBERT's front end stay fp32 (ConvInteger is slower than the fp32 conv on CPU and
the first layers carry the raw waveform). Fidelity is measured, not assumed: the same audio is
streamed through the fp32 and the int8 graphs and the lip metric of training/evaluate.py (jaw
opening + exp[0:5], RMS in normalised units) is taken between the two outputs."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from engines.artefacts import graph_file

QUANTIZED_OPS = ["MatMul", "Gemm"]


def quantize_graph(src: str | Path, dst: str | Path | None = None) -> Path:
    """src fp32 .onnx -> dst (default: NAME.int8.onnx beside it), written atomically, with a sidecar
    copied from the source's plus the precision."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    src = Path(src)
    dst = Path(dst) if dst is not None else src.with_name(graph_file(src.name, "int8"))
    tmp = dst.with_name(dst.name + f".tmp{os.getpid()}.onnx")
    root = logging.getLogger()
    level = root.level
    # the quantiser logs every skipped tensor (INFO) and a pre-processing hint (WARNING) on root
    root.setLevel(max(level, logging.ERROR))
    try:
        quantize_dynamic(src, tmp, op_types_to_quantize=QUANTIZED_OPS, weight_type=QuantType.QInt8,
                         per_channel=False)
    finally:
        root.setLevel(level)
    os.replace(tmp, dst)
    side = Path(str(src) + ".json")
    if side.is_file():
        meta = json.loads(side.read_text())
        meta.update(file=dst.name, precision="int8", max_abs_diff=None)  # lossy: measured by lip_fidelity
        Path(str(dst) + ".json").write_text(json.dumps(meta, indent=2) + "\n")
    return dst
