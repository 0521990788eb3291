"""The Flower strategy of a fleet: bounded sampling, checked updates, FedAvg or server momentum.

Differences from Flower's FedAvg, and why:
- Sampling waits for `min_clients` connected devices at most `node_wait` seconds, then fails the run with
  a clear error (Flower's `sample_nodes` waits forever).
- Every reply is checked before anything is aggregated (`update.check_update`): an error reply, a missing
  record, another backbone's fingerprint, a stale round, a wrong dtype or shape (checked before the bytes
  are decoded), NaN/inf, an absurd norm or sample count. A rejected update is logged with its reason and
  left out; Flower's FedAvg would raise on inconsistent replies and stop the whole run.
- With fewer than `min_clients` valid updates the shared adapter stays as it was for that round.
- `on_round(info)` is called once per round: after aggregation, or after evaluation when devices evaluate.
"""
from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from logging import INFO, WARNING

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg
from flwr.supercore import log
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from .aggregate import ServerOptimizer
from .evaluation import NUM_EXAMPLES, check_metrics, mean_metrics, out_of_bounds, robust_metrics
from .robust import RobustRule, cap_samples
from .update import SHARED_KEY, flat_sha256, SPEC_KEY, UPDATE_KEY, AdapterSpec, check_declared, check_update


def message_bytes(msg: Message) -> int:
    """Bytes of a message as Flower sends it: every serialised object of its tree (without HTTP framing)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(msg).values())


def wait_for_nodes(grid: Grid, minimum: int, wait: float) -> list[int]:
    """The connected node IDs once at least `minimum` are connected; RuntimeError after `wait` seconds."""
    deadline = time.monotonic() + wait
    while len(nodes := sorted(grid.get_node_ids())) < minimum:
        if time.monotonic() > deadline:
            raise RuntimeError(f"only {len(nodes)} devices connected after {wait:g} s; the fleet needs at "
                               f"least {minimum} (min-clients)")
        time.sleep(0.5)
    return nodes


class FleetStrategy(FedAvg):
    """Robust federated averaging of edgelora skip adapters: every reply checked (replays refused), updates
    combined by `rule` (edgelora.fleet.robust); `optimizer` adds server momentum if asked."""

    def __init__(self, spec: AdapterSpec, optimizer: ServerOptimizer, *, min_clients: int = 2,
                 node_wait: float = 120.0, max_samples: int = 1_000_000, max_norm: float = 1e3,
                 evaluate: bool = False, on_round: Callable[[dict], None] | None = None,
                 rule: RobustRule | None = None):
        super().__init__(min_train_nodes=min_clients, min_available_nodes=min_clients,
                         min_evaluate_nodes=min_clients if evaluate else 0,
                         fraction_evaluate=1.0 if evaluate else 0.0)
        self.spec, self.optimizer, self.min_clients, self.node_wait = spec, optimizer, min_clients, node_wait
        self.max_samples, self.max_norm, self.on_round = max_samples, max_norm, on_round
        self.rule = rule or RobustRule()
        self._seen: set[str] = set()   # digests of every update accepted so far: a replay is refused
        self.shared: np.ndarray | None = None
        self.rounds: list[dict] = []
        self._sent_at, self._sent_sha = 0.0, ""

    def _messages(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid,
                  kind: str) -> Iterable[Message]:
        nodes = wait_for_nodes(grid, self.min_clients, self.node_wait)
        config["server-round"] = server_round
        meta = ConfigRecord({**self.spec.to_record(), "round": server_round})
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config, SPEC_KEY: meta})
        log(INFO, "round %d: %s sent to %d devices", server_round, kind, len(nodes))
        return self._construct_messages(record, nodes, kind)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        self.shared = arrays[SHARED_KEY].numpy().astype(np.float32)
        self._sent_at = time.monotonic()
        self._sent_sha = flat_sha256(self.shared)
        return self._messages(server_round, arrays, config, grid, MessageType.TRAIN)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if self.fraction_evaluate == 0.0:
            return []
        return self._messages(server_round, arrays, config, grid, MessageType.EVALUATE)

    def check_reply(self, msg: Message, server_round: int) -> tuple[np.ndarray | None, int, str | None]:
        """(update as float32, samples, None) or (None, 0, reason to reject)."""
        if msg.has_error():
            return None, 0, f"error reply: {msg.error.reason}"
        content = msg.content
        if self.arrayrecord_key not in content.array_records or UPDATE_KEY not in content[self.arrayrecord_key]:
            return None, 0, f"no `{UPDATE_KEY}` array"
        array = content[self.arrayrecord_key][UPDATE_KEY]
        reason = check_declared(array.dtype, array.shape, self.spec)  # before decoding any bytes
        if reason is not None:
            return None, 0, reason
        try:
            update = array.numpy()
        except Exception as e:  # noqa: BLE001 - a device's bytes: any decoding failure is a rejection
            return None, 0, f"undecodable update ({type(e).__name__}: {e})"
        meta = content.config_records.get(SPEC_KEY)
        metrics = content.metric_records.get("metrics")
        samples = metrics.get(NUM_EXAMPLES) if metrics is not None else None
        reason = check_update(update, meta, self.spec, server_round, samples, self.max_samples, self.max_norm,
                              base=self._sent_sha)
        if reason is None and np.any(update):   # an all-zero update carries nothing to replay
            digest = flat_sha256(update.astype(np.float32))
            if digest in self._seen:
                reason = f"replayed update (digest {digest[:19]} was already received)"
            self._seen.add(digest)
        return (None, 0, reason) if reason else (update.astype(np.float32), int(samples), None)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]):
        replies = list(replies)
        updates, samples, accepted, rejected, sizes = [], [], [], [], []
        for msg in replies:
            node = msg.metadata.src_node_id
            update, n, reason = self.check_reply(msg, server_round)
            if reason is not None:
                log(WARNING, "round %d: rejected the update of node %d: %s", server_round, node, reason)
                rejected.append({"node": int(node), "reason": reason})
                continue
            updates.append(update)
            samples.append(n)
            accepted.append(msg)
            sizes.append(message_bytes(msg))
        info = {"round": server_round, "accepted": len(accepted), "rejected": rejected, "sent_sha256": self._sent_sha,
                "nodes": [int(m.metadata.src_node_id) for m in accepted],
                "seconds": time.monotonic() - self._sent_at,
                "update_bytes": [len(m.content[self.arrayrecord_key][UPDATE_KEY].data) for m in accepted],
                "reply_bytes": sizes, "samples": samples}
        arrays = None
        if len(updates) >= self.min_clients:
            mean, info["bounded"] = self.rule(updates, samples)
            new = self.optimizer.step(self.shared, mean)
            arrays = ArrayRecord({SHARED_KEY: Array(new)})
            self.shared = new
            log(INFO, "round %d: aggregated %d updates (%d rejected) in %.1f s", server_round, len(updates),
                len(rejected), info["seconds"])
        else:
            log(WARNING, "round %d: %d valid updates, fewer than min-clients %d: the shared adapter is unchanged",
                server_round, len(updates), self.min_clients)
        info["changed"] = arrays is not None
        info["metrics"] = mean_metrics([m.content.metric_records["metrics"] for m in accepted],
                                       cap_samples(samples, self.rule.sample_cap) if samples else [])
        self.rounds.append(info)
        if self.on_round is not None and self.fraction_evaluate == 0.0:   # else once the round is evaluated
            self.on_round(info)
        return arrays, MetricRecord(info["metrics"]) if info["metrics"] else None

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        """Evaluate replies get the train replies' scrutiny: a count or loss out of bounds is refused and
        logged; counts are capped at the round's median x sample-cap (edgelora.fleet.evaluation)."""
        good, rejected = self._check_evaluations(server_round, list(replies))
        metrics = robust_metrics(good, self.rule.sample_cap) if good else {}
        if self.rounds and self.rounds[-1]["round"] == server_round:
            self.rounds[-1]["evaluate"] = metrics
            self.rounds[-1]["evaluate_rejected"] = rejected
            if self.on_round is not None and self.fraction_evaluate > 0.0:
                self.on_round(self.rounds[-1])
        return MetricRecord(metrics) if metrics else None

    def _check_evaluations(self, server_round: int, replies: list[Message]) -> tuple[list, list[dict]]:
        """(metrics records to combine, [{node, reason}] of the replies refused, each logged)."""
        checked, refused = [], []
        for m in replies:
            reason = f"error reply: {m.error.reason}" if m.has_error() else check_metrics(
                m.content.metric_records.get("metrics"), m.content.config_records.get(SPEC_KEY), server_round,
                self.max_samples)
            (checked if reason is None else refused).append((m, reason))
        bounds = out_of_bounds([m.content.metric_records["metrics"] for m, _ in checked]) if checked else []
        refused += [(m, why) for (m, _), why in zip(checked, bounds) if why is not None]
        for m, reason in refused:
            log(WARNING, "round %d: rejected the evaluation of node %d: %s", server_round, m.metadata.src_node_id, reason)
        good = [m.content.metric_records["metrics"] for (m, _), why in zip(checked, bounds) if why is None]
        return good, [{"node": int(m.metadata.src_node_id), "reason": reason} for m, reason in refused]
