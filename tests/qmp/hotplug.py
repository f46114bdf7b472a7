#!/usr/bin/env python3
"""Kata's block hot-plug sequence through QEMU's own client library (qemu.qmp).

usage: hotplug.py SOCKET IMAGE
Prints one line per step; exits non-zero (with the reason) when Nimbus answers wrongly.
"""
import asyncio
import sys

from qemu.qmp import QMPClient

from qmpcheck import check, fails, finish, next_event


async def kata(qmp, image):
    # What Kata's govmm sends for a StratoVirt-style block hot-plug.
    await qmp.execute("blockdev-add", {
        "node-name": "drive-a1b2", "driver": "raw", "read-only": False,
        "file": {"driver": "file", "filename": image, "aio": "native"},
        "cache": {"direct": False, "no-flush": False}})
    check(True, "blockdev-add")
    await qmp.execute("device_add", {"driver": "virtio-blk-mmio", "id": "virtio-drive-a1b2",
                                     "drive": "drive-a1b2", "addr": "0x1", "bus": "",
                                     "romfile": "", "share-rw": "off"})
    check(True, "device_add driver=virtio-blk-mmio addr=0x1")
    block = await qmp.execute("query-block")
    check(len(block) == 1 and block[0]["qdev"] == "virtio-drive-a1b2"
          and block[0]["inserted"]["image"]["virtual-size"] == 1 << 20,
          f"query-block shows the disk ({block})")
    await fails(qmp, "device_add", {"driver": "virtio-blk-mmio", "id": "other",
                                    "drive": "drive-a1b2", "addr": "0x2"},
                "GenericError", "already in use")
    await fails(qmp, "blockdev-del", {"node-name": "drive-a1b2"}, "GenericError", "is in use")
    await fails(qmp, "device_del", {"id": "no-such-device"}, "DeviceNotFound", "not found")
    await qmp.execute("device_del", {"id": "virtio-drive-a1b2"})
    event = await next_event(qmp, "DEVICE_DELETED")
    check(event["data"] == {"device": "virtio-drive-a1b2", "path": "virtio-drive-a1b2"},
          "device_del sends DEVICE_DELETED")
    check(await qmp.execute("query-block") == [], "query-block is empty again")
    await qmp.execute("blockdev-del", {"node-name": "drive-a1b2"})
    check(True, "blockdev-del")
    await qmp.execute("quit")


async def main():
    path, image = sys.argv[1], sys.argv[2]
    qmp = QMPClient("nimbus-hotplug-test")
    await qmp.connect(path)
    await kata(qmp, image)
    await finish(qmp)


asyncio.run(main())
