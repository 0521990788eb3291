"""A fleet ClientApp with faulty devices, for the fleet tests and device_bench.fleet: `device_bench.faulty_client:app`.

It is edgelora's ClientApp (edgelora.fleet.client_app), except that a device whose node config has
`fault` sends a malformed update the server must reject: "nan" (non-finite values), "shape" (one value
short) or "fingerprint" (another backbone's fingerprint). Devices without `fault` behave as edgelora's.
"""
from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message
from flwr.clientapp import ClientApp

from edgelora.fleet import client_app
from edgelora.fleet.update import SPEC_KEY, UPDATE_KEY

FAULTS = ("nan", "shape", "fingerprint")
APP = "device_bench.faulty_client:app"      # the `clientapp` component of a Flower app folder

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    reply = client_app.train(msg, context)
    fault = context.node_config.get("fault")
    if fault is None:
        return reply
    if fault not in FAULTS:
        raise ValueError(f"node config: `fault` should be one of {FAULTS}, found {fault!r}")
    update = reply.content["arrays"][UPDATE_KEY].numpy().copy()
    if fault == "nan":
        update[:: max(1, update.size // 7)] = np.nan
    elif fault == "shape":
        update = update[:-1]
    else:
        reply.content[SPEC_KEY]["fingerprint"] = "sha256:" + "0" * 64
    reply.content["arrays"] = ArrayRecord({UPDATE_KEY: Array(update)})
    return reply


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    return client_app.evaluate(msg, context)
