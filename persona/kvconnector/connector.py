"""PersonaConnector: vLLM's KVConnectorBase_V1 filling a persona's N positions from outside.

A request names its persona in `kv_transfer_params`: {"persona_kv": SHA256, "persona_rows": N}.
Its prompt is N placeholder ids (the gateway uses the conversation's first id, which the
repetition penalty counts anyway) followed by the rendered conversation, so the conversation runs
at positions N.., as it does after a prompt in persona's own engine and in PEFT. A request may
also carry "persona_width": W, the width of the gateway's personas; a server whose model takes
another fails it (how a gateway finds a server on another model at its start). vLLM must be
asked with a `cache_salt` of the persona's hash: the placeholders are the same ids for every
persona, and the salt keeps one persona's cached blocks from answering another's request.

Scheduler side: `get_num_new_matched_tokens` says the first N positions are available outside
once the persona's tensor is at hand (fetched on a thread; until then it answers None, "ask me
again", and the request waits without holding up the others). A local prefix-cache hit that
already covers them leaves nothing to load. `update_state_after_alloc` and
`build_connector_meta` turn the claimed positions into cache slots.

Worker side: `start_load_kv` runs before the forward pass (vLLM orders synchronous loads first)
and writes each layer's keys and values into those slots through the attention backend's own
`do_kv_cache_update`, the call the model's forward pass writes its own keys and values with, so
whatever the backend's cache layout (CPU, flash attention, fp8) the persona lands as the model's
own would. Tensor parallelism: each worker writes its own KV heads.

A persona that cannot be had (no such file, a hash that does not match, the wrong shape for this
model, the gateway unreachable) fails its request alone: its blocks are reported as failed loads,
and vLLM's default kv_load_failure_policy "fail" ends that request with an error.
"""

from __future__ import annotations

import re
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from vllm.distributed.kv_transfer.kv_connector.v1.base import (
    KVConnectorBase_V1,
    KVConnectorMetadata,
    KVConnectorRole,
)
from vllm.logger import init_logger

from .store import KVSource, KVStore, KVUnavailable, check_sha256

if TYPE_CHECKING:
    from vllm.config import VllmConfig
    from vllm.forward_context import ForwardContext
    from vllm.v1.core.kv_cache_manager import KVCacheBlocks
    from vllm.v1.core.sched.output import SchedulerOutput
    from vllm.v1.kv_cache_interface import KVCacheConfig
    from vllm.v1.request import Request

logger = init_logger("vllm.kv_connector.persona")  # under vLLM's own logging set-up

SHA_PARAM = "persona_kv"
ROWS_PARAM = "persona_rows"
WIDTH_PARAM = "persona_width"
_LAYER_INDEX = re.compile(r"(?:^|\.)layers\.(\d+)\.")


@dataclass
class Load:
    """Positions start..end of one request's persona into cache slots (one per position)."""

    request_id: str
    sha256: str
    start: int
    end: int
    slots: list[int]
    error: str = ""  # set where the scheduler already knows the persona cannot be loaded


@dataclass
class PersonaConnectorMetadata(KVConnectorMetadata):
    loads: list[Load] = field(default_factory=list)


@dataclass
class _Wanted:
    """What the scheduler side knows of one request's persona."""

    sha256: str
    rows: int
    computed: int = 0  # positions vLLM's own prefix cache already held when asked
    error: str = ""
    external: int = 0  # positions claimed from outside (after allocation)


def persona_of(params: Any) -> tuple[str, int] | None:
    """(sha256, N) named by a request's kv_transfer_params; None where it names no persona.
    KVUnavailable where it names one badly."""
    if not isinstance(params, dict) or SHA_PARAM not in params:
        return None
    sha256 = check_sha256(params[SHA_PARAM])
    rows = params.get(ROWS_PARAM)
    if isinstance(rows, bool) or not isinstance(rows, int) or rows < 1:
        raise KVUnavailable(f"{ROWS_PARAM}={rows!r} must be the persona's positions, 1 or more")
    return sha256, rows


def slots_of(block_ids: list[int], block_size: int, start: int, end: int) -> list[int]:
    """The cache slots of positions start..end-1 of a request whose blocks are `block_ids`."""
    return [block_ids[p // block_size] * block_size + p % block_size for p in range(start, end)]


class PersonaConnector(KVConnectorBase_V1):
    def __init__(
        self, vllm_config: VllmConfig, role: KVConnectorRole, kv_cache_config: KVCacheConfig
    ) -> None:
        super().__init__(vllm_config=vllm_config, role=role, kv_cache_config=kv_cache_config)
        extra = self._kv_transfer_config.kv_connector_extra_config or {}
        self._store = KVStore(KVSource.from_extra_config(extra))
        self._block_size = vllm_config.cache_config.block_size
        model = vllm_config.model_config
        self._layers = model.get_total_num_hidden_layers()
        self._kv_heads = model.get_total_num_kv_heads()
        self._head_dim = model.get_head_size()
        self._dtype = model.dtype
        self._width = self._layers * 2 * self._kv_heads * self._head_dim
        # scheduler side
        self._wanted: dict[str, _Wanted] = {}
        self._fetches: dict[str, Future[torch.Tensor]] = {}
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="persona-kv")
        # worker side
        self._failed_blocks: set[int] = set()
        logger.info(
            "persona KV connector: layout %dx%dx%d, source %s",
            self._layers,
            self._kv_heads,
            self._head_dim,
            self._store.source.url or self._store.source.directory,
        )

    # ---------------------------------------------------------------- scheduler side

    def get_num_new_matched_tokens(
        self, request: Request, num_computed_tokens: int
    ) -> tuple[int | None, bool]:
        wanted = self._wanted.get(request.request_id)
        if wanted is None:
            params = request.kv_transfer_params
            try:
                self._check_width(params)
                named = persona_of(params)
            except KVUnavailable as exc:
                named, error = ("0" * 64, 1), str(exc)
            else:
                error = ""
            if named is None:
                return 0, False
            wanted = _Wanted(*named, error=error)
            if wanted.rows >= request.num_prompt_tokens:
                wanted.rows = max(1, request.num_prompt_tokens - 1)
                wanted.error = wanted.error or (
                    f"the prompt ({request.num_prompt_tokens} ids) must be longer than the "
                    f"persona's {named[1]} positions"
                )
            self._wanted[request.request_id] = wanted
        wanted.computed = num_computed_tokens
        if num_computed_tokens >= wanted.rows:
            return 0, False  # vLLM's prefix cache already holds the persona's positions
        if not wanted.error:
            ready = self._fetch(wanted)
            if ready is None:
                return None, False  # still fetching: vLLM asks again on a later step
        return wanted.rows - num_computed_tokens, False

    def _check_width(self, params: Any) -> None:
        """A gateway names the width its personas have (`persona_width`): a server on a model
        with another KV layout fails the request, which tells the gateway at its start."""
        width = params.get(WIDTH_PARAM) if isinstance(params, dict) else None
        if width is not None and width != self._width:
            raise KVUnavailable(
                f"the gateway's personas are {width} wide; this model's cache "
                f"({self._layers}x{self._kv_heads}x{self._head_dim}) takes {self._width}"
            )

    def _fetch(self, wanted: _Wanted) -> bool | None:
        """True once the persona is at hand and fits; None while it is being fetched; on failure
        wanted.error says why (and the request fails on the worker)."""
        future = self._fetches.get(wanted.sha256)
        if future is None:
            if self._store.cached(wanted.sha256):
                future = Future()
                try:
                    future.set_result(self._store.get(wanted.sha256))
                except KVUnavailable as exc:
                    future.set_exception(exc)
            else:
                future = self._pool.submit(self._store.get, wanted.sha256)
            self._fetches[wanted.sha256] = future
        if not future.done():
            return None
        try:
            kv = future.result()
        except Exception as exc:  # KVUnavailable, or anything a fetch thread raised
            del self._fetches[wanted.sha256]  # a later request tries again
            wanted.error = str(exc) or type(exc).__name__
            return True
        del self._fetches[wanted.sha256]  # the store keeps it; the next request finds it cached
        wanted.error = self._misfit(kv, wanted)
        return True

    def _misfit(self, kv: torch.Tensor, wanted: _Wanted) -> str:
        if kv.shape[1] != self._width:
            return (
                f"persona KV {wanted.sha256[:12]} is {kv.shape[1]} wide; this model's cache "
                f"({self._layers}x{self._kv_heads}x{self._head_dim}) takes {self._width}"
            )
        if kv.shape[0] != wanted.rows:
            return (
                f"persona KV {wanted.sha256[:12]} has {kv.shape[0]} positions, the request "
                f"says {wanted.rows}"
            )
        return ""

    def update_state_after_alloc(
        self, request: Request, blocks: KVCacheBlocks, num_external_tokens: int
    ) -> None:
        wanted = self._wanted.get(request.request_id)
        if wanted is not None:
            wanted.external = num_external_tokens

    def build_connector_meta(self, scheduler_output: SchedulerOutput) -> KVConnectorMetadata:
        meta = PersonaConnectorMetadata()
        for new in scheduler_output.scheduled_new_reqs:
            self._add_load(meta, new.req_id, new.block_ids[0])
        cached = scheduler_output.scheduled_cached_reqs
        for index, request_id in enumerate(cached.req_ids):
            new_blocks = cached.new_block_ids[index]
            if request_id in cached.resumed_req_ids and new_blocks is not None:
                self._add_load(meta, request_id, new_blocks[0])  # all its blocks, once resumed
        return meta

    def _add_load(self, meta: PersonaConnectorMetadata, request_id: str, blocks: list[int]) -> None:
        wanted = self._wanted.get(request_id)
        if wanted is None or wanted.external <= 0:
            return
        start, end = wanted.computed, wanted.computed + wanted.external
        slots = slots_of(list(blocks), self._block_size, start, end)
        meta.loads.append(Load(request_id, wanted.sha256, start, end, slots, wanted.error))
        wanted.external = 0  # loaded once; a preempted request claims it again when resumed

    def request_finished(
        self, request: Request, block_ids: list[int]
    ) -> tuple[bool, dict[str, Any] | None]:
        self._wanted.pop(request.request_id, None)
        return False, None

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ---------------------------------------------------------------- worker side

    def start_load_kv(self, forward_context: ForwardContext, **kwargs: Any) -> None:
        if not self.has_connector_metadata():
            return
        meta = self._get_connector_metadata()
        if not isinstance(meta, PersonaConnectorMetadata) or not meta.loads:
            return
        layers = _attention_layers(forward_context)
        for load in meta.loads:
            try:
                if load.error:
                    raise KVUnavailable(load.error)
                self._write(load, layers)
            except KVUnavailable as exc:
                logger.error("request %s: persona not loaded: %s", load.request_id, exc)
                self._failed_blocks.update(slot // self._block_size for slot in load.slots)

    def _write(self, load: Load, layers: list[tuple[int, Any]]) -> None:
        kv = self._store.get(load.sha256)  # (N, W) float32
        if kv.shape[1] != self._width or kv.shape[0] < load.end:
            raise KVUnavailable(
                f"persona KV {load.sha256[:12]} is {tuple(kv.shape)}; this model takes "
                f"(N >= {load.end}, {self._width})"
            )
        rows = kv[load.start : load.end].view(
            -1, self._layers, 2, self._kv_heads, self._head_dim
        )  # (T, L, 2, H, d)
        for index, layer in layers:
            heads = self._local_heads(layer)
            cache = layer.kv_cache
            keys = rows[:, index, 0, heads].to(cache.device, self._dtype).contiguous()  # (T, h, d)
            values = rows[:, index, 1, heads].to(cache.device, self._dtype).contiguous()
            slots = torch.tensor(load.slots, dtype=torch.long, device=cache.device)  # (T,)
            layer.impl.do_kv_cache_update(layer, keys, values, cache, slots)

    def _local_heads(self, layer: Any) -> slice:
        """The KV heads this worker holds (all of them without tensor parallelism)."""
        local = int(layer.num_kv_heads)
        if local == self._kv_heads:
            return slice(0, local)
        from vllm.distributed.parallel_state import (
            get_tensor_model_parallel_rank,
            get_tensor_model_parallel_world_size,
        )

        rank, size = get_tensor_model_parallel_rank(), get_tensor_model_parallel_world_size()
        if self._kv_heads >= size:
            first = rank * local
        else:  # fewer KV heads than workers: each head is replicated on size // heads workers
            first = rank // (size // self._kv_heads)
        return slice(first, first + local)

    def get_block_ids_with_load_errors(self) -> set[int]:
        failed, self._failed_blocks = self._failed_blocks, set()
        return failed

    def wait_for_layer_load(self, layer_name: str) -> None:
        return

    def save_kv_layer(
        self, layer_name: str, kv_layer: torch.Tensor, attn_metadata: Any, **kwargs: Any
    ) -> None:
        return

    def wait_for_save(self) -> None:
        return


def _attention_layers(forward_context: ForwardContext) -> list[tuple[int, Any]]:
    """(layer index, attention layer) of every attention layer with a cache on this worker."""
    found = []
    for name, layer in forward_context.no_compile_layers.items():
        cache = getattr(layer, "kv_cache", None)
        match = _LAYER_INDEX.search(name)
        if not isinstance(cache, torch.Tensor) or match is None or cache.numel() == 0:
            continue
        if not hasattr(getattr(layer, "impl", None), "do_kv_cache_update"):
            continue
        found.append((int(match.group(1)), layer))
    return found
