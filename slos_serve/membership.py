"""The client side of the coordinator's membership RPCs (AddWorker, RemoveWorker): what
`slos-serve scale`, `up --ray`'s worker actors and the tests call. Bearer-token auth and
client TLS as every other call of the client-facing service."""

from __future__ import annotations

import grpc

from proto import slos_serve_pb2 as pb
from proto import slos_serve_pb2_grpc as pb_grpc
from slos_serve.grpc_util import open_channel

Metadata = tuple[tuple[str, str], ...]


def auth(api_key: str) -> Metadata:
    return (("authorization", f"Bearer {api_key}"),) if api_key else ()


async def add_worker(target: str, address: str, role: str, *,
                     credentials: grpc.ChannelCredentials | None = None,
                     metadata: Metadata = (), timeout_s: float = 10.0
                     ) -> pb.MembershipResponse:
    """Registers a running worker with the coordinator at `target` (a no-op if a member)."""
    async with open_channel(target, credentials) as channel:
        return await pb_grpc.SloServeStub(channel).AddWorker(
            pb.AddWorkerRequest(address=address, role=role), timeout=timeout_s,
            metadata=metadata)


async def remove_worker(target: str, address: str, *, drain_timeout_s: float = 0.0,
                        credentials: grpc.ChannelCredentials | None = None,
                        metadata: Metadata = ()) -> pb.MembershipResponse:
    """Drains `address` (no new requests; those on it finish, or the timeout passes and
    they fail over) and removes it from the coordinator's membership."""
    async with open_channel(target, credentials) as channel:
        return await pb_grpc.SloServeStub(channel).RemoveWorker(
            pb.RemoveWorkerRequest(address=address, drain_timeout_s=drain_timeout_s),
            timeout=(drain_timeout_s or 60.0) + 15.0, metadata=metadata)


async def members(target: str, *, credentials: grpc.ChannelCredentials | None = None,
                  metadata: Metadata = ()) -> list[pb.WorkerStatus]:
    async with open_channel(target, credentials) as channel:
        info = await pb_grpc.SloServeStub(channel).ClusterInfo(
            pb.ClusterInfoRequest(), timeout=10.0, metadata=metadata)
    return list(info.workers)
