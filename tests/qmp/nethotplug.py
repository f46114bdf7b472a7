#!/usr/bin/env python3
"""Network hot-plug with a tap descriptor passed by getfd, through QEMU's own client library
(qemu.qmp), as a container runtime does it.

usage: nethotplug.py SOCKET TAPNAME
Opens the (existing) tap TAPNAME, passes its descriptor with SCM_RIGHTS + getfd, then
netdev_add fds=<name> and device_add driver=virtio-net-mmio; prints "plugged". Waits for a line
on stdin, then device_del (waiting for DEVICE_DELETED) and netdev_del; prints "unplugged".
Waits for another line, then quit. Prints one line per step; exits non-zero (with the reason)
when Nimbus answers wrongly.
"""
import asyncio
import fcntl
import os
import struct
import sys

from qemu.qmp import QMPClient

from qmpcheck import check, fails, finish, next_event

TUNSETIFF = 0x400454CA
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR = 0x0002, 0x1000, 0x4000
MAC = "52:54:00:12:34:56"


def open_tap(name):
    fd = os.open("/dev/net/tun", os.O_RDWR)
    ifr = struct.pack("16sH22x", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
    fcntl.ioctl(fd, TUNSETIFF, ifr)
    return fd


async def wait_for_stdin():
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    check(line != "", "the test said go on")


async def plug(qmp, tap):
    fd = open_tap(tap)
    qmp.send_fd_scm(fd)
    await qmp.execute("getfd", {"fdname": "fdtap0"})
    os.close(fd)  # Nimbus holds the only copy now
    check(True, "getfd fdtap0")
    await fails(qmp, "netdev_add", {"id": "hostnet0", "type": "tap", "fds": "nosuchfd"},
                "GenericError", "File descriptor named 'nosuchfd' has not been found")
    # What Kata's govmm sends for a StratoVirt-style network hot-plug (tap passed as an fd).
    await qmp.execute("netdev_add", {"type": "tap", "id": "hostnet0", "fds": "fdtap0"})
    check(True, "netdev_add fds=fdtap0")
    await fails(qmp, "closefd", {"fdname": "fdtap0"}, "GenericError", "not found")
    await fails(qmp, "netdev_add", {"type": "tap", "id": "hostnet0", "ifname": tap},
                "GenericError", "Duplicate ID 'hostnet0' for netdev")
    await qmp.execute("device_add", {"driver": "virtio-net-mmio", "id": "virtio-net0",
                                     "netdev": "hostnet0", "mac": MAC, "addr": "0x0",
                                     "romfile": "", "bus": ""})
    check(True, "device_add driver=virtio-net-mmio addr=0x0")
    await fails(qmp, "device_add", {"driver": "virtio-net-mmio", "id": "virtio-net1",
                                    "netdev": "hostnet0", "addr": "0x1"},
                "GenericError", "it's in use")
    await fails(qmp, "netdev_del", {"id": "hostnet0"}, "GenericError", "in use")
    print("plugged", flush=True)


async def unplug(qmp):
    await qmp.execute("device_del", {"id": "virtio-net0"})
    event = await next_event(qmp, "DEVICE_DELETED", timeout=10)
    check(event["data"] == {"device": "virtio-net0", "path": "virtio-net0"},
          "device_del sends DEVICE_DELETED")
    await qmp.execute("netdev_del", {"id": "hostnet0"})
    check(True, "netdev_del")
    await fails(qmp, "netdev_del", {"id": "hostnet0"}, "DeviceNotFound", "not found")
    print("unplugged", flush=True)


async def main():
    path, tap = sys.argv[1], sys.argv[2]
    qmp = QMPClient("nimbus-nethotplug-test")
    await qmp.connect(path)
    await plug(qmp, tap)
    await wait_for_stdin()
    await unplug(qmp)
    await wait_for_stdin()
    await qmp.execute("quit")
    await finish(qmp)


asyncio.run(main())
