/*
 * The test guest's virtio-console driver, for `nimbus.test=conbench`: console output bytes per
 * second over a virtio-console port (port 0, no MULTIPORT, as Linux's hvc0 uses it) or over
 * the 16550, timed by the host between two UART lines.
 *
 *   nimbus.test=conbench [nimbus.conuart=1] nimbus.conbytes=N nimbus.conchunk=C
 *   [nimbus.conpolls=P]
 *
 * By default it sends N bytes (default 65536) on the virtio-console's transmit queue in
 * chunks of C bytes (default 4096, Linux's hvc sends up to a page), one chunk in flight, as
 * Linux's put_chars waits for each; with conuart=1 it writes them to the UART byte by byte (THR, after
 * polling LSR). Prints `conbench: start ...` before and `conbench: done bytes=N` after, on the
 * UART, or `conbench: <why>` when it cannot (`conbench: timeout sent=S` when the device did not
 * use a chunk within P polls of the used index, default 2000000).
 */
#include "guest.h"

#define VIRTIO_ID_CONSOLE 3
#define CON_MMIO_SLOTS 32
/* Rings and the chunk buffer from 80 MiB on (the tests give the guest 128 MiB). */
#define CON_AREA 0x5000000UL
#define CON_RX_DESC (CON_AREA)
#define CON_RX_AVAIL (CON_AREA + 0x1000)
#define CON_RX_USED (CON_AREA + 0x2000)
#define CON_TX_DESC (CON_AREA + 0x3000)
#define CON_TX_AVAIL (CON_AREA + 0x4000)
#define CON_TX_USED (CON_AREA + 0x5000)
#define CON_BUF (CON_AREA + 0x10000)
#define CON_CHUNK_MAX 0x10000
#define CON_QSIZE 16

static int name_is(const char *name, u64 len, const char *want)
{
	u64 i;

	for (i = 0; i < len; i++)
		if (!want[i] || want[i] != name[i])
			return 0;
	return want[len] == 0;
}

/* The first `virtio_mmio.device=` of the command line that is a console, or 0 (Nimbus and
   QEMU's microvm both name their devices there, at different addresses). */
static u64 find_console(const char *cmdline)
{
	u64 base, i;

	for (i = 0; i < CON_MMIO_SLOTS; i++) {
		base = find_virtio_mmio_nth(cmdline, i);
		if (!base)
			return 0;
		if (mmio_read32(base) == VIRTIO_MAGIC && mmio_read32(base + 8) == VIRTIO_ID_CONSOLE)
			return base;
	}
	return 0;
}

static void conbench_uart(u64 n)
{
	u64 i;

	for (i = 0; i < n; i++)
		putc(i % 64 == 63 ? '\n' : 'x');
}

/* Sends n bytes in chunks of `chunk`; 0 when all were used by the device. */
static int conbench_virtio(const char *cmdline, u64 n, u64 chunk, u64 max_polls)
{
	volatile struct vq_desc *desc = (volatile struct vq_desc *)CON_TX_DESC;
	volatile u16 *avail = (volatile u16 *)CON_TX_AVAIL;
	volatile u16 *used_idx = (volatile u16 *)(CON_TX_USED + 2);
	u8 *buf = (u8 *)CON_BUF;
	u64 sent = 0, i;
	u64 polls;
	u32 offered;
	u16 idx = 0;

	vdev_base = find_console(cmdline);
	if (!vdev_base || vr(4) != 2) {
		puts("conbench: no virtio-console\n");
		return -1;
	}
	if (virtio_negotiate(0, &offered) ||
	    virtio_queue_sized(0, CON_QSIZE, CON_RX_DESC, CON_RX_AVAIL, CON_RX_USED) ||
	    virtio_queue_sized(1, CON_QSIZE, CON_TX_DESC, CON_TX_AVAIL, CON_TX_USED)) {
		puts("conbench: setup refused\n");
		return -1;
	}
	vw(0x70, 0xf);
	for (i = 0; i < chunk; i++)
		buf[i] = i % 64 == 63 ? '\n' : 'y';
	while (sent < n) {
		u64 len = n - sent < chunk ? n - sent : chunk;
		desc[0].addr = CON_BUF;
		desc[0].len = (u32)len;
		desc[0].flags = 0;
		desc[0].next = 0;
		avail[2 + idx % CON_QSIZE] = 0;
		barrier();
		avail[1] = ++idx;
		barrier();
		vw(0x50, 1);
		polls = 0;
		while (*used_idx != idx) {
			if (++polls == max_polls) {
				puts("conbench: timeout sent=");
				put_dec(sent);
				putc('\n');
				vw(0x70, 0);
				return -1;
			}
		}
		vw(0x64, vr(0x60));
		sent += len;
	}
	vw(0x70, 0);
	return 0;
}

int console_action(const char *name, u64 len, const char *cmdline)
{
	u64 n = cmdline_number(cmdline, "nimbus.conbytes=", 65536);
	u64 chunk = cmdline_number(cmdline, "nimbus.conchunk=", 4096);
	u64 virtio = !cmdline_number(cmdline, "nimbus.conuart=", 0);
	u64 max_polls = cmdline_number(cmdline, "nimbus.conpolls=", 2000000);

	if (!name_is(name, len, "conbench"))
		return 0;
	if (chunk == 0 || chunk > CON_CHUNK_MAX)
		chunk = 4096;
	puts("conbench: start path=");
	puts(virtio ? "virtio" : "uart");
	puts(" bytes=");
	put_dec(n);
	puts(" chunk=");
	put_dec(chunk);
	putc('\n');
	if (virtio) {
		if (conbench_virtio(cmdline, n, chunk, max_polls))
			return 1;
	} else {
		conbench_uart(n);
		putc('\n');
	}
	puts("conbench: done bytes=");
	put_dec(n);
	putc('\n');
	return 1;
}
