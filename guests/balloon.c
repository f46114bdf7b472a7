/*
 * The virtio-balloon actions of the test guest (see README.md):
 *
 * `nimbus.test=balloon` touches `nimbus.balloon-mib=N` MiB (default 16) at 64 MiB, one word a
 * page, prints `balloon: touched <N> MiB`, then waits for the host's target (num_pages, set by
 * QMP `balloon` before or after boot), inflates that many of the touched pages (at most all),
 * writes `actual` and prints `balloon: inflated <n> pages`; then waits for num_pages to drop,
 * deflates the difference (the last pages first), writes `actual`, prints
 * `balloon: deflated <m> pages zeroed=<z>` (z: how many of them read back as zero, which only
 * happens if the host really dropped them) and touches them again: `balloon: touched again`.
 *
 * `nimbus.test=balloon-bad` sends what a hostile driver would: page numbers outside RAM (in
 * the MMIO hole and past the end of RAM), a page twice, a 6-byte request, a request whose
 * buffer is outside RAM and a deflate of a page never inflated; then one good inflate, and
 * prints `balloon-bad: device still serves` if it completes.
 *
 * Integer-only, no libc; a few thousand instructions per MiB.
 */
#include "guest.h"

#define VIRTIO_ID_BALLOON 5
#define BAL_QSIZE 32
#define BAL_AREA 0x800000UL
#define BAL_PFNS (BAL_AREA + 0x10000) /* BAL_QSIZE arrays of BAL_PER_REQ le32 page numbers */
#define BAL_PER_REQ 256
#define BAL_TOUCH 0x4000000UL
#define BAL_POLLS 4000000 /* polls of a register or a used index: about a minute */
#define CFG_NUM_PAGES 0x100
#define CFG_ACTUAL 0x104

struct bal_queue {
	u64 desc, avail, used;
	u16 next_avail;
};

static struct bal_queue bal_q[2] = {
	{ BAL_AREA, BAL_AREA + 0x400, BAL_AREA + 0x1000, 0 },
	{ BAL_AREA + 0x2000, BAL_AREA + 0x2400, BAL_AREA + 0x3000, 0 },
};

static u64 find_balloon(const char *cmdline)
{
	u64 n, base;

	for (n = 0; (base = find_virtio_mmio_nth(cmdline, n)) != 0; n++)
		if (mmio_read32(base) == VIRTIO_MAGIC && mmio_read32(base + 8) == VIRTIO_ID_BALLOON)
			return base;
	return 0;
}

/* Linux's probe without optional features: queues inflate (0) and deflate (1). */
static int balloon_probe(const char *cmdline)
{
	u32 offered, q;

	vdev_base = find_balloon(cmdline);
	if (!vdev_base) {
		puts("balloon: no device\n");
		return -1;
	}
	if (virtio_negotiate(0, &offered)) {
		puts("balloon: features refused\n");
		return -1;
	}
	for (q = 0; q < 2; q++) {
		bal_q[q].next_avail = 0;
		if (virtio_queue_sized(q, BAL_QSIZE, bal_q[q].desc, bal_q[q].avail, bal_q[q].used)) {
			puts("balloon: queue refused\n");
			return -1;
		}
	}
	vw(0x70, 0xf);
	return 0;
}

/* Publishes a one-buffer request (`addr`, `len`) on queue `q` without notifying. */
static void balloon_post(u32 q, u64 addr, u32 len)
{
	struct bal_queue *bq = &bal_q[q];
	u16 slot = bq->next_avail % BAL_QSIZE;
	volatile struct vq_desc *d = (volatile struct vq_desc *)bq->desc + slot;
	volatile u16 *avail = (volatile u16 *)bq->avail;

	d->addr = addr;
	d->len = len;
	d->flags = 0;
	d->next = 0;
	avail[2 + slot] = slot;
	barrier();
	bq->next_avail++;
	avail[1] = bq->next_avail;
	barrier();
}

/* Notifies queue `q` and waits until the device used everything posted; 0 on success. */
static int balloon_kick(u32 q)
{
	volatile u16 *used_idx = (volatile u16 *)(bal_q[q].used + 2);
	u32 polls = 0;

	vw(0x50, q);
	while (*used_idx != bal_q[q].next_avail)
		if (++polls == BAL_POLLS) {
			puts("balloon: timeout\n");
			return -1;
		}
	return 0;
}

/* Sends the pages [first, first + count) of the touched area on queue `q`; 0 on success. */
static int balloon_send(u32 q, u32 first, u32 count)
{
	u32 done = 0;

	while (done < count) {
		u32 batch = 0;
		while (done < count && batch < BAL_QSIZE) {
			u32 n = count - done < BAL_PER_REQ ? count - done : BAL_PER_REQ;
			u32 *pfns = (u32 *)(BAL_PFNS + (u64)batch * BAL_PER_REQ * 4);
			u32 i;
			for (i = 0; i < n; i++)
				pfns[i] = (u32)(BAL_TOUCH >> 12) + first + done + i;
			balloon_post(q, (u64)pfns, n * 4);
			done += n;
			batch++;
		}
		if (balloon_kick(q))
			return -1;
	}
	return 0;
}

/* Polls num_pages until `done(value)`; the value, or (u32)-1 on timeout. */
static u32 balloon_wait_target(int want_more, u32 than)
{
	u32 polls, v;

	for (polls = 0; polls < BAL_POLLS; polls++) {
		v = vr(CFG_NUM_PAGES);
		if (want_more ? v > than : v < than)
			return v;
	}
	puts("balloon: no target\n");
	return (u32)-1;
}

void action_balloon(const char *cmdline)
{
	u32 mib = (u32)cmdline_number(cmdline, "nimbus.balloon-mib=", 16);
	u32 pages = mib * 256, i, target, inflated, deflate, zeroed = 0;

	if (balloon_probe(cmdline))
		return;
	for (i = 0; i < pages; i++)
		*(volatile u32 *)(BAL_TOUCH + ((u64)i << 12)) = i | 1;
	puts("balloon: touched ");
	put_dec(mib);
	puts(" MiB\n");
	target = balloon_wait_target(1, 0);
	if (target == (u32)-1)
		return;
	inflated = target < pages ? target : pages;
	if (balloon_send(0, 0, inflated))
		return;
	vw(CFG_ACTUAL, inflated);
	puts("balloon: inflated ");
	put_dec(inflated);
	puts(" pages\n");
	target = balloon_wait_target(0, inflated);
	if (target == (u32)-1)
		return;
	deflate = inflated - target;
	if (balloon_send(1, inflated - deflate, deflate))
		return;
	vw(CFG_ACTUAL, target);
	for (i = inflated - deflate; i < inflated; i++)
		if (*(volatile u32 *)(BAL_TOUCH + ((u64)i << 12)) == 0)
			zeroed++;
	puts("balloon: deflated ");
	put_dec(deflate);
	puts(" pages zeroed=");
	put_dec(zeroed);
	putc('\n');
	for (i = inflated - deflate; i < inflated; i++)
		*(volatile u32 *)(BAL_TOUCH + ((u64)i << 12)) = i | 1;
	puts("balloon: touched again\n");
}

void action_balloon_bad(const char *cmdline)
{
	u32 *pfns = (u32 *)BAL_PFNS;
	u32 touch = (u32)(BAL_TOUCH >> 12);

	if (balloon_probe(cmdline))
		return;
	*(volatile u32 *)BAL_TOUCH = 1;
	/* The MMIO window of the devices, past the end of any test RAM, one page twice. */
	pfns[0] = (u32)(0xd0000000UL >> 12);
	pfns[1] = 0xfffff;
	pfns[2] = touch;
	pfns[3] = touch;
	balloon_post(0, (u64)pfns, 16);
	/* Not whole page numbers, and a buffer outside RAM. */
	balloon_post(0, (u64)(pfns + 8), 6);
	balloon_post(0, 0xfffff000UL, 8);
	if (balloon_kick(0))
		return;
	/* A page never inflated. */
	pfns[16] = touch + 1;
	balloon_post(1, (u64)(pfns + 16), 4);
	if (balloon_kick(1))
		return;
	puts("balloon-bad: sent\n");
	pfns[24] = touch + 2;
	balloon_post(0, (u64)(pfns + 24), 4);
	if (balloon_kick(0))
		return;
	puts("balloon-bad: device still serves\n");
}
