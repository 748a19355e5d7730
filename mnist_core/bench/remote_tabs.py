"""Tabs that watch a run from other computers, imitated with Streamlit's own messages.

In a class, each student's browser runs on the student's computer; on the bench, Chromium's
tabs share the server's two cores and take about one of them from training. These sessions send
the server what a watching tab sends over its WebSocket: the page's first run, then every
fragment's timed reruns at the pace the page asks for (its `auto_rerun` messages), following a
full rerun to the new pace as the browser does. The server does all of its work for each poll
(script run, figures, messages sent); only the drawing, which happens elsewhere in a class, is
left out. Used by the classroom bench only.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import Counter


async def watch(url: str, page: str, query: str, stop: asyncio.Event, counts: Counter) -> None:
    """One tab on `page` with `query` until `stop`: connect, run the page, poll as it asks."""
    import websockets
    from streamlit.proto.BackMsg_pb2 import BackMsg
    from streamlit.proto.ForwardMsg_pb2 import ForwardMsg

    stream = url.replace("http://", "ws://", 1) + "/_stcore/stream"
    async with websockets.connect(stream, subprotocols=["streamlit"], max_size=2**28) as socket:
        page_hash = ""  # the page's script hash, learnt from the server's navigation message

        def rerun(fragment_id: str = "") -> bytes:
            message = BackMsg()
            state = message.rerun_script
            state.query_string, state.page_name = query, page
            state.page_script_hash = page_hash
            if fragment_id:
                state.fragment_id, state.is_auto_rerun = fragment_id, True
            return message.SerializeToString()

        async def every(interval: float, fragment_id: str) -> None:
            while True:
                await asyncio.sleep(interval)
                await socket.send(rerun(fragment_id))
                counts["polls sent"] += 1

        timers: dict[str, asyncio.Task] = {}
        await socket.send(rerun())
        receiving = asyncio.ensure_future(socket.recv())
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while True:
                done, _ = await asyncio.wait({receiving, stopping}, return_when=asyncio.FIRST_COMPLETED)
                if stopping in done:
                    return
                message = ForwardMsg()
                message.ParseFromString(receiving.result())
                receiving = asyncio.ensure_future(socket.recv())
                kind = message.WhichOneof("type")
                if kind == "navigation":  # a full run begins: its fragments will say their pace anew
                    page_hash = message.navigation.page_script_hash
                    for timer in timers.values():
                        timer.cancel()
                    timers.clear()
                elif kind == "auto_rerun":
                    fragment_id = message.auto_rerun.fragment_id
                    if fragment_id in timers:
                        timers[fragment_id].cancel()
                    timers[fragment_id] = asyncio.ensure_future(every(message.auto_rerun.interval, fragment_id))
                elif kind == "stop_auto_rerun":
                    for fragment_id in message.stop_auto_rerun.fragment_ids:
                        if fragment_id in timers:
                            timers.pop(fragment_id).cancel()
                elif kind == "delta" and message.delta.WhichOneof("type") == "new_element":
                    counts[f"{message.delta.new_element.WhichOneof('type')} elements"] += 1
                elif kind == "script_finished":
                    counts["polls answered" if message.script_finished == ForwardMsg.FINISHED_FRAGMENT_RUN_SUCCESSFULLY
                           else "page runs"] += 1
        finally:
            for task in [*timers.values(), receiving, stopping]:
                task.cancel()


class RemoteTabs:
    """`count` watching tabs in a background thread, for as long as the `with` block lasts.
    `counts` says how many polls the server answered, so a report can show the pace held."""

    def __init__(self, url: str, page: str, query: str, count: int):
        self.url, self.page, self.query, self.count = url, page, query, count
        self.counts: Counter = Counter()
        self.errors: list[BaseException] = []
        self._loop = asyncio.new_event_loop()
        self._stop = asyncio.Event()
        self._thread = threading.Thread(target=self._run, name="remote-tabs", daemon=True)

    def _run(self) -> None:
        async def all_tabs() -> None:
            results = await asyncio.gather(
                *(watch(self.url, self.page, self.query, self._stop, self.counts) for _ in range(self.count)),
                return_exceptions=True,
            )
            self.errors.extend(r for r in results if isinstance(r, BaseException))

        self._loop.run_until_complete(all_tabs())

    def wait_polling(self, timeout_s: float = 60) -> None:
        """Until every tab's first page run is over and polls are being answered."""
        deadline = time.monotonic() + timeout_s
        while self.counts["page runs"] < self.count or not self.counts["polls answered"]:
            if self.errors or not self._thread.is_alive():
                raise RuntimeError(f"the remote tabs stopped: {self.errors[:1]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"the remote tabs never polled: {dict(self.counts)}")
            time.sleep(0.1)

    def __enter__(self) -> RemoteTabs:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(timeout=30)
