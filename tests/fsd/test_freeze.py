"""The write gate of fsd/freeze.py: closing it waits for the changes in
flight and holds new ones until it opens; reads never pass it."""

import trio
import trio.testing

from fsd.freeze import WriteGate


def test_closing_waits_for_changes_in_flight_and_holds_new_ones():
    log = []

    async def main():
        gate = WriteGate()
        release_a = trio.Event()

        async def change(name, until=None):
            async with gate:
                log.append(f"{name} in")
                if until is not None:
                    await until.wait()
                log.append(f"{name} out")

        async def freeze():
            await gate.close()
            log.append("frozen")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(change, "a", release_a)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(freeze)
            await trio.testing.wait_all_tasks_blocked()
            assert log == ["a in"] and not gate.is_open       # a is still in flight
            nursery.start_soon(change, "b")
            await trio.testing.wait_all_tasks_blocked()
            assert log == ["a in"]                             # b waits at the gate
            release_a.set()
            await trio.testing.wait_all_tasks_blocked()
            assert log == ["a in", "a out", "frozen"]          # b still waits
            gate.open()
        assert log == ["a in", "a out", "frozen", "b in", "b out"]

    trio.run(main)


def test_an_idle_gate_closes_at_once_and_opens_twice_harmlessly():
    async def main():
        gate = WriteGate()
        await gate.close()
        await gate.close()
        assert not gate.is_open
        gate.open()
        gate.open()
        async with gate:
            pass
        assert gate.is_open

    trio.run(main)
