"""int8 weights for chat on CPU: the frozen decoder's Linear layers and its output projection.

Each decoder weight is stored as int8 (7 bits used, see WEIGHT_LEVELS) with one scale per output
channel. How a layer multiplies depends on the call:

* a decode step (`Int8Linear.row`: chat's single row, or a server's batch of rows, one token
  each): fbgemm's dynamic int8 kernel (int8 weights times uint8 activations, int32 sums), one call
  for all rows, and every row over its own range. One range shared by many rows is what ruins
  quality: the soft prompt's virtual tokens and the first positions carry activations far larger
  than the rest. fbgemm quantizes all the rows of a call with one range, so each row is first
  divided by its own largest magnitude,

      x = m u,   m = max|x|,   u in [-1, 1],   x W^T = m (u W^T),

  and every row carries two guard columns holding 1 and -1 (their weights are zero): the call's
  range is [-1, 1] whoever the neighbours are, so a row computes exactly the same alone (chat) or
  beside any others (a server's batch);
* encoding a prompt (any call of a decoder layer inside `exact_activations()`, which the
  backends' prefill enters): the int8 weight dequantised to float32 for the call, the activations
  exact (quantizing the prompt's positions too cost about 1.5% held-out NLL). Outside it,
  `forward` is a decode step of its rows.

The kernel "row-by-row" is the previous decode scheme, kept for comparison
(`benchmarks/int8_rows.py`, `set_int8_kernel`): one kernel call per row up to ROW_KERNEL_MAX_ROWS
rows (fbgemm's own range per row, [min(x, 0), max(x, 0)]), the dequantised weight above that.

The output projection (V x D, the largest matrix of a small model, read once per token) is int8
as well, with one difference: a few of its input channels carry values far larger than the rest
at every position (the "massive activations" of the residual stream; for SmolLM2 one channel
reaches 30-55 where a row's RMS is about 2), and over one range per row they would leave the
other channels a handful of levels. Those channels (HEAD_OUTLIERS of them, found once per weights
file by `head_outlier_channels` on a fixed text and remembered) are taken out of the int8 product
and multiplied in float64 beside it, as LLM.int8() does with its outlier columns; float64 keeps
that side exact enough that a row still computes the same alone or in any batch. Measured by
`benchmarks/quantize.py`, this head costs about 0.05% held-out NLL over a float16 one, where a
plain int8 head cost about 0.5%; it reads a quarter of float32's bytes per token and is one
kernel call for a whole batch, where float16 on an AVX2 CPU goes row by row. The head also uses
the int8 kernel while a prompt is encoded (only the last position's logits are kept, and the first
token then comes from the same head as every other). The input embedding is a float16 copy of the
float32 table (looked up, then widened to float32); the fingerprint is taken from the float32
weights before any of this, and soft prompts stay float32. The held-out NLL change of the whole
scheme is measured by `benchmarks/quantize.py` through the incremental path chat takes. Training
always uses the float32 model.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import sys
import threading
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.nn.functional as F

from persona.errors import ConfigError, ModelError

PRECISIONS = ("auto", "fp32", "int8")
KERNELS = ("per-row", "row-by-row")  # how Int8Linear multiplies; see the module docstring
ROW_KERNEL_MAX_ROWS = 4  # "row-by-row": up to this many rows go through the int8 kernel one by one
# fbgemm's AVX2 kernel sums pairs of u8 x s8 products in int16, saturating: 255 * 63 * 2 < 32767.
# So weights use 7 bits (+-63) and activations all 8. The usual split (8-bit weights, activations
# cut to 7 bits by reduce_range) measured worse here: the activation error is what NLL feels.
WEIGHT_LEVELS = 63
QUANTIZE_BLOCK_ROWS = 4096  # output channels quantized at a time (see Int8Linear.from_linear)
PACK_BLOCK_ROWS = 8192  # output channels packed (and multiplied) at a time (see pack_weight)
QUANTIZED_TENSOR_WARNING = (
    r"torch\.quantize_per_tensor, torch\.quantize_per_channel and other quantized tensor"
)


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise ConfigError(f"precision={precision!r} is not one of {', '.join(PRECISIONS)}")
    return precision


def int8_supported() -> bool:
    engines = torch.backends.quantized.supported_engines
    return "fbgemm" in engines or "x86" in engines


def require_int8() -> None:
    if not int8_supported():
        raise ConfigError(
            "int8 is not supported by this torch build on this CPU; use --precision fp32"
        )


def quantize_int8(model: Any, head_outliers: torch.Tensor | None = None) -> Any:
    """In place: every nn.Linear of the model becomes an Int8Linear (see the module docstring).

    The output projection keeps `head_outliers` (input channel indices, from head_outlier_channels)
    out of its int8 product. The input embedding becomes a Float16Embedding, a float16 copy of the
    table, so the model holds no float32 copy of its largest matrix. Compute the fingerprint (of
    the float32 embedding) before calling this. persona's own decoder plans its decode step over
    its modules: call its fuse_int8_projections() afterwards (the loader does), which plans them
    again.
    """
    require_int8()
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    targets = [
        (name, module) for name, module in model.named_modules() if type(module) is torch.nn.Linear
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        replacement = (
            Int8Linear.from_linear(module, outliers=head_outliers, exact_prompts=False)
            if module is head
            else Int8Linear.from_linear(module)
        )
        setattr(parent, child, replacement)
    if type(embedding) is torch.nn.Embedding:
        model.set_input_embeddings(Float16Embedding(embedding.weight.detach()))
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False  # so nothing re-ties the head to the embedding module
    return model


HEAD_OUTLIERS = 32  # input channels of the output projection multiplied beside its int8 product
# What head_outlier_channels runs through the model: plain prose, long enough (about 100 tokens)
# that the channels found are the ones every text lights up, not this text's own.
CALIBRATION_TEXT = (
    "The old house stood at the end of the lane, and in the evenings the family gathered in "
    "the kitchen to talk about the day. My grandmother told stories of the war, of bread and "
    "letters and long winters; my father asked about the price of wheat. What is honour, she "
    "would say, but a word? We laughed, and then we were quiet, because the fire was warm and "
    "the rain had started again. Tomorrow, I thought, I will write all of this down."
)


def head_outlier_channels(model: Any, ids: list[int], count: int = HEAD_OUTLIERS) -> torch.Tensor:
    """The `count` input channels of `model`'s output projection with the largest magnitude over
    the positions of `ids` (the calibration text's token ids), ascending: what quantize_int8 keeps
    out of the head's int8 product. Runs the model once on `ids` (its decoder may be int8 already;
    the outlier channels come from the residual stream, which int8 keeps)."""
    head = model.get_output_embeddings()
    seen: list[torch.Tensor] = []
    hook = head.register_forward_pre_hook(lambda _module, args: seen.append(args[0].detach()))
    try:
        with torch.inference_mode(), exact_activations():
            model(input_ids=torch.tensor([ids], dtype=torch.long), logits_to_keep=0)
    finally:
        hook.remove()
    largest = seen[0].reshape(-1, seen[0].shape[-1]).abs().amax(dim=0)  # (D,)
    count = min(count, largest.numel())
    return largest.topk(count).indices.sort().values


def _row_kernel() -> Callable[..., torch.Tensor] | None:
    """fbgemm's dynamic int8 linear as the cheapest call this torch offers: `kernel(x, packed, False)`.

    Called through `torch.ops`, every call first asks each argument for `__torch_function__`, and
    asking the packed weight (a TorchScript object) raises and catches a C++ exception inside
    torch; a decode step makes 120 such calls. Calling the operator boxed through the dispatcher
    skips that check (nothing here overrides torch functions) and computes the same
    (`benchmarks/int8_calls.py` measures both). Falls back to the operator object where this
    torch lacks the dispatcher's Python entry points; None where it has no such operator.
    """
    find = getattr(torch._C, "_dispatch_find_schema_or_throw", None)
    call = getattr(torch._C, "_dispatch_call_boxed", None)
    if find is not None and call is not None:
        try:
            handle = find("quantized::linear_dynamic", "")
        except RuntimeError:
            pass
        else:
            return functools.partial(call, handle)
    try:
        overload = torch.ops.quantized.linear_dynamic.default
    except (AttributeError, RuntimeError):
        return None  # no int8 kernel in this build: require_int8() says so before any Int8Linear
    return getattr(overload, "_op", overload)


# Looked up once per process. What it pays: the boxed call skips a check that, on this model's small
# layers, costs about as much as the kernel itself; about a tenth of an int8 decode step.
_ROW_KERNEL = _row_kernel()


def _row_call(rows: torch.Tensor, packed: list[Any]) -> torch.Tensor:
    """The int8 kernel on `rows` (R, in) against prepacked weights, one call per packed block of
    output channels: (R, out)."""
    if _ROW_KERNEL is None:  # require_int8() refuses before any Int8Linear exists
        raise ModelError("this torch build has no int8 kernel (quantized::linear_dynamic)")
    if len(packed) == 1:
        result: torch.Tensor = _ROW_KERNEL(rows, packed[0], False)
        return result
    return torch.cat([_ROW_KERNEL(rows, block, False) for block in packed], dim=1)


@functools.cache
def _quiet_packing_warning() -> None:
    """Packing makes a quantized tensor, which torch warns is deprecated: that one message is
    ignored, set once by the first Int8Linear made (catch_warnings in the packing threads would
    race on the process-wide filter list), not at import."""
    warnings.filterwarnings("ignore", message=QUANTIZED_TENSOR_WARNING, category=UserWarning)


# Per thread: one float32 buffer the many-rows path dequantises into. What it pays: each many-rows
# call (every prefill) skips allocating its float32 weight, a fresh block of a megabyte or more,
# so a fresh mapping faulted in page by page; that is a large part of such a call on this model
# (benchmarks/int8_calls.py measures both ways).
_SCRATCH = threading.local()

# Per thread: whether calls are inside exact_activations() (encoding a prompt).
_EXACT = threading.local()


@contextlib.contextmanager
def exact_activations() -> Iterator[None]:
    """On this thread, until the block ends, int8 layers multiply with exact activations (the
    dequantised weight): what encoding a prompt uses; decode steps run outside it."""
    previous = getattr(_EXACT, "on", False)
    _EXACT.on = True
    try:
        yield
    finally:
        _EXACT.on = previous


GUARD = (1.0, -1.0)  # the two guard columns of a "per-row" call's input (see Int8Linear._per_row)


def _guarded_buffer(rows: int, width: int) -> torch.Tensor:
    """This thread's (rows, width + 2) float32 input buffer for "per-row" calls: the last two
    columns hold GUARD, the others are written by the caller and valid until its next call."""
    buffers = getattr(_SCRATCH, "guarded", None)
    if buffers is None:
        buffers = _SCRATCH.guarded = {}
    buffer = buffers.get(width)
    if buffer is None or buffer.shape[0] < rows:
        capacity = max(rows, 2 * (0 if buffer is None else buffer.shape[0]))
        with torch.inference_mode(False):  # a normal tensor: writable in and out of inference mode
            buffer = torch.empty(capacity, width + len(GUARD))
            buffer[:, width:] = torch.tensor(GUARD)
        buffers[width] = buffer
    return buffer[:rows]


class Int8Linear(torch.nn.Module):
    """y = x W^T + b with W held as int8 (per output channel); see the module docstring."""

    weight_int8: torch.Tensor | None  # buffers, declared for type checkers (see prepack)
    scale: torch.Tensor
    outliers: torch.Tensor | None
    outlier_weight: torch.Tensor | None

    def __init__(
        self,
        weight_int8: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None,
        *,
        outliers: torch.Tensor | None = None,
        outlier_weight: torch.Tensor | None = None,
        exact_prompts: bool = True,
    ) -> None:
        """outliers (k,) input channels whose weights, outlier_weight (out, k) float64, are kept out
        of the int8 product (their columns of weight_int8 are zero) and multiplied beside it;
        exact_prompts: whether calls inside exact_activations() use the dequantised weight (the
        decoder's layers) or the int8 kernel as always (the output projection)."""
        super().__init__()
        _quiet_packing_warning()
        self.in_features = int(weight_int8.shape[1])
        self.out_features = int(weight_int8.shape[0])
        self.register_buffer("weight_int8", weight_int8)  # (out, in) int8
        self.register_buffer("scale", scale)  # (out,) float32
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        if (outliers is None) != (outlier_weight is None):
            raise ValueError("outliers and outlier_weight go together")
        self.register_buffer("outliers", outliers)  # (k,) int64, or None
        self.register_buffer("outlier_weight", outlier_weight)  # (out, k) float64, or None
        self.exact_prompts = exact_prompts
        self._prompt_weight: torch.Tensor | None = None  # see keep_prompt_weight
        self.kernel = KERNELS[0]  # see set_int8_kernel
        # fbgemm's packed weight, made by prepack() (at first use at the latest), under a lock: a
        # decode step and the background packer never pack it twice
        self._packed: list[Any] | None = None
        self._pack_lock = threading.Lock()

    @property
    def is_packed(self) -> bool:
        """Whether the weight is packed for fbgemm's kernel already (see prepack)."""
        return self._packed is not None

    def prepack(self) -> list[Any]:
        """Pack the weight for fbgemm's kernel (once, whichever thread asks first); see prepack_all.

        A layer that never dequantises (the output projection: exact_prompts False) then lets its
        unpacked int8 weight go: the packed form holds the same numbers (int8_weight unpacks it),
        and for the head that is a quarter of the vocabulary matrix's float32 size held once,
        not twice."""
        if self._packed is None:
            with self._pack_lock:
                if self._packed is None:
                    self._packed = self.pack_weight()
        return self._packed

    def int8_weight(self) -> torch.Tensor:
        """The int8 weight (out, in): the one kept, or unpacked from fbgemm's form (see prepack)."""
        weight = self.weight_int8
        if weight is not None:
            return weight
        # packed already, or being packed on another thread: prepack waits for it
        blocks = [torch.ops.quantized.linear_unpack(block)[0] for block in self.prepack()]
        return torch.cat([block.int_repr()[:, : self.in_features] for block in blocks])

    def pack_weight(self) -> list[Any]:
        """fbgemm's packed form of this weight with two zero columns for the guard (no bias:
        forward adds it), made anew (prepack keeps the first one made, under its lock): one
        packed block per PACK_BLOCK_ROWS output channels, so that packing the output projection
        holds a block's copies at a time; the kernel then runs once per block."""
        weight, scale = self.int8_weight(), self.scale
        if not self.exact_prompts:
            self.weight_int8 = None  # let go block by block as the packed copy is made
        packed = []
        for start in range(0, self.out_features, PACK_BLOCK_ROWS):
            guarded = F.pad(weight[start : start + PACK_BLOCK_ROWS], (0, len(GUARD)))  # int8
            block_scale = scale[start : start + PACK_BLOCK_ROWS]
            qweight = torch._make_per_channel_quantized_tensor(
                guarded,
                block_scale.double(),
                torch.zeros_like(block_scale, dtype=torch.long),
                0,
            )
            packed.append(torch.ops.quantized.linear_prepack(qweight, None))
        return packed

    @classmethod
    def from_linear(
        cls,
        linear: torch.nn.Linear,
        *,
        outliers: torch.Tensor | None = None,
        exact_prompts: bool = True,
    ) -> Int8Linear:
        """`linear` quantized; `outliers` (input channel indices) kept out of the int8 product.

        Row block by row block, so that quantizing the output projection (V x D) holds a block's
        float32 temporaries at a time, not the whole matrix's."""
        weight = linear.weight.detach()  # (out, in)
        rows, width = (int(size) for size in weight.shape)
        outlier_weight = None
        if outliers is not None and outliers.numel():
            outliers = outliers.to(torch.long)
            outlier_weight = weight[:, outliers].to(torch.float64)  # (out, k)
        else:
            outliers = None
        quantized = torch.empty(rows, width, dtype=torch.int8)
        scale = torch.empty(rows, dtype=torch.float32)
        for start in range(0, rows, QUANTIZE_BLOCK_ROWS):
            block = weight[start : start + QUANTIZE_BLOCK_ROWS].to(torch.float32)  # (b, in)
            if outliers is not None:
                block = block.index_fill(1, outliers, 0.0)  # a copy: the linear keeps its weight
            block_scale = (block.abs().amax(dim=1) / WEIGHT_LEVELS).clamp_min(1e-12)  # (b,)
            scale[start : start + len(block)] = block_scale
            quantized[start : start + len(block)] = (
                torch.round(block / block_scale[:, None])
                .clamp_(-WEIGHT_LEVELS, WEIGHT_LEVELS)
                .to(torch.int8)
            )  # (b, in)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32).clone()
        return cls(
            quantized,
            scale,
            bias,
            outliers=outliers,
            outlier_weight=outlier_weight,
            exact_prompts=exact_prompts,
        )

    @classmethod
    def concatenate(cls, layers: list[Int8Linear]) -> Int8Linear:
        """One layer computing `layers` side by side (outputs concatenated): one kernel call instead of several.

        Exactly the same numbers: each output channel keeps its scale, and each row of activations is
        quantized once, as each layer alone would have done.
        """
        if (
            len({layer.in_features for layer in layers}) != 1
            or len({layer.bias is None for layer in layers}) != 1
            or any(layer.outliers is not None for layer in layers)
        ):
            raise ValueError(
                "only layers with the same input, all with (or all without) a bias and none with"
                " outlier channels concatenate"
            )
        biases = [layer.bias for layer in layers]
        bias = (
            None
            if biases[0] is None
            else torch.cat([b.detach() for b in biases if b is not None])  # all have one
        )
        return cls(
            torch.cat([layer.int8_weight() for layer in layers]),
            torch.cat([layer.scale for layer in layers]),
            bias,
        )

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (float32), outlier channels included, for code that reads `.weight`."""
        weight = self.int8_weight().to(torch.float32) * self.scale[:, None]
        if self.outliers is not None and self.outlier_weight is not None:
            weight[:, self.outliers] = self.outlier_weight.to(torch.float32)
        return weight

    def keep_prompt_weight(self) -> int:
        """Keep the dequantised float32 weight that encoding a prompt multiplies by, instead of
        making it anew at every call (the same numbers; four times the int8 weight's memory).
        Returns the bytes it holds."""
        if self._prompt_weight is None and self.exact_prompts:
            self._prompt_weight = self.int8_weight().to(torch.float32) * self.scale[:, None]
        return 0 if self._prompt_weight is None else self._prompt_weight.nbytes

    def _dequantised_into_scratch(self) -> torch.Tensor:
        """The float32 weight, written into this thread's scratch buffer (valid until the next call).

        Equal to `.weight`, without an allocation and with in-place steps instead of a mixed-dtype
        product (see _SCRATCH); the kept one where keep_prompt_weight has run.
        """
        if self._prompt_weight is not None:
            return self._prompt_weight
        size = self.out_features * self.in_features
        scratch = getattr(_SCRATCH, "buffer", None)
        if scratch is None or scratch.numel() < size:
            # a normal tensor: writable in and out of inference mode
            with torch.inference_mode(False):
                scratch = _SCRATCH.buffer = torch.empty(size, dtype=torch.float32)
        weight = scratch[:size].view(self.out_features, self.in_features)  # (out, in)
        return weight.copy_(self.int8_weight()).mul_(self.scale[:, None])

    def row(self, x: torch.Tensor) -> torch.Tensor:
        """forward() of rows x (R, in) -> (R, out) without reshaping: a decode step's call (chat's
        one row, or a server's batch), each row over its own range; exact inside
        exact_activations() where the layer is a decoder's (exact_prompts)."""
        if self.outliers is None or self.outlier_weight is None:
            return self._int8(x)
        # the outlier channels in float64: each product exact, its sum over k channels rounded
        # far below float32's last place, so a row's result does not depend on the batch's shape
        side = F.linear(x.index_select(1, self.outliers).double(), self.outlier_weight)  # (R, out)
        return self._int8(x.index_fill(1, self.outliers, 0.0)).add_(side.to(torch.float32))

    def _int8(self, x: torch.Tensor) -> torch.Tensor:
        """The int8 product of rows x (R, in) -> (R, out), bias included."""
        if self.kernel != "per-row":
            return self._row_by_row(x)
        if self.exact_prompts and getattr(_EXACT, "on", False):
            return F.linear(x, self._dequantised_into_scratch(), self.bias)  # (R, out)
        return self._per_row(x)

    def _per_row(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (R, in) -> (R, out) in one kernel call, each row quantized over its own range.

        Each row is divided by its largest magnitude, so it lies in [-1, 1]; two guard columns
        holding 1 and -1 (whose weights are zero) go with every row, so the kernel's range is
        always [-1, 1] (255 levels over each row's own [-max|x|, max|x|]), whatever the other
        rows of the call. Then x W^T = max|x| (u W^T).
        """
        largest = rows.abs().amax(dim=1, keepdim=True)  # (R, 1)
        largest.clamp_min_(torch.finfo(torch.float32).tiny)  # a row of zeros stays zeros
        unit = _guarded_buffer(rows.shape[0], self.in_features)  # (R, in + 2)
        torch.div(rows, largest, out=unit[:, : self.in_features])
        packed = self._packed if self._packed is not None else self.prepack()
        products = _row_call(unit, packed)  # (R, out) = u W^T
        if self.bias is None:
            return products.mul_(largest)  # (R, out)
        return torch.addcmul(self.bias, products, largest)  # (R, out)

    def _row_by_row(self, rows: torch.Tensor) -> torch.Tensor:
        """rows (R, in) -> (R, out) the previous way: the kernel once per row (its own range,
        [min(x, 0), max(x, 0)]) up to ROW_KERNEL_MAX_ROWS rows, else the dequantised weight."""
        if rows.shape[0] > ROW_KERNEL_MAX_ROWS:
            return F.linear(rows, self._dequantised_into_scratch(), self.bias)  # (R, out)
        packed = self._packed if self._packed is not None else self.prepack()
        padded = F.pad(rows, (0, len(GUARD)))  # (R, in + 2): zeros against the guard's weights
        y = torch.cat([_row_call(padded[i : i + 1], packed) for i in range(rows.shape[0])])
        return y if self.bias is None else y + self.bias  # (R, out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.row(x.reshape(-1, self.in_features)).reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        outliers = "" if self.outliers is None else f", {self.outliers.numel()} outlier channels"
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel{outliers}"


def keep_prompt_weights(model: Any) -> int:
    """Every decoder Int8Linear of `model` keeps its float32 weight for encoding prompts
    (Int8Linear.keep_prompt_weight): what a server pays in memory so that a request joining the
    batch does not dequantise the whole model first. Returns the bytes kept (0 for a model
    without int8 layers)."""
    modules = getattr(model, "modules", None)
    if modules is None:
        return 0
    return sum(module.keep_prompt_weight() for module in modules() if type(module) is Int8Linear)


def set_int8_kernel(model: torch.nn.Module, kernel: str) -> None:
    """Every Int8Linear of `model` multiplies by `kernel` (one of KERNELS; see the module docstring)."""
    if kernel not in KERNELS:
        raise ConfigError(f"kernel={kernel!r} is not one of {', '.join(KERNELS)}")
    for module in model.modules():
        if type(module) is Int8Linear:
            module.kernel = kernel


class Float16Embedding(torch.nn.Module):
    """An embedding table held in float16, looked up as float32."""

    weight_fp16: torch.Tensor  # (V, D), a buffer

    def __init__(self, weight: torch.Tensor) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = (int(size) for size in weight.shape)
        table = weight.to(torch.float16).contiguous()
        self.register_buffer("weight_fp16", table, persistent=False)  # (V, D)

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_fp16.to(torch.float32)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight_fp16).to(torch.float32)  # (..., D)

    def extra_repr(self) -> str:
        return f"{self.num_embeddings}, {self.embedding_dim}, float16"


def prepack_all(model: Any) -> threading.Thread:
    """Pack every Int8Linear of `model` for fbgemm on a thread of its own, in order; returns the thread.

    Loading does not wait for packing (about a second of one core for the default model's 120
    layers here); a call that reaches a layer first (a prompt encoded right after loading, a
    decode step) packs it itself, so the numbers never depend on timing.
    """
    layers = [m for m in model.modules() if type(m) is Int8Linear and not m.is_packed]
    # the output projection first: the first prompt's last position needs it, while the decoder
    # layers encode a prompt with their dequantised weights
    layers.sort(key=lambda layer: layer.exact_prompts)
    thread = threading.Thread(
        target=_pack_in_order, args=(layers,), name="persona-int8-packing", daemon=True
    )
    _stop_packing_at_exit()
    with _PACKERS_LOCK:
        _PACKERS.add(thread)
    thread.start()
    return thread


def packing_done() -> bool:
    """Whether no packing thread (see prepack_all) is still running."""
    with _PACKERS_LOCK:
        return not _PACKERS


# The packing threads still running, for the exit handler: a process that ends while one is inside
# fbgemm's packing call is torn down under it and aborts; the handler lets it finish first.
_PACKERS: set[threading.Thread] = set()
_PACKERS_LOCK = threading.Lock()
_STOP_PACKING = threading.Event()  # set at exit


def _pack_in_order(layers: list[Int8Linear]) -> None:
    if sys.platform.startswith("linux"):
        # a lower priority: work on the prompt comes first (Linux: per thread)
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
    try:
        for layer in layers:
            if _STOP_PACKING.is_set():
                return
            try:
                layer.prepack()
            except Exception:  # noqa: BLE001 - the layer packs itself at first use, and raises there
                return
    finally:
        with _PACKERS_LOCK:
            _PACKERS.discard(threading.current_thread())


@functools.cache
def _stop_packing_at_exit() -> None:
    """Registers _stop_packing once, with the first packing thread (not at import)."""
    atexit.register(_stop_packing)


def _stop_packing() -> None:
    """At exit: let the layers being packed finish (milliseconds), pack no more, wait for the threads."""
    _STOP_PACKING.set()
    with _PACKERS_LOCK:
        running = list(_PACKERS)
    for thread in running:
        thread.join()
