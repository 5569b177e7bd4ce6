"""A serving process freezes its start-up heap once it serves (`serve_until_signal`): a
full collection then walks only what serving allocated, not the ~380k objects of torch,
transformers and the engine that live as long as the process (a 190 ms stop of the event
loop each time, seen as a request's handler starting that much late)."""

from __future__ import annotations

import asyncio
import gc

from slos_serve.grpc_util import bind, create_server, serve_until_signal


def test_serving_freezes_what_start_up_built() -> None:
    built = [[k] for k in range(5000)]  # container objects: tracked by the collector

    async def serve_briefly() -> None:
        server, health = create_server([])
        bind(server, "127.0.0.1", 0)
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().call_later(0.2, stop.set)
        await serve_until_signal(server, health, stop=stop, grace_s=0.1)

    gc.unfreeze()
    try:
        asyncio.run(serve_briefly())
        assert gc.get_freeze_count() >= len(built)
        reachable = {id(o) for o in gc.get_objects()}  # every generation, frozen excluded
        assert not any(id(o) in reachable for o in built)
        later = [[0]]
        assert id(later[0]) in {id(o) for o in gc.get_objects()}  # serving's own: collected
    finally:
        gc.unfreeze()
