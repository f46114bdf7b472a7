/*
 * The test guest's virtio-vsock driver (vsock.c) as its actions (vsock_actions.c) use it: the
 * packet header, a connection's credit accounting, and where rings and buffers live in RAM.
 */
#ifndef VSOCK_H
#define VSOCK_H

#include "guest.h"

#define VIRTIO_ID_VSOCK 19
#define VS_HOST_CID 2
#define VS_TYPE_STREAM 1
#define VS_OP_REQUEST 1
#define VS_OP_RESPONSE 2
#define VS_OP_RST 3
#define VS_OP_SHUTDOWN 4
#define VS_OP_RW 5
#define VS_OP_CREDIT_UPDATE 6
#define VS_OP_CREDIT_REQUEST 7
#define VS_SHUTDOWN_BOTH 3 /* will not receive (bit 0), will not send (bit 1) */
#define VS_MAX_PAYLOAD 0x10000

/* Rings and buffers from 32 MiB on (the tests give the guest 128 MiB). */
#define VS_AREA 0x2000000UL
#define VS_RX_DESC (VS_AREA)
#define VS_RX_AVAIL (VS_AREA + 0x1000)
#define VS_RX_USED (VS_AREA + 0x2000)
#define VS_TX_DESC (VS_AREA + 0x3000)
#define VS_TX_AVAIL (VS_AREA + 0x4000)
#define VS_TX_USED (VS_AREA + 0x5000)
#define VS_EV_DESC (VS_AREA + 0x6000)
#define VS_EV_AVAIL (VS_AREA + 0x6100)
#define VS_EV_USED (VS_AREA + 0x6200)
#define VS_EV_BUF (VS_AREA + 0x6300)
#define VS_RX_HDR (VS_AREA + 0x8000)       /* VS_RX_CHAINS headers, 64 bytes apart */
#define VS_TX_HDR (VS_AREA + 0x10000)      /* VS_TX_SLOTS headers, 64 bytes apart */
#define VS_FLOOD_MAP (VS_AREA + 0x20000)   /* one byte per flood request */
#define VS_ECHO_RINGS (VS_AREA + 0x40000)  /* VS_CONNS rings of VS_RING bytes */
#define VS_PATTERN (VS_AREA + 0x100000)    /* VS_PATTERN_LEN bytes */
#define VS_RX_BUF (VS_AREA + 0x200000)     /* VS_RX_CHAINS payload buffers of 64 KiB */

#define VS_QSIZE 256
#define VS_EV_QSIZE 4
#define VS_RX_CHAINS 64
#define VS_TX_SLOTS 128
#define VS_CONNS 4
#define VS_RING 0x10000 /* an echo connection's buffer: what the guest advertises */
#define VS_RECV_BUF 0x40000
#define VS_PERIOD 251 /* the send pattern repeats every 251 bytes: a prime, not a power of 2 */
#define VS_PATTERN_LEN 0x12000
#define VS_FLOOD_MAX 4096
#define VS_FLOOD_BATCH 64
#define VS_REPLY_MAX 200

/* Bounded waits, in polls: each costs a port exit and a few emulated instructions (~40 us). */
#define VS_WAIT 200000       /* for an answer the host gives at once */
#define VS_IDLE_WAIT 1000000 /* for a host program's next step */

struct vs_hdr {
	u64 src_cid;
	u64 dst_cid;
	u32 src_port;
	u32 dst_port;
	u32 len;
	u16 type;
	u16 op;
	u32 flags;
	u32 buf_alloc;
	u32 fwd_cnt;
} __attribute__((packed));

/* A received packet: its header and payload, valid until the next vs_recv. */
struct vs_pkt {
	struct vs_hdr h;
	const u8 *data;
};

/* One stream as the guest sees it; counters wrap as the protocol's do. */
struct vs_conn {
	u32 open;
	u32 port;      /* the guest's */
	u32 peer_port; /* the host's */
	u32 buf_alloc; /* what the guest advertises */
	u32 rx_cnt;    /* payload bytes received */
	u32 fwd_cnt;   /* of them, consumed */
	u32 fwd_told;  /* fwd_cnt as last sent */
	u32 tx_cnt;    /* payload bytes sent */
	u32 peer_buf_alloc;
	u32 peer_fwd_cnt;
	u64 ring; /* echo: the VS_RING bytes not yet echoed live here */
	u64 echoed;
	u32 overrun; /* the host sent past the guest's credit */
};

typedef u64 __attribute__((may_alias, aligned(1))) u64_unaligned;

extern u64 vs_cid; /* the guest's CID, from the device's configuration space */

/* Gives the device the tx chains queued since the last notification. */
void vs_kick(void);
/* Queues one packet: the header `h` and `plen` bytes at `payload` (whatever h->len says).
   The device sees it at the next vs_kick. Returns -1 if the device never frees a slot. */
int vs_tx(const struct vs_hdr *h, u64 payload, u32 plen);
/* The next packet the device wrote, within `polls` polls; 0 if none came. Gives the previous
   packet's chain back first and flushes queued tx. */
int vs_recv(struct vs_pkt *p, u32 polls);
/* Linux's probe order up to DRIVER_OK, the three queues, buffers posted; prints the CID.
   Returns 0 on success. */
int vs_probe(const char *cmdline);
/* The send pattern: byte i of a stream is (i % 251) * 7 + 1, so that a packet starting at
   stream offset s is the VS_PERIOD-periodic buffer from s % 251. */
void vs_fill_pattern(void);
/* A header from this guest to the host, every other field zero. */
void vs_hdr_to_host(struct vs_hdr *h, u32 src_port, u32 dst_port, u16 op, u32 len);
/* Queues `op` on `c` with `len` payload bytes at `payload`, reporting the guest's credit. */
int vs_send(struct vs_conn *c, u16 op, u32 flags, u64 payload, u32 len);
/* Whether `p` belongs to `c`: from the host's port to the guest's. */
int vs_is_for(const struct vs_conn *c, const struct vs_pkt *p);
/* Bytes the host can still take on `c`. */
u32 vs_credit(const struct vs_conn *c);
/* Takes the host's credit from every packet of `c`, and notes an RW beyond the guest's. */
void vs_account(struct vs_conn *c, const struct vs_pkt *p);
/* The next packet of `c`, within `polls`; other packets are dropped. 0 if none came. */
int vs_wait(struct vs_conn *c, struct vs_pkt *p, u32 polls);
/* Opens `c` (port, peer_port and buf_alloc set) from the guest: REQUEST, then the answer's
   op (RESPONSE or RST), or 0 if none came. */
u16 vs_connect(struct vs_conn *c);
/* Sends SHUTDOWN (both directions) on `c` and waits for the host's RST; prints `<who>closed`
   or `<who>shutdown unanswered`. */
void vs_close(struct vs_conn *c, const char *who);
/* Prints the name of `op` (rst, response, ...) or op=<n>. */
void vs_put_op(u16 op);
/* Sends vs_hello on the open `c`, reads the host's answer up to a newline (or the end of the
   stream) and prints `<who>reply=<text>` (other bytes than printable ASCII as '.'). */
void vs_exchange(struct vs_conn *c, const char *who);

#endif
