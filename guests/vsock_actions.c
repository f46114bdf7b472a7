/*
 * The `vsock-*` actions of the test guest (README.md) over the driver in vsock.c.
 *
 * kvm-pvm hosts emulate every guest instruction (~0.44 M/s), so the actions move big payloads
 * in few packets and touch payload bytes only where they must (echo copies, recv checksums in
 * 8-byte words); what the guest sends comes from one pattern buffer filled at start.
 */

#include "vsock.h"

/* ---- vsock-connect, vsock-send ------------------------------------------------------------ */

/* Connects from guest port `port` to host port `vsock.port=` (default 5000) and prints the
   outcome; 0 once connected. */
static int vs_connect_host(struct vs_conn *c, const char *cmdline, u32 port)
{
	u16 op;

	memset(c, 0, sizeof(*c));
	c->port = port;
	c->peer_port = (u32)cmdline_number(cmdline, "vsock.port=", 5000);
	c->buf_alloc = VS_RING;
	op = vs_connect(c);
	if (op == VS_OP_RESPONSE) {
		puts("vsock: connected\n");
		return 0;
	}
	if (op == VS_OP_RST) {
		puts("vsock: reset\n");
	} else {
		puts("vsock: unexpected ");
		vs_put_op(op);
		putc('\n');
	}
	return -1;
}

/* `vsock-connect`: vs_hello to the host, its reply printed, then SHUTDOWN. */
static void action_vsock_connect(const char *cmdline)
{
	struct vs_conn c;

	if (vs_probe(cmdline) || vs_connect_host(&c, cmdline, 1234))
		return;
	vs_exchange(&c, "vsock: ");
	vs_close(&c, "vsock: ");
}

/* Waits until the host has forwarded every byte sent on `c` (asking with CREDIT_REQUEST when
   no CREDIT_UPDATE comes). Returns 0 once it has, -1 on a reset or timeout. */
static int vs_wait_acked(struct vs_conn *c)
{
	struct vs_pkt p;
	u32 asked = 0, before;

	while (c->peer_fwd_cnt != c->tx_cnt) {
		before = c->peer_fwd_cnt;
		if (!vs_wait(c, &p, 2000)) {
			if (++asked == 500)
				return -1;
			vs_send(c, VS_OP_CREDIT_REQUEST, 0, 0, 0);
			continue;
		}
		if (p.h.op == VS_OP_RST || p.h.op == VS_OP_SHUTDOWN)
			return -1;
		if (c->peer_fwd_cnt != before)
			asked = 0;
	}
	return 0;
}

/* Waits for the host's first RW on `c` (its go-ahead); 0 once it came. */
static int vs_wait_go(struct vs_conn *c)
{
	struct vs_pkt p;

	while (vs_wait(c, &p, VS_IDLE_WAIT)) {
		if (p.h.op == VS_OP_RW) {
			c->fwd_cnt += p.h.len;
			return 0;
		}
		if (p.h.op == VS_OP_RST || p.h.op == VS_OP_SHUTDOWN)
			break;
	}
	puts("vsock: no go-ahead\n");
	return -1;
}

/* `vsock-send`: once the host has sent a first byte, `vsock.bytes=N` (default 1 MiB) of the
   pattern in RW packets of up to 64 KiB, never more than the host's credit; waits for the host
   to forward them all, then SHUTDOWN. */
static void action_vsock_send(const char *cmdline)
{
	u64 total = cmdline_number(cmdline, "vsock.bytes=", 0x100000), sent = 0;
	struct vs_conn c;
	struct vs_pkt p;
	u32 chunk;

	vs_fill_pattern();
	if (vs_probe(cmdline) || vs_connect_host(&c, cmdline, 1235) || vs_wait_go(&c))
		return;
	while (sent < total) {
		chunk = vs_credit(&c);
		if (!chunk) {
			if (!vs_wait(&c, &p, VS_IDLE_WAIT)) {
				puts("vsock: stalled sent=");
				put_dec(sent);
				putc('\n');
				return;
			}
			if (p.h.op == VS_OP_RST || p.h.op == VS_OP_SHUTDOWN) {
				puts("vsock: reset after ");
				put_dec(sent);
				putc('\n');
				return;
			}
			continue;
		}
		if (chunk > VS_MAX_PAYLOAD)
			chunk = VS_MAX_PAYLOAD;
		if (chunk > total - sent)
			chunk = (u32)(total - sent);
		if (vs_send(&c, VS_OP_RW, 0, VS_PATTERN + sent % VS_PERIOD, chunk))
			return;
		sent += chunk;
		vs_kick();
	}
	puts("vsock: sent ");
	put_dec(sent);
	putc('\n');
	if (vs_wait_acked(&c)) {
		puts("vsock: not all forwarded\n");
		return;
	}
	vs_close(&c, "vsock: ");
}

/* ---- vsock-echo, vsock-recv: the guest listens -------------------------------------------- */

static struct vs_conn vs_conns[VS_CONNS];

/* Answers a packet that belongs to no connection: REQUESTs to `port` are accepted into a free
   slot (and returned), others get RST. */
static struct vs_conn *vs_listen(const struct vs_pkt *p, u32 port, u32 buf_alloc)
{
	struct vs_conn *c = 0;
	struct vs_hdr h;
	u32 i;

	if (p->h.op == VS_OP_REQUEST && p->h.dst_port == port)
		for (i = 0; i < VS_CONNS && !c; i++)
			if (!vs_conns[i].open)
				c = &vs_conns[i];
	if (!c) {
		if (p->h.op == VS_OP_REQUEST) {
			puts("vsock: refused port=");
			put_dec(p->h.dst_port);
			puts(" from=");
			put_dec(p->h.src_port);
			putc('\n');
		}
		if (p->h.op != VS_OP_RST) {
			vs_hdr_to_host(&h, p->h.dst_port, p->h.src_port, VS_OP_RST, 0);
			vs_tx(&h, 0, 0);
		}
		return 0;
	}
	memset(c, 0, sizeof(*c));
	c->open = 1;
	c->port = port;
	c->peer_port = p->h.src_port;
	c->buf_alloc = buf_alloc;
	c->ring = VS_ECHO_RINGS + (u64)(c - vs_conns) * VS_RING;
	vs_account(c, p);
	vs_send(c, VS_OP_RESPONSE, 0, 0, 0);
	puts("vsock: accepted port=");
	put_dec(port);
	puts(" from=");
	put_dec(c->peer_port);
	putc('\n');
	return c;
}

/* The open connection `p` belongs to, or 0. */
static struct vs_conn *vs_lookup(const struct vs_pkt *p)
{
	u32 i;

	for (i = 0; i < VS_CONNS; i++)
		if (vs_conns[i].open && vs_is_for(&vs_conns[i], p))
			return &vs_conns[i];
	return 0;
}

/* `n` bytes from `src` to `dst`, 8 at a time where it can. */
static void vs_copy(u8 *dst, const u8 *src, u32 n)
{
	for (; n >= 8; n -= 8, dst += 8, src += 8)
		*(u64_unaligned *)dst = *(const u64_unaligned *)src;
	while (n--)
		*dst++ = *src++;
}

/* Keeps an RW payload in c's ring, which the guest's credit keeps from overflowing. */
static void vs_echo_take(struct vs_conn *c, const struct vs_pkt *p)
{
	u32 at = (c->rx_cnt - p->h.len) % VS_RING, first = p->h.len;

	if (c->overrun)
		return;
	if (first > VS_RING - at)
		first = VS_RING - at;
	vs_copy((u8 *)(c->ring + at), p->data, first);
	vs_copy((u8 *)c->ring, p->data + first, p->h.len - first);
}

/* Echoes what the ring holds, as far as the host's credit goes. */
static void vs_echo_flush(struct vs_conn *c)
{
	u32 at, chunk, credit;

	while (c->rx_cnt != c->fwd_cnt && (credit = vs_credit(c)) != 0) {
		at = c->fwd_cnt % VS_RING;
		chunk = c->rx_cnt - c->fwd_cnt;
		if (chunk > VS_RING - at)
			chunk = VS_RING - at;
		if (chunk > credit)
			chunk = credit;
		c->fwd_cnt += chunk;
		c->echoed += chunk;
		vs_send(c, VS_OP_RW, 0, c->ring + at, chunk);
	}
}

/* The host ends `c` with SHUTDOWN (both directions; answered with RST) or RST: forgets `c`,
   prints `vsock: closed from=<host port>` (with ` echoed=<n>` if `echo`), and returns 1. An
   RST or a SHUTDOWN with other flags is printed on a line of its own first. */
static int vs_peer_closed(struct vs_conn *c, const struct vs_pkt *p, int echo)
{
	if (p->h.op != VS_OP_SHUTDOWN && p->h.op != VS_OP_RST)
		return 0;
	if (p->h.op == VS_OP_SHUTDOWN)
		vs_send(c, VS_OP_RST, 0, 0, 0);
	if (p->h.op == VS_OP_RST || p->h.flags != VS_SHUTDOWN_BOTH) {
		puts("vsock: ");
		vs_put_op(p->h.op);
		puts(" flags=");
		put_dec(p->h.flags);
		putc('\n');
	}
	c->open = 0;
	puts("vsock: closed from=");
	put_dec(c->peer_port);
	if (echo) {
		puts(" echoed=");
		put_dec(c->echoed);
	}
	putc('\n');
	return 1;
}

static void vs_put_listening(u32 port)
{
	puts("vsock: listening port=");
	put_dec(port);
	putc('\n');
}

/* `vsock-echo`: listens on `vsock.port=` (default 5000) and echoes every byte back on up to
   VS_CONNS connections at a time, until `vsock.conns=N` (default 2) have closed. */
static void action_vsock_echo(const char *cmdline)
{
	u32 port = (u32)cmdline_number(cmdline, "vsock.port=", 5000);
	u64 want = cmdline_number(cmdline, "vsock.conns=", 2), served = 0;
	struct vs_conn *c;
	struct vs_pkt p;

	if (vs_probe(cmdline))
		return;
	memset(vs_conns, 0, sizeof(vs_conns));
	vs_put_listening(port);
	while (served < want) {
		if (!vs_recv(&p, VS_IDLE_WAIT)) {
			puts("vsock: timeout\n");
			break;
		}
		if (p.h.src_cid != VS_HOST_CID || p.h.dst_cid != vs_cid)
			continue;
		c = vs_lookup(&p);
		if (!c) {
			vs_listen(&p, port, VS_RING);
			continue;
		}
		vs_account(c, &p);
		if (vs_peer_closed(c, &p, 1)) {
			served++;
			continue;
		}
		if (p.h.op == VS_OP_RW)
			vs_echo_take(c, &p);
		else if (p.h.op == VS_OP_CREDIT_REQUEST)
			vs_send(c, VS_OP_CREDIT_UPDATE, 0, 0, 0);
		vs_echo_flush(c);
	}
	puts("vsock: served ");
	put_dec(served);
	putc('\n');
	vw(0x70, 0);
}

/* FNV-1a over 64-bit words: the checksum `vsock-recv` prints. */
static u64 vs_fold(u64 h, u64 word)
{
	return (h ^ word) * 0x100000001b3UL;
}

/* The stream's checksum state: whole little-endian words folded, the partial one apart. */
struct vs_sum {
	u64 h;
	u64 word;
	u32 have; /* bytes in word */
};

static void vs_sum_bytes(struct vs_sum *s, const u8 *p, u32 n)
{
	while (n && s->have) {
		s->word |= (u64)*p++ << (8 * s->have);
		n--;
		if (++s->have == 8) {
			s->h = vs_fold(s->h, s->word);
			s->word = 0;
			s->have = 0;
		}
	}
	for (; n >= 8; n -= 8, p += 8)
		s->h = vs_fold(s->h, *(const u64_unaligned *)p);
	for (; n; n--)
		s->word |= (u64)*p++ << (8 * s->have++);
}

/* `vsock-recv`: accepts one connection on `vsock.port=` (default 5000), advertising VS_RECV_BUF
   bytes of credit and reporting progress every quarter of it, and prints the byte count and
   checksum of what came until the host closed. `vsock.nosum=1` (the benchmark) leaves the
   bytes untouched: the checksum costs the emulated guest far more than the transfer. */
static void action_vsock_recv(const char *cmdline)
{
	u32 port = (u32)cmdline_number(cmdline, "vsock.port=", 5000);
	int summed = !cmdline_number(cmdline, "vsock.nosum=", 0);
	struct vs_sum sum = { 0xcbf29ce484222325UL, 0, 0 };
	struct vs_conn *c = 0;
	u64 total = 0;
	struct vs_pkt p;

	if (vs_probe(cmdline))
		return;
	memset(vs_conns, 0, sizeof(vs_conns));
	vs_put_listening(port);
	while (!c) {
		if (!vs_recv(&p, VS_IDLE_WAIT)) {
			puts("vsock: timeout\n");
			return;
		}
		if (p.h.src_cid == VS_HOST_CID && p.h.dst_cid == vs_cid)
			c = vs_listen(&p, port, VS_RECV_BUF);
	}
	for (;;) {
		if (!vs_wait(c, &p, VS_IDLE_WAIT)) {
			puts("vsock: timeout\n");
			break;
		}
		if (vs_peer_closed(c, &p, 0))
			break;
		if (p.h.op == VS_OP_RW) {
			if (summed)
				vs_sum_bytes(&sum, p.data, p.h.len);
			total += p.h.len;
			c->fwd_cnt += p.h.len;
		}
		if (p.h.op == VS_OP_CREDIT_REQUEST || c->fwd_cnt - c->fwd_told >= VS_RECV_BUF / 4)
			vs_send(c, VS_OP_CREDIT_UPDATE, 0, 0, 0);
	}
	if (sum.have)
		sum.h = vs_fold(sum.h, sum.word);
	puts("vsock: received ");
	put_dec(total);
	puts(" bytes checksum=");
	put_hex(sum.h);
	putc('\n');
	vw(0x70, 0);
}

/* ---- vsock-hostile ------------------------------------------------------------------------ */

#define VS_FLOOD_PORT 41000 /* the guest ports of the flood's requests, one each */

static u32 vs_fence_port = 60000; /* the guest ports of vs_settle's fences */
static u32 vs_fence_peer;         /* the host port they connect to: its listener never accepts */

/* Connects to host port vs_fence_peer and resets that connection again. A device answers in
   the order it handled packets (resets may jump ahead, as Nimbus's do, but not behind), so what
   came from host port `peer` to guest port `port` before the fence's answer is all that comes.
   Returns RST if one came, else the op of the first packet between them, or 0. */
static u16 vs_settle(u32 port, u32 peer)
{
	u32 fence = vs_fence_port++;
	struct vs_hdr h;
	struct vs_pkt p;
	u16 op = 0;

	vs_hdr_to_host(&h, fence, vs_fence_peer, VS_OP_REQUEST, 0);
	h.buf_alloc = VS_RING;
	vs_tx(&h, 0, 0);
	while (vs_recv(&p, VS_WAIT)) {
		if (p.h.src_port == vs_fence_peer && p.h.dst_port == fence) {
			vs_hdr_to_host(&h, fence, vs_fence_peer, VS_OP_RST, 0);
			vs_tx(&h, 0, 0);
			return op;
		}
		if (p.h.src_port == peer && p.h.dst_port == port && (!op || p.h.op == VS_OP_RST))
			op = p.h.op;
	}
	puts("hostile fence: no reply\n");
	return op;
}

/* Prints `hostile <name>: <what came back>`. */
static void vs_hostile_result(const char *name, const char *what, u16 op)
{
	puts("hostile ");
	puts(name);
	puts(": ");
	puts(what);
	if (op)
		vs_put_op(op);
	else
		puts("no reply");
	putc('\n');
}

/* A connection from guest port `port` to host port `peer`, or 0 (printed as case `name`). */
static int vs_hostile_connect(struct vs_conn *c, const char *name, u32 port, u32 peer)
{
	u16 op;

	memset(c, 0, sizeof(*c));
	c->port = port;
	c->peer_port = peer;
	c->buf_alloc = VS_RING;
	op = vs_connect(c);
	if (op != VS_OP_RESPONSE)
		vs_hostile_result(name, "connect got ", op);
	return op == VS_OP_RESPONSE;
}

/* Sends `h` with `plen` pattern bytes on a new connection from `port` to `peer` and reports
   what came back. */
static void vs_hostile_on_conn(const char *name, u32 port, u32 peer, struct vs_hdr *h, u32 plen)
{
	struct vs_conn c;

	if (!vs_hostile_connect(&c, name, port, peer))
		return;
	h->src_port = port;
	h->dst_port = peer;
	h->buf_alloc = VS_RING;
	vs_tx(h, VS_PATTERN, plen);
	vs_hostile_result(name, "", vs_settle(port, peer));
}

/* `n` REQUESTs to host port `peer` in batches of VS_FLOOD_BATCH, each batch's answers awaited;
   prints how many were accepted and reset, then resets the accepted ones. */
static void vs_hostile_flood(u32 peer, u32 n)
{
	u8 *answer = (u8 *)VS_FLOOD_MAP;
	u32 sent = 0, answered = 0, accepted = 0, reset = 0, i;
	struct vs_hdr h;
	struct vs_pkt p;

	if (n > VS_FLOOD_MAX)
		n = VS_FLOOD_MAX;
	memset(answer, 0, n);
	while (answered < n) {
		for (; sent < n && sent - answered < VS_FLOOD_BATCH; sent++) {
			vs_hdr_to_host(&h, VS_FLOOD_PORT + sent, peer, VS_OP_REQUEST, 0);
			h.buf_alloc = VS_RING;
			vs_tx(&h, 0, 0);
		}
		if (!vs_recv(&p, VS_WAIT))
			break;
		i = p.h.dst_port - VS_FLOOD_PORT;
		if (p.h.src_port != peer || i >= n || answer[i])
			continue;
		answer[i] = (u8)p.h.op;
		answered++;
		accepted += p.h.op == VS_OP_RESPONSE;
		reset += p.h.op == VS_OP_RST;
	}
	puts("hostile flood: requests=");
	put_dec(n);
	puts(" accepted=");
	put_dec(accepted);
	puts(" rst=");
	put_dec(reset);
	if (answered != accepted + reset) {
		puts(" other=");
		put_dec(answered - accepted - reset);
	}
	if (answered != n) {
		puts(" unanswered=");
		put_dec(n - answered);
	}
	putc('\n');
	for (i = 0; i < n; i++)
		if (answer[i] == VS_OP_RESPONSE) {
			vs_hdr_to_host(&h, VS_FLOOD_PORT + i, peer, VS_OP_RST, 0);
			vs_tx(&h, 0, 0);
		}
	vs_settle(0, 0);
}

/* `vsock-hostile`: malformed and excessive packets against host port P = `vsock.port=`
   (default 6000), whose listener accepts and holds connections, and P + 1, whose listener never
   accepts (the credit lie's peer, and the fences'); then a normal exchange with P + 2. */
static void action_vsock_hostile(const char *cmdline)
{
	u32 peer = (u32)cmdline_number(cmdline, "vsock.port=", 6000);
	u32 flood = (u32)cmdline_number(cmdline, "vsock.flood=", 3000), i;
	struct vs_conn c;
	struct vs_hdr h;

	vs_fill_pattern();
	if (vs_probe(cmdline))
		return;
	vs_fence_peer = peer + 1;

	vs_hdr_to_host(&h, 40001, peer, VS_OP_REQUEST, 0);
	h.src_cid = vs_cid + 1;
	vs_tx(&h, 0, 0);
	vs_hostile_result("src-cid", "", vs_settle(40001, peer));

	vs_hdr_to_host(&h, 40002, peer, VS_OP_REQUEST, 0);
	h.dst_cid = VS_HOST_CID + 5;
	vs_tx(&h, 0, 0);
	vs_hostile_result("dst-cid", "", vs_settle(40002, peer));

	vs_hdr_to_host(&h, 0, 0, 99, 0);
	vs_hostile_on_conn("unknown-op", 40003, peer, &h, 0);
	vs_hdr_to_host(&h, 0, 0, VS_OP_RW, 16);
	h.type = 2;
	vs_hostile_on_conn("type", 40004, peer, &h, 16);
	vs_hdr_to_host(&h, 0, 0, VS_OP_RW, 60000);
	vs_hostile_on_conn("len-over-chain", 40005, peer, &h, 100);
	/* Not an RW, whose 70000 bytes would also be past the credit: a packet that only the
	   length check refuses. */
	vs_hdr_to_host(&h, 0, 0, VS_OP_CREDIT_UPDATE, 70000);
	vs_hostile_on_conn("len-too-big", 40006, peer, &h, 70000);

	/* 1 MiB at once to a peer that does not read: far past the 64 KiB of credit. */
	if (vs_hostile_connect(&c, "credit-lie", 40007, peer + 1)) {
		for (i = 0; i < 16; i++)
			vs_send(&c, VS_OP_RW, 0, VS_PATTERN, VS_MAX_PAYLOAD);
		vs_hostile_result("credit-lie", "", vs_settle(40007, peer + 1));
	}

	vs_hostile_flood(peer, flood);

	if (vs_hostile_connect(&c, "normal", 40009, peer + 2)) {
		vs_exchange(&c, "hostile normal: ");
		vs_close(&c, "hostile normal: ");
	}
	vw(0x70, 0);
}

/* ---- dispatch ----------------------------------------------------------------------------- */

static int vs_name_is(const char *name, u64 len, const char *want)
{
	u64 i;

	for (i = 0; i < len; i++)
		if (want[i] != name[i])
			return 0;
	return want[len] == 0;
}

int vsock_action(const char *name, u64 len, const char *cmdline)
{
	if (vs_name_is(name, len, "vsock-echo"))
		action_vsock_echo(cmdline);
	else if (vs_name_is(name, len, "vsock-connect"))
		action_vsock_connect(cmdline);
	else if (vs_name_is(name, len, "vsock-send"))
		action_vsock_send(cmdline);
	else if (vs_name_is(name, len, "vsock-recv"))
		action_vsock_recv(cmdline);
	else if (vs_name_is(name, len, "vsock-hostile"))
		action_vsock_hostile(cmdline);
	else
		return 0;
	return 1;
}
