"""Shared plus personal: a device's own adapter trained on top of the fleet's shared adapter.

The personal adapter NAME lives in the device's adapter store. The shared adapter becomes one of its
versions (published as is: the fleet vouches for it), and `edgelora.ops.personalize` then trains a candidate
warm-started from it on the device's samples and publishes it only if, on the holdout, it is not worse
than the shared adapter by more than the margin. So the device serves the personal adapter when it
helps and the shared one when it does not. A newer shared adapter is published over the personal one
(recorded with its digest) and the next session with new samples personalises on top of it again.
Nothing here imports flwr.
"""
from __future__ import annotations

from ..files.adapter import Adapter
from ..files.formats import digest
from ..ops.personalize import PersonalizeConfig, PersonalizeResult, personalize
from ..ops.store import AdapterStore
from ..runtime.backbone import Backbone
from .update import flat_sha256

BASE_KEY = "fleet_shared_sha256"   # VersionInfo.extra key: digest of the shared adapter a version is


def shared_digest(shared: Adapter) -> str:
    """SHA-256 of the shared adapter's parameters and shape (what identifies one round's result)."""
    c = shared.config
    return digest(f"{c.backbone_fingerprint}|{c.r}|{c.lora_alpha}|{c.bias}|{flat_sha256(shared.flat)}".encode())


def base_of(store: AdapterStore, name: str) -> str | None:
    """Digest of the shared adapter NAME's current version stands on (following parents), or None."""
    v = store.current(name) if store.exists(name) else None
    for _ in range(len(store.version_numbers(name)) if v is not None else 0):   # bounded walk
        if not store.version_dir(name, v).is_dir():
            return None   # pruned: unknown base
        info = store.info(name, v)
        if BASE_KEY in info.extra:
            return info.extra[BASE_KEY]
        if info.parent is None:
            return None
        v = info.parent
    return None


def adopt_shared(store: AdapterStore, name: str, shared: Adapter) -> int:
    """Publish `shared` as NAME's current version unless NAME already stands on it; returns the current."""
    digest = shared_digest(shared)
    with store.lock():
        if base_of(store, name) == digest:
            return store.current(name)
        cur = store.current(name) if store.exists(name) else None
        info = store.add_version(name, shared, parent=cur, samples=0, reason="the fleet's shared adapter",
                                 extra={BASE_KEY: digest, "fleet": shared.config.training.get("fleet", {})})
        store.set_current(name, info.version)
        return info.version


def personalize_on_shared(store: AdapterStore, name: str, backbone: Backbone, shared: Adapter, x_new, y_new,
                          config: PersonalizeConfig = PersonalizeConfig()) -> PersonalizeResult:
    """Adopt the shared adapter as NAME's base, then run a personalisation session on (x_new, y_new)."""
    shared.check_backbone(backbone.manifest, "shared adapter")
    adopt_shared(store, name, shared)
    return personalize(store, name, backbone, x_new, y_new, config)
