"""An in-process Flower Grid: the fleet's ServerApp and ClientApp without SuperLink or SuperNodes.

The strategy sends its messages to this grid, which hands each to the ClientApp with that node's Context
and returns the reply (an exception becomes an error reply, as a SuperNode would send). The same app code
as a deployment, for experiments with many devices on one machine and for tests. Flower's own
simulation runtime would do the same with ray (a large extra dependency), so it is not used here.
"""
from __future__ import annotations

from collections.abc import Iterable
from uuid import uuid4

from flwr.app import Context, Error, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID, ErrorCode
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.serverapp import Grid


class LocalGrid(Grid):
    """Nodes FIRST_NODE.., each a ClientApp call with its own node config; replies in node order."""

    FIRST_NODE = 101

    def __init__(self, client_app: ClientApp, node_configs: list[dict], run_config: dict | None = None,
                 offline: Iterable[int] = ()):
        self.client_app = client_app
        TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, SUPERLINK_NODE_ID  # what a
        # SuperLink sets in the ServerApp's process; messages are stamped with it
        self.contexts = {self.FIRST_NODE + i: Context(run_id=1, node_id=self.FIRST_NODE + i, node_config=dict(c), state=RecordDict(),
                                        run_config=dict(run_config or {})) for i, c in enumerate(node_configs)}
        self.offline = set(offline)   # node IDs that get messages but never answer (a lost device)
        self._replies: dict[str, Message] = {}

    def set_run(self, run: Run) -> None:
        self._run = run

    @property
    def run(self) -> Run:
        return Run.create_empty(run_id=1)

    def create_message(self, content: RecordDict, message_type: str, dst_node_id: int, group_id: str,
                       ttl: float | None = None) -> Message:
        return Message(content, dst_node_id, message_type, ttl=ttl, group_id=group_id)

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid4())
            ids.append(msg.metadata.message_id)
            node = msg.metadata.dst_node_id
            if node in self.offline:
                continue
            try:
                self._replies[msg.metadata.message_id] = self.client_app(msg, self.contexts[node])
            except Exception as e:  # noqa: BLE001 - what a SuperNode reports when its ClientApp raises
                error = Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=f"{type(e).__name__}: {e}")
                self._replies[msg.metadata.message_id] = Message(error, reply_to=msg)
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        return [self._replies.pop(i) for i in message_ids if i in self._replies]

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        return self.pull_messages(self.push_messages(messages))
