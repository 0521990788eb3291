"""The wire format of the fleet's shared adapter and of a device's update, and the server's checks on it.

The server sends the shared adapter as one flat float32 array (`lora.views` layout) with an
`AdapterSpec` (backbone identity, rank, alpha, bias, size). A device answers with its update, the
difference `local - shared` as one flat array in the transport dtype (float16 by default: half the bytes;
a difference is small, so float16's 11-bit mantissa loses nothing measurable, see docs/fleet.md).
Nothing here imports flwr.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core import lora
from ..core.shape import AdapterShape
from ..files.adapter import Adapter, adapter_config, layout_for
from ..files.bundle import Manifest
from ..files.formats import digest
from ..files.schema import check

SHARED_KEY = "adapter"      # ArrayRecord key: the shared adapter's flat parameters (float32)
UPDATE_KEY = "update"       # ArrayRecord key: a device's update, local - shared (transport dtype)
SPEC_KEY = "edgelora"       # ConfigRecord key: AdapterSpec fields + the round
UPDATE_DTYPES = ("float16", "float32")


@dataclass(frozen=True, kw_only=True)
class AdapterSpec(AdapterShape):
    """What the fleet trains: which backbone, which adapter shape (r, lora_alpha, bias: core/shape.py).
    Sent with every round."""
    fingerprint: str      # Manifest.identity of the bundle every device must hold
    lora_alpha: float     # scale = lora_alpha / r (explicit on the wire)
    size: int             # number of float parameters (lora.Layout.size)

    def __post_init__(self):
        super().__post_init__()   # the shape's checks
        check(isinstance(self.size, int) and self.size >= 1, f"`size` should be a positive integer, found {self.size!r}")

    def to_record(self) -> dict:
        return {"fingerprint": self.fingerprint, "r": self.r, "lora-alpha": float(self.lora_alpha),
                "bias": bool(self.bias), "size": self.size}

    @classmethod
    def from_record(cls, record) -> "AdapterSpec":
        """From a ConfigRecord (or dict) sent by the server; a missing or mistyped field is a ValueError."""
        want = {"fingerprint": str, "r": int, "lora-alpha": float, "bias": bool, "size": int}
        for key, kind in want.items():
            value = record.get(key) if hasattr(record, "get") else None
            if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
                raise ValueError(f"fleet message: field `{key}` should be a {kind.__name__}, found {value!r}")
        return cls(fingerprint=record["fingerprint"], r=record["r"], lora_alpha=record["lora-alpha"],
                   bias=record["bias"], size=record["size"])


def spec_for(manifest: Manifest, shape: AdapterShape) -> AdapterSpec:
    """The spec of an adapter of this shape over `manifest`'s backbone (alpha defaults to 2 r)."""
    size = layout_for(manifest, shape.r, shape.bias).size
    return AdapterSpec(fingerprint=manifest.identity, r=shape.r, lora_alpha=shape.alpha, bias=shape.bias, size=int(size))


def adapter_from(spec: AdapterSpec, manifest: Manifest, flat: np.ndarray, training: dict | None = None) -> Adapter:
    """An ordinary edgelora Adapter over `manifest` from the spec and flat parameters (copied, float32)."""
    if spec.fingerprint != manifest.identity:
        raise ValueError(f"the fleet trains an adapter for backbone {spec.fingerprint}, this device holds "
                         f"{manifest.identity}; install the fleet's bundle on this device")
    flat = np.asarray(flat)
    if flat.shape != (spec.size,):
        raise ValueError(f"shared adapter: expected {spec.size} parameters, found shape {flat.shape}")
    config = adapter_config(manifest, spec.r, spec.lora_alpha, spec.bias, training or {})
    return Adapter(config, np.array(flat, np.float32))


def initial_adapter(manifest: Manifest, spec: AdapterSpec, seed: int = 0) -> Adapter:
    """The round-0 shared adapter: A random, B zero (PEFT's convention), so it changes nothing yet."""
    return adapter_from(spec, manifest, lora.init(layout_for(manifest, spec.r, spec.bias), seed), {"fleet": {"round": 0}})


def encode_update(local: np.ndarray, shared: np.ndarray, dtype: str = "float16") -> np.ndarray:
    """A device's update: local - shared in the transport dtype."""
    if dtype not in UPDATE_DTYPES:
        raise ValueError(f"update dtype: expected one of {UPDATE_DTYPES}, found {dtype!r}")
    return (np.asarray(local, np.float64) - np.asarray(shared, np.float64)).astype(dtype)


def flat_sha256(flat: np.ndarray) -> str:
    """SHA-256 of flat float32 parameters: which shared adapter a round sent, or a device holds."""
    return digest(np.ascontiguousarray(flat, np.float32).tobytes())


def check_declared(dtype: str, shape, spec: AdapterSpec) -> str | None:
    """Why an update's declared dtype/shape is unacceptable (checked before its bytes are decoded), or None."""
    if dtype not in UPDATE_DTYPES:
        return f"dtype {dtype!r} (expected one of {list(UPDATE_DTYPES)})"
    if tuple(shape) != (spec.size,):
        return f"shape {tuple(shape)} (expected ({spec.size},))"
    return None


def check_update(update: np.ndarray, meta, spec: AdapterSpec, server_round: int, samples,
                 max_samples: int, max_norm: float, base: str | None = None) -> str | None:
    """Why the server must not aggregate this update, or None: every field a device sends is checked.

    `base` is the digest of the shared adapter this round sent: an update computed from another one (an
    earlier round's, replayed) is refused."""
    if meta is None:
        return f"no `{SPEC_KEY}` record (not an edgelora device?)"
    if meta.get("fingerprint") != spec.fingerprint:
        return f"backbone fingerprint {meta.get('fingerprint')!r} (expected {spec.fingerprint})"
    if meta.get("round") != server_round:
        return f"update for round {meta.get('round')!r} (expected {server_round}): stale"
    if base is not None and meta.get("base") != base:
        return (f"update computed from shared adapter {str(meta.get('base'))[:19]!r}, not this round's "
                f"{base[:19]}: stale or replayed")
    if not isinstance(samples, int) or isinstance(samples, bool) or not 1 <= samples <= max_samples:
        return f"num-examples {samples!r} (expected an integer in [1, {max_samples}])"
    reason = check_declared(str(update.dtype), update.shape, spec)
    if reason is not None:
        return reason
    return _finite_within(update, max_norm, "update norm", "")


def check_shared(flat: np.ndarray, max_norm: float) -> str | None:
    """Why a device must not keep a shared adapter the server sent, or None (it is checked before stored)."""
    flat = np.asarray(flat)
    if flat.dtype != np.float32:
        return f"dtype {flat.dtype} (expected float32)"
    return _finite_within(flat, max_norm, "norm", "; node config `max-shared-norm`")


def _finite_within(a: np.ndarray, max_norm: float, what: str, hint: str) -> str | None:
    """Why `a` is unusable (non-finite values, or an L2 norm above max_norm), or None."""
    if not np.isfinite(a).all():
        return f"{int((~np.isfinite(a)).sum())} non-finite values (NaN or inf)"
    norm = float(np.linalg.norm(a.astype(np.float64)))
    if not math.isfinite(norm) or norm > max_norm:
        return f"{what} {norm:.4g} (expected <= {max_norm:g}{hint})"
    return None
