"""Fleets: federated Skip2-LoRA over Flower (from the edgelora clone: `pip install -e '.[fleet]'`).

Devices train skip adapters on their own Skip-Cache and send only the adapter update (a few kB); a
Flower ServerApp averages the updates into the fleet's shared adapter, saved as an ordinary edgelora
adapter. Modules:

    update      the wire format of an adapter and of an update, the server's and the devices' checks (numpy only)
    robust      bounded weights and norms, and the robust rules: mean, median, trimmed mean (numpy only)
    aggregate   the server optimiser: the round's mean update applied, with momentum if asked (numpy only)
    evaluation  the devices' evaluation replies: checked, and combined so that no device chooses the round
    device      what one device does in a round: warm-start from the shared adapter, train, report
    personal    shared plus personal: a personal adapter on top of the shared one through the store's gate
    strategy    the Flower strategy: sampling with a bounded wait, rejection of malformed updates
    client_app  the Flower ClientApp (`edgelora.fleet.client_app:app`)
    server_app  the Flower ServerApp (`edgelora.fleet.server_app:app`)
    local_grid  an in-process Flower Grid: the same apps without SuperLink, for experiments and tests
    deploy      the Flower app folder, the environment, SuperLink and SuperNode command lines
    processes   starting, supervising and stopping them: bounded waits, no process left behind
    exposure    secure by default off loopback: which credentials each command needs for its address
    certs       the fleet's credentials: CA, SuperLink certificate, SuperNode keys, operator token
    guard       the SuperLink with its Control API served to the operator's token only

`import edgelora` never imports this package; `update`, `robust`, `aggregate`, `evaluation`, `device`,
`personal` and `exposure` do not import flwr either. The trust model: docs/security.md.
"""
