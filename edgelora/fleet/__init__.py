"""Fleets: federated Skip2-LoRA over Flower (from the edgelora clone: `pip install -e '.[fleet]'`).

Devices train skip adapters on their own Skip-Cache and send only the adapter update (a few kB); a
Flower ServerApp averages the updates into the fleet's shared adapter, saved as an ordinary edgelora
adapter. Modules:

    update      the wire format of an adapter and of an update, and the server's checks (numpy only)
    aggregate   FedAvg weighted by samples and server-side momentum over checked updates (numpy only)
    device      what one device does in a round: warm-start from the shared adapter, train, report
    personal    shared plus personal: a personal adapter on top of the shared one through the store's gate
    strategy    the Flower strategy: sampling with a bounded wait, rejection of malformed updates
    client_app  the Flower ClientApp (`edgelora.fleet.client_app:app`)
    server_app  the Flower ServerApp (`edgelora.fleet.server_app:app`)
    local_grid  an in-process Flower Grid: the same apps without SuperLink, for experiments and tests
    deploy      the Flower app folder, the environment, SuperLink and SuperNode command lines
    processes   starting, supervising and stopping them: bounded waits, no process left behind

`import edgelora` never imports this package; `update`, `aggregate`, `device` and `personal` do not
import flwr either.
"""
