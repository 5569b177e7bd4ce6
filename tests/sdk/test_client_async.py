"""`AsyncClient` against the scripted server: results, errors, cancellation, deadlines."""

from __future__ import annotations

import asyncio

import grpc
import pytest

from sdk.scripted_server import (
    CODE_CASES,
    RID,
    Hang,
    RunningServer,
    Status,
    free_port,
    m_chunk,
    m_final,
    m_started,
)
from slos_serve.client import AsyncClient, Chunk, Completion, Decision, HealthStatus, Started
from slos_serve.errors import (
    Cancelled,
    DeadlineExceeded,
    NotFound,
    ProtocolError,
    SloServeError,
    Unavailable,
)

pytestmark = pytest.mark.timeout(30)


# ----------------------------------------------------------------------- asyncio --


def test_async_client_end_to_end(srv: RunningServer) -> None:
    async def main() -> None:
        async with AsyncClient(srv.target, timeout=10) as c:
            comp = await c.generate("hi", max_tokens=3)
            assert comp.text == "Hello!" and comp.decision is Decision.ADMITTED
            events = [ev async for ev in c.stream("hi", max_tokens=3)]
            assert [type(e) for e in events] == [Started, Chunk, Chunk, Completion]
            assert (await c.model_info()).model == "tiny-llama"
            assert (await c.cluster_info()).workers[0].role == "prefill"
            assert await c.abort(RID) is True
            assert await c.health() is HealthStatus.SERVING
            with pytest.raises(NotFound):
                await c.health("nope")

    asyncio.run(main())


@pytest.mark.parametrize(("code", "exc_type"), CODE_CASES)
def test_async_error_mapping(
    srv: RunningServer, code: grpc.StatusCode, exc_type: type[SloServeError]
) -> None:
    srv.servicer.script = [m_started(), Status(code, "why: field x")]
    srv.servicer.unary_status = Status(code, "unary why")

    async def main() -> None:
        async with AsyncClient(srv.target, timeout=10) as c:
            with pytest.raises(SloServeError) as info:
                await c.generate("hi", max_tokens=1)
            assert type(info.value) is exc_type
            assert (info.value.code, info.value.details) == (code, "why: field x")
            with pytest.raises(exc_type, match="unary why"):
                await c.model_info()

    asyncio.run(main())


def test_async_break_cancels_and_cancel_raises(srv: RunningServer) -> None:
    srv.servicer.script = [m_started(), m_chunk([1], "a"), Hang()]

    async def main() -> None:
        async with AsyncClient(srv.target, timeout=10) as c:
            stream = c.stream("hi", max_tokens=100)
            async for ev in stream:
                if isinstance(ev, Chunk):
                    break
            assert await asyncio.to_thread(srv.servicer.client_gone.wait, 3)
            assert stream.done

            srv.servicer.client_gone.clear()
            stream = c.stream("hi", max_tokens=100)
            it = aiter(stream)
            assert isinstance(await anext(it), Started)
            assert stream.cancel() is True
            with pytest.raises(Cancelled):
                await anext(it)
            assert await asyncio.to_thread(srv.servicer.client_gone.wait, 3)

            srv.servicer.client_gone.clear()
            async with c.stream("hi", max_tokens=100) as stream:
                await anext(aiter(stream))
            assert await asyncio.to_thread(srv.servicer.client_gone.wait, 3)

    asyncio.run(main())


def test_async_task_cancellation_cancels_the_rpc(srv: RunningServer) -> None:
    srv.servicer.script = [m_started(), Hang()]

    async def main() -> None:
        async with AsyncClient(srv.target) as c:
            task = asyncio.create_task(c.generate("hi", max_tokens=100))
            await asyncio.sleep(0.2)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert await asyncio.to_thread(srv.servicer.client_gone.wait, 3)

    asyncio.run(main())


def test_async_deadline_and_protocol_error(srv: RunningServer) -> None:
    async def main() -> None:
        async with AsyncClient(srv.target, timeout=0.3) as c:
            srv.servicer.script = [m_started(), Hang()]
            with pytest.raises(DeadlineExceeded):
                await c.generate("hi", max_tokens=1)
            srv.servicer.script = [m_started(), m_final(), m_chunk([1], "a")]
            with pytest.raises(ProtocolError, match="after Final"):
                await c.generate("hi", max_tokens=1)
        async with AsyncClient(f"127.0.0.1:{free_port()}", timeout=5) as c:
            with pytest.raises(Unavailable):
                await c.generate("hi", max_tokens=1)

    asyncio.run(main())
