"""A persona's keys and values as the connector gets them: by sha256, verified, cached.

The tensor is one (N, W) float32 matrix in PEFT's PREFIX_TUNING layout (W = layers x 2 x kv_heads
x head_dim; row n viewed as (layers, 2, kv_heads, head_dim): layer l's keys at [l, 0], its values
at [l, 1]), saved as safetensors under the key `kv`. Its name is the sha256 of its float32 values
(little-endian, row-major: a deep persona's own checksum in persona's library), so a file is
checked against the name it was asked for wherever it comes from, and cached on disk under it. Sources, in order: this process's memory, the cache directory, a directory of
`SHA256.safetensors` files, the gateway's `GET {url}/v1/personas/{sha256}/kv` (bearer key).

Imports only torch, safetensors and the standard library: it runs inside vLLM's environment.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import threading
import urllib.error
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

KV_KEY = "kv"
ROUTE = "/v1/personas/{sha256}/kv"
KEY_ENV = "PERSONA_KV_KEY"  # the environment variable that holds the gateway's API key by default
MAX_KV_BYTES = 1 << 30
MEMORY_ITEMS = 64  # personas kept in memory per process
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


class KVUnavailable(Exception):
    """A persona's keys and values cannot be had; the message is one line that says why."""


def kv_bytes(kv: torch.Tensor) -> bytes:
    """The safetensors bytes of an (N, W) keys-and-values matrix, as the gateway serves them."""
    if kv.dim() != 2 or 0 in kv.shape:
        raise ValueError(f"expected an (N, W) matrix, got shape {tuple(kv.shape)}")
    return st_save({KV_KEY: kv.detach().to(torch.float32).contiguous().cpu()})


def kv_sha256(kv: torch.Tensor) -> str:
    """The name of an (N, W) matrix: sha256 of its float32 values as stored, hex."""
    return hashlib.sha256(
        kv.detach().to(torch.float32).contiguous().cpu().numpy().tobytes()
    ).hexdigest()


def check_sha256(sha256: Any) -> str:
    if not isinstance(sha256, str) or not _SHA256.match(sha256):
        raise KVUnavailable(f"persona KV name {str(sha256)[:80]!r} is not a lowercase sha256 hex")
    return sha256


def parse_kv(data: bytes, sha256: str) -> torch.Tensor:
    """The (N, W) float32 matrix in `data`, refused unless its values' sha256 is `sha256`."""
    try:
        tensors = st_load(data)
    except Exception as exc:  # safetensors raises its own error types
        raise KVUnavailable(f"persona KV {sha256[:12]} is not safetensors: {exc}") from None
    kv = tensors.get(KV_KEY)
    if kv is None or set(tensors) != {KV_KEY}:
        raise KVUnavailable(f"persona KV {sha256[:12]} holds {sorted(tensors)}, not [{KV_KEY!r}]")
    if kv.dim() != 2 or 0 in kv.shape or kv.dtype != torch.float32:
        raise KVUnavailable(
            f"persona KV {sha256[:12]} is {kv.dtype} {tuple(kv.shape)}, not an (N, W) float32 matrix"
        )
    actual = kv_sha256(kv)
    if actual != sha256:
        raise KVUnavailable(f"persona KV {sha256[:12]} does not match its hash (got {actual[:12]})")
    if not torch.isfinite(kv).all():
        raise KVUnavailable(f"persona KV {sha256[:12]} holds NaN or infinite values")
    return kv


@dataclass(frozen=True)
class KVSource:
    """Where the connector finds personas (kv_connector_extra_config names them):

    url: the gateway's base URL; key: its API key (else read from the variable `key_env`);
    directory: files named SHA256.safetensors; cache_dir: where fetched files are kept."""

    url: str | None = None
    key: str | None = None
    directory: str | None = None
    cache_dir: str | None = None
    timeout_s: float = 30.0

    def __post_init__(self) -> None:
        if self.url is not None and not self.url.startswith(("http://", "https://")):
            raise ValueError(f"persona KV url {self.url!r} must start with http:// or https://")
        if self.url is None and self.directory is None:
            raise ValueError(
                "persona's KV connector needs a url or a directory to read personas from"
            )
        if not self.timeout_s > 0:
            raise ValueError(f"persona KV timeout_s={self.timeout_s!r} must be more than 0")

    @classmethod
    def from_extra_config(
        cls, extra: Mapping[str, Any], environ: Mapping[str, str] = os.environ
    ) -> KVSource:
        """From vLLM's kv_connector_extra_config: url, key_env (default PERSONA_KV_KEY),
        directory, cache_dir (default a folder under the system's temp dir), timeout_s."""
        url = extra.get("url") or None
        key = environ.get(str(extra.get("key_env") or KEY_ENV)) or None
        cache_dir = extra.get("cache_dir") or os.path.join(
            tempfile.gettempdir(), f"persona-kv-{os.getuid()}"
        )
        return cls(
            url=url.rstrip("/") if url else None,
            key=key,
            directory=extra.get("directory") or None,
            cache_dir=cache_dir,
            timeout_s=float(extra.get("timeout_s", 30.0)),
        )


class KVStore:
    """Personas by sha256: memory (an LRU of MEMORY_ITEMS, shared by the process), then disk, then
    the source. Safe to call from several threads."""

    _memory: OrderedDict[str, torch.Tensor] = OrderedDict()
    _lock = threading.Lock()

    def __init__(self, source: KVSource) -> None:
        self.source = source

    def cached(self, sha256: str) -> bool:
        """Whether `sha256` is at hand without asking the gateway."""
        with self._lock:
            if sha256 in self._memory:
                return True
        return any(path.is_file() for path in self._local_paths(sha256))

    def get(self, sha256: str) -> torch.Tensor:
        """The (N, W) float32 matrix named `sha256`; KVUnavailable says why not."""
        check_sha256(sha256)
        with self._lock:
            kv = self._memory.get(sha256)
            if kv is not None:
                self._memory.move_to_end(sha256)
                return kv
        kv = self._load(sha256)
        with self._lock:
            self._memory[sha256] = kv
            while len(self._memory) > MEMORY_ITEMS:
                self._memory.popitem(last=False)
        return kv

    def _local_paths(self, sha256: str) -> list[Path]:
        folders = [self.source.cache_dir, self.source.directory]
        return [Path(folder) / f"{sha256}.safetensors" for folder in folders if folder]

    def _load(self, sha256: str) -> torch.Tensor:
        problems = []
        for path in self._local_paths(sha256):
            if not path.is_file():
                continue
            try:
                return parse_kv(path.read_bytes(), sha256)
            except (OSError, KVUnavailable) as exc:
                problems.append(f"{path}: {exc}")
        if self.source.url is None:
            found = "; ".join(problems) or f"not in {self.source.directory}"
            raise KVUnavailable(f"persona KV {sha256[:12]} unavailable: {found}")
        data = self._download(sha256)
        kv = parse_kv(data, sha256)
        self._keep(sha256, data)
        return kv

    def _download(self, sha256: str) -> bytes:
        url = f"{self.source.url}{ROUTE.format(sha256=sha256)}"
        request = urllib.request.Request(url)
        if self.source.key:
            request.add_header("Authorization", f"Bearer {self.source.key}")
        try:
            with urllib.request.urlopen(request, timeout=self.source.timeout_s) as response:
                data = response.read(MAX_KV_BYTES + 1)
        except urllib.error.HTTPError as exc:
            raise KVUnavailable(f"persona KV {sha256[:12]}: {url} answered {exc.code}") from None
        except (OSError, ValueError) as exc:
            raise KVUnavailable(f"persona KV {sha256[:12]}: cannot fetch {url}: {exc}") from None
        if len(data) > MAX_KV_BYTES:
            raise KVUnavailable(
                f"persona KV {sha256[:12]}: {url} sent more than {MAX_KV_BYTES} bytes"
            )
        return data

    def _keep(self, sha256: str, data: bytes) -> None:
        """Write the verified bytes into the cache directory (atomically; a failure only costs a
        later download)."""
        if not self.source.cache_dir:
            return
        folder = Path(self.source.cache_dir)
        try:
            folder.mkdir(parents=True, exist_ok=True, mode=0o700)
            handle, temporary = tempfile.mkstemp(dir=folder, prefix=".part-")
            with os.fdopen(handle, "wb") as out:
                out.write(data)
            os.replace(temporary, folder / f"{sha256}.safetensors")
        except OSError:
            pass
