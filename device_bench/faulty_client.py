"""A fleet ClientApp with faulty and malicious devices, for the fleet tests and device_bench: `device_bench.faulty_client:app`.

It is edgelora's ClientApp (edgelora.fleet.client_app), except for a device whose node config has `fault`:

malformed updates (the server's checks must reject them):
    nan          non-finite values
    shape        one value short
    fingerprint  another backbone's fingerprint
attacks (well-formed; the server's robust aggregation must bound them):
    liar         claims 10^6 samples and adds 999 to one class's output bias in its update (norm ~999)
    bias         the same bias update with its honest sample count
    scale        its honest update x50
    replay       from its second round on, resends its first update, claiming the current round and base
    eval-lie     evaluates with 10^9 samples and loss -1e30 (to choose which round the server keeps)
    eval-nan     evaluates with a NaN loss
    eval-steer   evaluates with loss 0 from round `steer-round` (node config, default 5) on and 1e30 before:
                 a well-formed bid to make the server keep a later round
Devices without `fault` behave as edgelora's.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord
from flwr.clientapp import ClientApp

from edgelora.files.bundle import load_manifest
from edgelora.fleet import client_app
from edgelora.fleet.update import SPEC_KEY, UPDATE_KEY

MALFORMED = ("nan", "shape", "fingerprint")
ATTACKS = ("liar", "bias", "scale", "replay")
EVAL_ATTACKS = ("eval-lie", "eval-nan", "eval-steer")
FAULTS = MALFORMED + ATTACKS + EVAL_ATTACKS
APP = "device_bench.faulty_client:app"      # the `clientapp` component of a Flower app folder
BIAS_NORM = 999.0                           # just under the fleet's absolute limit (max-norm 1000)
TARGET_CLASS = 0                            # the class whose output bias the bias attacks push up

app = ClientApp()


def _fault(context: Context) -> str | None:
    fault = context.node_config.get("fault")
    if fault is not None and fault not in FAULTS:
        raise ValueError(f"node config: `fault` should be one of {FAULTS}, found {fault!r}")
    return fault


def bias_update(honest: np.ndarray, num_outputs: int) -> np.ndarray:
    """The honest update plus BIAS_NORM on one class's output bias (the last num_outputs values of the flat
    layout): it pushes every prediction towards that class and differs every round, as an attacker's would."""
    update = honest.copy()
    update[update.size - num_outputs + TARGET_CLASS] += BIAS_NORM
    return update


def _replayed(update: np.ndarray, workdir: str) -> np.ndarray:
    """The first update this device sent (kept in its workdir), or this one if it is the first."""
    path = Path(workdir) / "first_update.npy"
    if path.is_file():
        return np.load(path, allow_pickle=False)
    np.save(path, update)
    return update


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = client_app.train(msg, context)
    fault = _fault(context)
    if fault is None or fault in EVAL_ATTACKS:
        return reply
    update = reply.content["arrays"][UPDATE_KEY].numpy().copy()
    if fault == "nan":
        update[:: max(1, update.size // 7)] = np.nan
    elif fault == "shape":
        update = update[:-1]
    elif fault == "fingerprint":
        reply.content[SPEC_KEY]["fingerprint"] = "sha256:" + "0" * 64
    elif fault in ("liar", "bias"):
        update = bias_update(update, load_manifest(context.node_config["bundle"]).num_outputs)
        if fault == "liar":
            reply.content["metrics"]["num-examples"] = 1_000_000
    elif fault == "scale":
        update = (update.astype(np.float32) * 50).astype(update.dtype)
    elif fault == "replay":
        update = _replayed(update, context.node_config["workdir"])
    reply.content["arrays"] = ArrayRecord({UPDATE_KEY: Array(update)})
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    reply = client_app.evaluate(msg, context)
    fault = _fault(context)
    if fault == "eval-lie":
        metrics = dict(reply.content["metrics"])
        reply.content["metrics"] = MetricRecord({**metrics, "num-examples": 10**9, "loss": -1e30})
    elif fault == "eval-nan":
        reply.content["metrics"] = MetricRecord({**dict(reply.content["metrics"]), "loss": float("nan")})
    elif fault == "eval-steer":
        late = int(msg.content["config"]["server-round"]) >= int(context.node_config.get("steer-round", 5))
        reply.content["metrics"] = MetricRecord({**dict(reply.content["metrics"]), "loss": 0.0 if late else 1e30})
    return reply
