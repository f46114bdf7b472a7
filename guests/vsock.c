/*
 * A polled virtio-vsock driver for the test guest: the guest side of Nimbus's hybrid vsock
 * (Firecracker's protocol; the host CID is 2). The actions that use it are in vsock_actions.c.
 *
 * One device found by DeviceID among the command line's `virtio_mmio.device=` entries;
 * VERSION_1 only; rx queue 0 with VS_RX_CHAINS posted chains (a 44-byte header descriptor and a
 * 64 KiB payload descriptor each), tx queue 1 with VS_TX_SLOTS chains of the same shape, event
 * queue 2 with a few 4-byte buffers. Nothing waits for interrupts: used rings are polled, each
 * poll paced by a UART status read (a port exit).
 */

#include "vsock.h"

u64 vs_cid;
static u16 vs_rx_avail, vs_rx_seen, vs_tx_avail, vs_tx_seen, vs_tx_kicked;
static u16 vs_tx_free[VS_TX_SLOTS];
static u32 vs_tx_nfree;
static int vs_rx_held = -1; /* the chain whose payload the caller may still read */

static const char vs_hello[] = "NIMBUS-GUEST-HELLO\n";

/* ---- rings -------------------------------------------------------------------------------- */

static void vs_desc(u64 table, u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
	volatile struct vq_desc *d = (volatile struct vq_desc *)table + i;
	d->addr = addr;
	d->len = len;
	d->flags = flags;
	d->next = next;
}

static void vs_avail_add(u64 avail, u16 *idx, u16 head, u16 size)
{
	volatile u16 *a = (volatile u16 *)avail;
	a[2 + *idx % size] = head;
	barrier();
	a[1] = ++*idx;
	barrier();
}

static void vs_pace(void)
{
	(void)inb(UART_LSR);
}

void vs_kick(void)
{
	if (vs_tx_kicked != vs_tx_avail) {
		vs_tx_kicked = vs_tx_avail;
		vw(0x50, 1);
	}
}

/* Takes back the tx slots the device has used. */
static void vs_tx_reclaim(void)
{
	volatile u16 *used_idx = (volatile u16 *)(VS_TX_USED + 2);
	volatile u32 *ring = (volatile u32 *)(VS_TX_USED + 4);

	while (vs_tx_seen != *used_idx) {
		u32 id;
		barrier();
		id = ring[2 * (vs_tx_seen % VS_QSIZE)];
		vs_tx_seen++;
		if (id / 2 < VS_TX_SLOTS && vs_tx_nfree < VS_TX_SLOTS)
			vs_tx_free[vs_tx_nfree++] = (u16)(id / 2);
	}
}

int vs_tx(const struct vs_hdr *h, u64 payload, u32 plen)
{
	u32 polls = 0;
	u16 slot;

	vs_tx_reclaim();
	while (!vs_tx_nfree) {
		vs_kick();
		vs_pace();
		vs_tx_reclaim();
		if (++polls == VS_WAIT) {
			puts("vsock: tx queue stuck\n");
			return -1;
		}
	}
	slot = vs_tx_free[--vs_tx_nfree];
	*(struct vs_hdr *)(VS_TX_HDR + (u64)slot * 64) = *h;
	if (plen) {
		vs_desc(VS_TX_DESC, 2 * slot, VS_TX_HDR + (u64)slot * 64, sizeof(*h), VQ_F_NEXT,
			2 * slot + 1);
		vs_desc(VS_TX_DESC, 2 * slot + 1, payload, plen, 0, 0);
	} else {
		vs_desc(VS_TX_DESC, 2 * slot, VS_TX_HDR + (u64)slot * 64, sizeof(*h), 0, 0);
	}
	vs_avail_add(VS_TX_AVAIL, &vs_tx_avail, 2 * slot, VS_QSIZE);
	return 0;
}

int vs_recv(struct vs_pkt *p, u32 polls)
{
	volatile u16 *used_idx = (volatile u16 *)(VS_RX_USED + 2);
	volatile u32 *ring = (volatile u32 *)(VS_RX_USED + 4);
	u32 n = 0, id;

	if (vs_rx_held >= 0) {
		vs_avail_add(VS_RX_AVAIL, &vs_rx_avail, (u16)(2 * vs_rx_held), VS_QSIZE);
		vs_rx_held = -1;
		vw(0x50, 0);
	}
	vs_kick();
	for (;;) {
		while (vs_rx_seen == *used_idx) {
			vs_tx_reclaim();
			if (++n >= polls)
				return 0;
			vs_pace();
		}
		barrier();
		id = ring[2 * (vs_rx_seen % VS_QSIZE)];
		vs_rx_seen++;
		if (id % 2 == 0 && id / 2 < VS_RX_CHAINS)
			break;
		puts("vsock: bad rx used id ");
		put_dec(id);
		putc('\n');
	}
	vs_rx_held = (int)(id / 2);
	p->h = *(const struct vs_hdr *)(VS_RX_HDR + (u64)vs_rx_held * 64);
	p->data = (const u8 *)(VS_RX_BUF + (u64)vs_rx_held * VS_MAX_PAYLOAD);
	if (p->h.len > VS_MAX_PAYLOAD)
		p->h.len = VS_MAX_PAYLOAD;
	return 1;
}

/* ---- probe -------------------------------------------------------------------------------- */

/* The first virtio-mmio device of the command line whose DeviceID is 19, or 0. */
static u64 vs_find(const char *cmdline)
{
	u64 n, base;

	for (n = 0; n < 8; n++) {
		base = find_virtio_mmio_nth(cmdline, n);
		if (!base)
			return 0;
		if (mmio_read32(base) == VIRTIO_MAGIC && mmio_read32(base + 8) == VIRTIO_ID_VSOCK)
			return base;
	}
	return 0;
}

static void vs_setup_rings(void)
{
	u32 i;

	vs_rx_avail = vs_rx_seen = vs_tx_avail = vs_tx_seen = vs_tx_kicked = 0;
	vs_rx_held = -1;
	for (i = 0; i < VS_RX_CHAINS; i++) {
		vs_desc(VS_RX_DESC, (u16)(2 * i), VS_RX_HDR + (u64)i * 64, sizeof(struct vs_hdr),
			VQ_F_WRITE | VQ_F_NEXT, (u16)(2 * i + 1));
		vs_desc(VS_RX_DESC, (u16)(2 * i + 1), VS_RX_BUF + (u64)i * VS_MAX_PAYLOAD,
			VS_MAX_PAYLOAD, VQ_F_WRITE, 0);
		vs_avail_add(VS_RX_AVAIL, &vs_rx_avail, (u16)(2 * i), VS_QSIZE);
	}
	for (i = 0; i < VS_TX_SLOTS; i++)
		vs_tx_free[i] = (u16)(VS_TX_SLOTS - 1 - i);
	vs_tx_nfree = VS_TX_SLOTS;
	for (i = 0; i < VS_EV_QSIZE; i++) {
		u16 idx = (u16)i;
		vs_desc(VS_EV_DESC, idx, VS_EV_BUF + 4 * i, 4, VQ_F_WRITE, 0);
		vs_avail_add(VS_EV_AVAIL, &idx, idx, VS_EV_QSIZE);
	}
}

int vs_probe(const char *cmdline)
{
	u32 offered;

	vdev_base = vs_find(cmdline);
	if (!vdev_base || vr(4) != 2) {
		puts("vsock: no device\n");
		return -1;
	}
	if (virtio_negotiate(0, &offered)) {
		puts("vsock: features refused\n");
		return -1;
	}
	if (virtio_queue_sized(0, VS_QSIZE, VS_RX_DESC, VS_RX_AVAIL, VS_RX_USED) ||
	    virtio_queue_sized(1, VS_QSIZE, VS_TX_DESC, VS_TX_AVAIL, VS_TX_USED) ||
	    virtio_queue_sized(2, VS_EV_QSIZE, VS_EV_DESC, VS_EV_AVAIL, VS_EV_USED)) {
		puts("vsock: queue unavailable\n");
		return -1;
	}
	vs_setup_rings();
	vw(0x70, 0xf);
	if (vr(0x70) != 0xf) {
		puts("vsock: status=");
		put_hex(vr(0x70));
		putc('\n');
		return -1;
	}
	vw(0x50, 0);
	vw(0x50, 2);
	vs_cid = vr(0x100) | (u64)vr(0x104) << 32;
	puts("vsock: cid=");
	put_dec(vs_cid);
	putc('\n');
	return 0;
}

void vs_fill_pattern(void)
{
	u8 *b = (u8 *)VS_PATTERN;
	u32 i;

	for (i = 0; i < VS_PERIOD; i++)
		b[i] = (u8)(i * 7 + 1);
	for (; i + 8 <= VS_PATTERN_LEN; i += 8)
		*(u64_unaligned *)(b + i) = *(const u64_unaligned *)(b + i - VS_PERIOD);
}

/* ---- connections -------------------------------------------------------------------------- */

void vs_hdr_to_host(struct vs_hdr *h, u32 src_port, u32 dst_port, u16 op, u32 len)
{
	memset(h, 0, sizeof(*h));
	h->src_cid = vs_cid;
	h->dst_cid = VS_HOST_CID;
	h->src_port = src_port;
	h->dst_port = dst_port;
	h->len = len;
	h->type = VS_TYPE_STREAM;
	h->op = op;
}

int vs_send(struct vs_conn *c, u16 op, u32 flags, u64 payload, u32 len)
{
	struct vs_hdr h;

	vs_hdr_to_host(&h, c->port, c->peer_port, op, len);
	h.flags = flags;
	h.buf_alloc = c->buf_alloc;
	h.fwd_cnt = c->fwd_cnt;
	c->fwd_told = c->fwd_cnt;
	if (op == VS_OP_RW)
		c->tx_cnt += len;
	return vs_tx(&h, payload, len);
}

int vs_is_for(const struct vs_conn *c, const struct vs_pkt *p)
{
	return p->h.src_cid == VS_HOST_CID && p->h.dst_cid == vs_cid &&
	       p->h.src_port == c->peer_port && p->h.dst_port == c->port;
}

u32 vs_credit(const struct vs_conn *c)
{
	u32 unacked = c->tx_cnt - c->peer_fwd_cnt;
	return unacked >= c->peer_buf_alloc ? 0 : c->peer_buf_alloc - unacked;
}

void vs_account(struct vs_conn *c, const struct vs_pkt *p)
{
	c->peer_buf_alloc = p->h.buf_alloc;
	c->peer_fwd_cnt = p->h.fwd_cnt;
	if (p->h.op != VS_OP_RW)
		return;
	c->rx_cnt += p->h.len;
	if (c->rx_cnt - c->fwd_told > c->buf_alloc && !c->overrun) {
		c->overrun = 1;
		puts("vsock: credit overrun from=");
		put_dec(c->peer_port);
		putc('\n');
	}
}

int vs_wait(struct vs_conn *c, struct vs_pkt *p, u32 polls)
{
	while (vs_recv(p, polls))
		if (vs_is_for(c, p)) {
			vs_account(c, p);
			return 1;
		}
	return 0;
}

u16 vs_connect(struct vs_conn *c)
{
	struct vs_pkt p;

	c->rx_cnt = c->fwd_cnt = c->fwd_told = c->tx_cnt = 0;
	c->peer_buf_alloc = c->peer_fwd_cnt = 0;
	if (vs_send(c, VS_OP_REQUEST, 0, 0, 0) || !vs_wait(c, &p, VS_WAIT))
		return 0;
	c->open = p.h.op == VS_OP_RESPONSE;
	return p.h.op;
}

void vs_close(struct vs_conn *c, const char *who)
{
	struct vs_pkt p;

	vs_send(c, VS_OP_SHUTDOWN, VS_SHUTDOWN_BOTH, 0, 0);
	c->open = 0;
	while (vs_wait(c, &p, VS_WAIT))
		if (p.h.op == VS_OP_RST) {
			puts(who);
			puts("closed\n");
			return;
		}
	puts(who);
	puts("shutdown unanswered\n");
}

void vs_put_op(u16 op)
{
	static const char *const names[] = { "none",	  "request", "response",      "rst",
					     "shutdown", "rw",	     "credit-update", "credit-request" };
	if (op < 8) {
		puts(names[op]);
		return;
	}
	puts("op=");
	put_dec(op);
}

void vs_exchange(struct vs_conn *c, const char *who)
{
	char reply[VS_REPLY_MAX];
	struct vs_pkt p;
	u32 n = 0, i, done = 0;

	vs_send(c, VS_OP_RW, 0, (u64)vs_hello, sizeof(vs_hello) - 1);
	while (!done && vs_wait(c, &p, VS_WAIT)) {
		if (p.h.op == VS_OP_RST || p.h.op == VS_OP_SHUTDOWN)
			break;
		if (p.h.op != VS_OP_RW)
			continue;
		for (i = 0; i < p.h.len && !done; i++) {
			if (p.data[i] == '\n')
				done = 1;
			else if (n < VS_REPLY_MAX)
				reply[n++] = is_printable(p.data[i]) ? (char)p.data[i] : '.';
		}
		c->fwd_cnt += p.h.len;
	}
	puts(who);
	puts(done ? "reply=" : "reply unfinished=");
	for (i = 0; i < n; i++)
		putc(reply[i]);
	putc('\n');
}
