"""int8 weights for chat on CPU: the frozen decoder's Linear layers; a float16 output projection.

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
* encoding a prompt (any call inside `exact_activations()`, which the backends' prefill enters):
  the int8 weight dequantised to float32 for the call, the activations exact (quantizing the
  prompt's positions too cost about 1.5% held-out NLL). Outside it, `forward` is a decode step
  of its rows.

The kernel "row-by-row" is the previous decode scheme, kept for comparison
(`benchmarks/int8_rows.py`, `set_int8_kernel`): one kernel call per row up to ROW_KERNEL_MAX_ROWS
rows (fbgemm's own range per row, [min(x, 0), max(x, 0)]), the dequantised weight above that.

The output projection (V x D, the largest matrix of a small model, read once per token) is kept
in float16 with float16 activations: int8 there moved the starters' held-out NLL by about 0.6% on
its own; float16 is near exact and still reads half of float32's bytes per token. The input
embedding is the same float16 matrix where the model ties the two (looked up, then widened to
float32); the fingerprint is taken from the float32 weights before any of this, and soft prompts
stay float32. The held-out NLL change of the whole scheme is measured by `benchmarks/quantize.py`
through the incremental path chat takes. Training always uses the float32 model.
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


def quantize_int8(model: Any) -> Any:
    """In place: every nn.Linear of the decoder becomes an Int8Linear, the output projection a Float16Linear.

    The input embedding becomes a Float16Embedding: one float16 matrix, shared with the output
    projection where the model ties them (SmolLM2 does), so the model holds no float32 copy of its
    largest matrix. Compute the fingerprint (of the float32 embedding) before calling this.
    persona's own decoder plans its decode step over its modules: call its
    fuse_int8_projections() afterwards (the loader does), which plans them again.
    """
    require_int8()
    head, embedding = model.get_output_embeddings(), model.get_input_embeddings()
    tied = (
        head is not None
        and type(embedding) is torch.nn.Embedding
        and head.weight is embedding.weight
    )
    targets = [
        (name, module) for name, module in model.named_modules() if type(module) is torch.nn.Linear
    ]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        replacement = (
            Float16Linear.from_linear(module) if module is head else Int8Linear.from_linear(module)
        )
        setattr(parent, child, replacement)
    if type(embedding) is torch.nn.Embedding:
        new_head = model.get_output_embeddings()
        shared = new_head.weight_fp16 if tied and new_head.bias is None else None
        model.set_input_embeddings(Float16Embedding(embedding.weight.detach(), shared))
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False  # so nothing re-ties the head to the embedding module
    return model


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


def _row_call(rows: torch.Tensor, packed: Any) -> torch.Tensor:
    """The int8 kernel on `rows` (R, in) against prepacked weights: (R, out)."""
    if _ROW_KERNEL is None:  # require_int8() refuses before any Int8Linear exists
        raise ModelError("this torch build has no int8 kernel (quantized::linear_dynamic)")
    result: torch.Tensor = _ROW_KERNEL(rows, packed, False)
    return result


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

    weight_int8: torch.Tensor  # buffers, declared for type checkers
    scale: torch.Tensor

    def __init__(
        self, weight_int8: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None
    ) -> None:
        super().__init__()
        _quiet_packing_warning()
        self.in_features = int(weight_int8.shape[1])
        self.out_features = int(weight_int8.shape[0])
        self.register_buffer("weight_int8", weight_int8)  # (out, in) int8
        self.register_buffer("scale", scale)  # (out,) float32
        self.bias = None if bias is None else torch.nn.Parameter(bias, requires_grad=False)
        self.kernel = KERNELS[0]  # see set_int8_kernel
        # fbgemm's packed weight, made by prepack() (at first use at the latest), under a lock: a
        # decode step and the background packer never pack it twice
        self._packed: Any = None
        self._pack_lock = threading.Lock()

    @property
    def is_packed(self) -> bool:
        """Whether the weight is packed for fbgemm's kernel already (see prepack)."""
        return self._packed is not None

    def prepack(self) -> Any:
        """Pack the weight for fbgemm's kernel (once, whichever thread asks first); see prepack_all."""
        if self._packed is None:
            with self._pack_lock:
                if self._packed is None:
                    self._packed = self.pack_weight()
        return self._packed

    def pack_weight(self) -> Any:
        """fbgemm's packed form of this weight with two zero columns for the guard (no bias:
        forward adds it), made anew (prepack keeps the first one made)."""
        guarded = F.pad(self.weight_int8, (0, len(GUARD)))  # (out, in + 2) int8
        qweight = torch._make_per_channel_quantized_tensor(
            guarded,
            self.scale.double(),
            torch.zeros_like(self.scale, dtype=torch.long),
            0,
        )
        return torch.ops.quantized.linear_prepack(qweight, None)

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Int8Linear:
        weight = linear.weight.detach().to(torch.float32)
        scale = (weight.abs().amax(dim=1) / WEIGHT_LEVELS).clamp_min(1e-12)  # (out,)
        quantized = (
            torch.round(weight / scale[:, None])
            .clamp_(-WEIGHT_LEVELS, WEIGHT_LEVELS)
            .to(torch.int8)
        )  # (out, in)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32).clone()
        return cls(quantized, scale, bias)

    @classmethod
    def concatenate(cls, layers: list[Int8Linear]) -> Int8Linear:
        """One layer computing `layers` side by side (outputs concatenated): one kernel call instead of several.

        Exactly the same numbers: each output channel keeps its scale, and each row of activations is
        quantized once, as each layer alone would have done.
        """
        if (
            len({layer.in_features for layer in layers}) != 1
            or len({layer.bias is None for layer in layers}) != 1
        ):
            raise ValueError(
                "only layers with the same input and all with (or all without) a bias concatenate"
            )
        biases = [layer.bias for layer in layers]
        bias = (
            None
            if biases[0] is None
            else torch.cat([b.detach() for b in biases if b is not None])  # all have one
        )
        return cls(
            torch.cat([layer.weight_int8 for layer in layers]),
            torch.cat([layer.scale for layer in layers]),
            bias,
        )

    @property
    def weight(self) -> torch.Tensor:
        """The dequantised weight (float32), for code that reads `.weight`."""
        return self.weight_int8.to(torch.float32) * self.scale[:, None]

    def _dequantised_into_scratch(self) -> torch.Tensor:
        """The float32 weight, written into this thread's scratch buffer (valid until the next call).

        Equal to `.weight`, without an allocation and with in-place steps instead of a mixed-dtype
        product (see _SCRATCH).
        """
        size = self.out_features * self.in_features
        scratch = getattr(_SCRATCH, "buffer", None)
        if scratch is None or scratch.numel() < size:
            # a normal tensor: writable in and out of inference mode
            with torch.inference_mode(False):
                scratch = _SCRATCH.buffer = torch.empty(size, dtype=torch.float32)
        weight = scratch[:size].view(self.out_features, self.in_features)  # (out, in)
        return weight.copy_(self.weight_int8).mul_(self.scale[:, None])

    def row(self, x: torch.Tensor) -> torch.Tensor:
        """forward() of rows x (R, in) -> (R, out) without reshaping: a decode step's call (chat's
        one row, or a server's batch), each row over its own range; exact inside exact_activations()."""
        if self.kernel != "per-row":
            return self._row_by_row(x)
        if getattr(_EXACT, "on", False):
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
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def set_int8_kernel(model: torch.nn.Module, kernel: str) -> None:
    """Every Int8Linear of `model` multiplies by `kernel` (one of KERNELS; see the module docstring)."""
    if kernel not in KERNELS:
        raise ConfigError(f"kernel={kernel!r} is not one of {', '.join(KERNELS)}")
    for module in model.modules():
        if type(module) is Int8Linear:
            module.kernel = kernel


class Float16Linear(torch.nn.Module):
    """y = x W^T + b computed in float16 (float32 in and out); for the output projection."""

    weight_fp16: torch.Tensor  # (out, in), a buffer

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
        super().__init__()
        self.out_features, self.in_features = (int(size) for size in weight.shape)
        self.register_buffer("weight_fp16", weight.to(torch.float16).contiguous())  # (out, in)
        self.bias = (
            None
            if bias is None
            else torch.nn.Parameter(bias.to(torch.float16), requires_grad=False)
        )

    @classmethod
    def from_linear(cls, linear: torch.nn.Linear) -> Float16Linear:
        return cls(linear.weight.detach(), None if linear.bias is None else linear.bias.detach())

    @property
    def weight(self) -> torch.Tensor:
        return self.weight_fp16.to(torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.to(torch.float16), self.weight_fp16, self.bias).to(torch.float32)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, float16"


class Float16Embedding(torch.nn.Module):
    """An embedding table held in float16 (possibly the output projection's own), looked up as float32."""

    weight_fp16: torch.Tensor  # (V, D), a buffer

    def __init__(self, weight: torch.Tensor, shared: torch.Tensor | None = None) -> None:
        super().__init__()
        self.num_embeddings, self.embedding_dim = (int(size) for size in weight.shape)
        table = shared if shared is not None else weight.to(torch.float16).contiguous()
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
