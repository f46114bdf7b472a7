#!/usr/bin/env python3
"""Drives a running nimbus through its QMP socket with QEMU's own client library (qemu.qmp).

usage: client.py SOCKET NIMBUS_PID SCENARIO
Prints one line per step; exits non-zero (with the reason) when Nimbus answers wrongly.
"""
import asyncio
import os
import sys

from qemu.qmp import QMPClient, ExecuteError

from qmpcheck import check, finish, next_event


async def lifecycle(qmp, pid):
    status = await qmp.execute("query-status")
    check(status["status"] == "running" and status["running"], "query-status says running")
    await qmp.execute("stop")
    await next_event(qmp, "STOP")
    status = await qmp.execute("query-status")
    check(status["status"] == "paused" and not status["running"], "stop pauses the VM")
    await qmp.execute("stop")
    check((await qmp.execute("query-status"))["status"] == "paused", "stop is idempotent")
    await qmp.execute("cont")
    await next_event(qmp, "RESUME")
    check((await qmp.execute("query-status"))["running"], "cont resumes the VM")
    cpus = await qmp.execute("query-cpus-fast")
    tasks = {int(t) for t in os.listdir(f"/proc/{pid}/task")}
    check(len(cpus) == 2 and [c["cpu-index"] for c in cpus] == [0, 1], "query-cpus-fast lists 2 vCPUs")
    check(all(c["thread-id"] in tasks and c["thread-id"] != pid for c in cpus),
          "vCPU thread ids are threads of the nimbus process")
    names = {}
    for c in cpus:
        with open(f"/proc/{pid}/task/{c['thread-id']}/comm") as f:
            names[c["cpu-index"]] = f.read().strip()
    check(names == {0: "vcpu0", 1: "vcpu1"}, f"the thread ids are the vCPU threads ({names})")
    legacy = await qmp.execute("query-cpus")
    check([c["thread_id"] for c in legacy] == [c["thread-id"] for c in cpus], "query-cpus agrees")
    hot = await qmp.execute("query-hotpluggable-cpus")
    check(len(hot) == 2, "query-hotpluggable-cpus has one entry per vCPU")
    version = await qmp.execute("query-version")
    check(version["qemu"]["major"] >= 5, "query-version has a qemu version")
    commands = {c["name"] for c in await qmp.execute("query-commands")}
    check({"stop", "cont", "quit", "query-cpus-fast"} <= commands, "query-commands lists them")
    check((await qmp.execute("query-kvm"))["enabled"], "query-kvm says enabled")
    check((await qmp.execute("query-target"))["arch"] == "x86_64", "query-target is x86_64")
    try:
        await qmp.execute("query-balloon")
        check(False, "query-balloon without a balloon fails")
    except ExecuteError as err:
        check(err.error_class == "DeviceNotActive", "query-balloon gives DeviceNotActive")
    try:
        await qmp.execute("no-such-command")
        check(False, "unknown command fails")
    except ExecuteError as err:
        check(err.error_class == "CommandNotFound", "unknown command gives CommandNotFound")
    await qmp.execute("quit")
    event = await next_event(qmp, "SHUTDOWN")
    check(event["data"] == {"guest": False, "reason": "host-qmp-quit"}, "quit sends SHUTDOWN host-qmp-quit")


async def system_reset(qmp, pid):
    await qmp.execute("system_reset")
    event = await next_event(qmp, "SHUTDOWN")
    check(event["data"]["reason"] == "host-qmp-system-reset", "system_reset shuts the microvm down")


async def getfd(qmp, pid):
    r, w = os.pipe()
    qmp.send_fd_scm(r)
    await qmp.execute("getfd", {"fdname": "pipe0"})
    fds = os.listdir(f"/proc/{pid}/fd")
    check(any(os.readlink(f"/proc/{pid}/fd/{fd}").startswith("pipe:") for fd in fds),
          "getfd keeps the descriptor in nimbus")
    await qmp.execute("closefd", {"fdname": "pipe0"})
    try:
        await qmp.execute("closefd", {"fdname": "pipe0"})
        check(False, "closing it twice fails")
    except ExecuteError as err:
        check(err.error_class == "GenericError", "closing an unknown fd name is an error")
    try:
        await qmp.execute("getfd", {"fdname": "nofd"})
        check(False, "getfd without a descriptor fails")
    except ExecuteError:
        check(True, "getfd without a descriptor is an error")
    await qmp.execute("quit")


async def wait_for_shutdown(qmp, pid):
    """Waits for the SHUTDOWN event of a VM that something else ends."""
    print("ready", flush=True)
    event = await next_event(qmp, "SHUTDOWN", timeout=20)
    print(f"SHUTDOWN {event['data']['guest']} {event['data']['reason']}", flush=True)


async def main():
    path, pid, scenario = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    qmp = QMPClient("nimbus-test")
    await qmp.connect(path)
    await {"lifecycle": lifecycle, "system_reset": system_reset, "getfd": getfd,
           "wait_for_shutdown": wait_for_shutdown}[scenario](qmp, pid)
    await finish(qmp)


asyncio.run(main())
