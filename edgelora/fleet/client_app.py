"""The fleet's Flower ClientApp: `edgelora.fleet.client_app:app`.

Each SuperNode is one device; its node config (`flower-supernode --node-config`, or `edgelora fleet node`)
names its files:

    bundle    the backbone bundle folder (must be the fleet's: the server checks the fingerprint)
    data      its labelled samples (.npz with `x-key`/`y-key`, .npy is refused: labels are needed, or .csv)
    workdir   its adapter store and Skip-Cache (survive restarts: a restarted device serves, and its cache
              reuses, what it had)
    x-key, y-key   optional array names in the .npz (default x, y)
    max-shared-norm   a shared adapter with a larger L2 norm is refused, as is a non-finite one or one for
              another backbone: never stored, the device keeps its last good one (default 1000)

Training: the device keeps the shared adapter it receives (store name `fleet`), fine-tunes from it and
replies with the update. If it loses the connection mid-round, the SuperNode reconnects (bounded by
`--max-retries`/`--max-wait-time`); the lost reply is not retried and the server's round completes
without it; a reply that arrives in a later round is rejected as stale.
"""
from __future__ import annotations

from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from .device import MAX_SHARED_NORM, FleetDevice
from .settings import round_from_config
from .update import SHARED_KEY, SPEC_KEY, UPDATE_KEY, AdapterSpec, flat_sha256

app = ClientApp()


def open_device(node_config) -> FleetDevice:
    """The device described by a SuperNode's node config (ValueError naming what is missing)."""
    missing = [k for k in ("bundle", "data", "workdir") if not node_config.get(k)]
    if missing:
        raise ValueError(f"node config: expected keys bundle, data and workdir; missing {missing} "
                         f"(flower-supernode --node-config 'bundle=\"...\" data=\"...\" workdir=\"...\"')")
    return FleetDevice.from_files(str(node_config["bundle"]), str(node_config["data"]), str(node_config["workdir"]),
                                  str(node_config.get("x-key", "x")), str(node_config.get("y-key", "y")),
                                  max_shared_norm=float(node_config.get("max-shared-norm", MAX_SHARED_NORM)))


def _received(device: FleetDevice, msg: Message):
    spec = AdapterSpec.from_record(msg.content[SPEC_KEY])
    server_round = int(msg.content["config"]["server-round"])
    shared = device.receive(spec, msg.content["arrays"][SHARED_KEY].numpy(), server_round)
    return shared, server_round, round_from_config(msg.content["config"])


@app.train()
def train(msg: Message, context: Context) -> Message:
    device = open_device(context.node_config)
    shared, server_round, settings = _received(device, msg)
    update, samples, metrics = device.train(shared, settings, server_round)
    fingerprint = device.backbone.manifest.identity
    content = RecordDict({"arrays": ArrayRecord({UPDATE_KEY: Array(update)}),
                          "metrics": MetricRecord({"num-examples": samples, **metrics}),
                          SPEC_KEY: ConfigRecord({"fingerprint": fingerprint, "round": server_round,
                                                  "base": flat_sha256(shared.flat)})})
    return Message(content=content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    device = open_device(context.node_config)
    shared, server_round, settings = _received(device, msg)
    n, metrics = device.evaluate(shared, settings)
    meta = ConfigRecord({"fingerprint": device.backbone.manifest.identity, "round": server_round,
                         "base": flat_sha256(shared.flat)})
    return Message(content=RecordDict({"metrics": MetricRecord({"num-examples": n, **metrics}), SPEC_KEY: meta}),
                   reply_to=msg)
