"""The stream wake-ups (backend/app/live.py): a change is never lost between a stream's read and its wait."""
import asyncio

from backend.app.live import Streams


def test_a_change_between_the_read_and_the_wait_wakes_the_stream_at_once():
    async def scenario():
        s = Streams()
        s.bind(asyncio.get_running_loop())
        seen = s.version(7)  # the stream notes the count, then reads the database (old state) ...
        s.changed(7)  # ... while a cancel commits and wakes the job's streams: none is waiting yet
        await asyncio.sleep(0)  # one turn of the loop: the wake-up call_soon_threadsafe scheduled runs
        t0 = asyncio.get_running_loop().time()
        woke = await s.wait(7, timeout=30, seen=seen)
        return woke, asyncio.get_running_loop().time() - t0, await s.wait(8, timeout=0.01, seen=s.version(8))

    woke, waited, other = asyncio.run(scenario())
    assert woke and waited < 1.0  # before the fix: asleep until the keep-alive (15 s by default)
    assert other is False  # another job's change wakes nothing
