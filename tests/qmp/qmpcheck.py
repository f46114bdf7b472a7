"""Checks shared by the qemu.qmp test clients in this folder: each step prints `ok: ...`, and
the first wrong answer prints `FAIL: ...` and exits 1."""
import asyncio
import sys

from qemu.qmp import ExecuteError


def check(cond, what):
    if not cond:
        print(f"FAIL: {what}", flush=True)
        sys.exit(1)
    print(f"ok: {what}", flush=True)


async def next_event(qmp, name, timeout=5):
    """The next event called `name`, skipping others; fails after `timeout` seconds."""
    while True:
        event = await asyncio.wait_for(qmp.events.get(), timeout)
        if event["event"] == name:
            return event


async def fails(qmp, command, arguments, error_class, desc_part):
    """Checks that `command` fails with `error_class` and a description holding `desc_part`."""
    try:
        await qmp.execute(command, arguments)
    except ExecuteError as err:
        check(err.error_class == error_class and desc_part in str(err),
              f"{command} {arguments} fails with {error_class} ({err})")
        return
    check(False, f"{command} {arguments} fails")


async def finish(qmp):
    """Disconnects and prints `done`: the last line of every client."""
    try:
        await qmp.disconnect()
    except EOFError:
        pass  # the VM ended and closed the socket, as QEMU does after quit
    print("done", flush=True)
