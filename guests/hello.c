/*
 * Nimbus test guest: normalises the boot information handed over by the VMM (Linux
 * boot_params or a PVH hvm_start_info), prints it on the serial console, runs the
 * `nimbus.test=<action>` actions from the command line and resets the VM via the i8042.
 *
 * Freestanding, integer-only: kvm-pvm hosts emulate every instruction and stop on SSE, x87
 * arithmetic, popcnt and friends, so nothing here may use them (see build.sh for the flags).
 * The output format is an interface: tests/ assert on these lines byte for byte.
 */

#include "guest.h"
#include "formats.h"

#define LSR_DATA_READY 0x01
#define LSR_THR_EMPTY 0x20
#define I8042_COMMAND 0x64
#define I8042_RESET 0xfe

#define LAPIC_BASE 0xfee00000UL
#define LAPIC_ID 0x20
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define ICR_INIT 0x500
#define ICR_STARTUP 0x600
#define ICR_LEVEL_ASSERT 0x4000
#define ICR_TRIGGER_LEVEL 0x8000
#define ICR_BUSY 0x1000

#define AP_TRAMPOLINE 0x2000 /* SIPI vector 0x02 */
#define MAX_E820 128
#define MAX_CPUS 64
#define LINE_MAX 64

/* Bounded waits: every poll costs a port exit (~15 us on kvm-pvm) plus a few emulated instructions. */
#define ECHO_POLLS 200000
#define SMP_POLLS 100000
#define IPI_DELAY_POLLS 200

struct e820_entry {
	u64 addr;
	u64 size;
	u32 type;
};

/* The boot information, whatever protocol delivered it. */
struct boot_info {
	const char *cmdline;
	u32 n_e820;
	struct e820_entry e820[MAX_E820];
	u64 initrd_addr;
	u64 initrd_size;
};

struct mp_info {
	int found;
	const char *error;
	u32 cpus;
	u8 apic_ids[MAX_CPUS];
	u32 bsp_index;
	u32 ioapic_id;
	u32 ioapic_addr;
	u32 irq_entries;
};

static struct boot_info info;
static struct mp_info mp;

/* ---- tiny libc ---------------------------------------------------------------------------- */

void *memcpy(void *dst, const void *src, u64 n)
{
	u8 *d = dst;
	const u8 *s = src;
	while (n--)
		*d++ = *s++;
	return dst;
}

void *memset(void *dst, int c, u64 n)
{
	u8 *d = dst;
	while (n--)
		*d++ = (u8)c;
	return dst;
}

static int starts_with(const char *s, const char *prefix)
{
	while (*prefix)
		if (*s++ != *prefix++)
			return 0;
	return 1;
}

/* Whether the space-separated command line `p` has the token `tok` (a prefix up to a space or
   comma counts: `reboot=t` matches `reboot=t,s`). */
static int has_token(const char *p, const char *tok)
{
	u64 n = 0;

	while (tok[n])
		n++;
	while (p && *p) {
		while (*p == ' ')
			p++;
		if (*p && starts_with(p, tok) && (p[n] == 0 || p[n] == ' ' || p[n] == ','))
			return 1;
		while (*p && *p != ' ')
			p++;
	}
	return 0;
}

static int str_eq_n(const char *a, u64 n, const char *b)
{
	u64 i;
	for (i = 0; i < n; i++)
		if (b[i] != a[i])
			return 0;
	return b[n] == 0;
}

/* ---- console ------------------------------------------------------------------------------ */

void putc(char c)
{
	while (!(inb(UART_LSR) & LSR_THR_EMPTY))
		;
	outb(UART_THR, (u8)c);
}

void puts(const char *s)
{
	while (*s)
		putc(*s++);
}

void put_hex(u64 v)
{
	char buf[16];
	int n = 0;
	puts("0x");
	do {
		buf[n++] = "0123456789abcdef"[v & 0xf];
		v >>= 4;
	} while (v);
	while (n)
		putc(buf[--n]);
}

void put_dec(u64 v)
{
	char buf[20];
	int n = 0;
	do {
		buf[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		putc(buf[--n]);
}

/* Set from the command line: `reboot=t` resets by triple fault (as Linux's reboot=t does), for
   VMMs without an i8042 such as QEMU's microvm (which exits on it with -no-reboot). */
static int reset_by_triple_fault;

static void __attribute__((noreturn)) triple_fault(void)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) empty = { 0, 0 };

	__asm__ volatile("lidt %0; ud2" : : "m"(empty));
	__builtin_unreachable();
}

static void __attribute__((noreturn)) reset(void)
{
	if (reset_by_triple_fault)
		triple_fault();
	outb(I8042_COMMAND, I8042_RESET);
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* ---- exceptions --------------------------------------------------------------------------- */

struct idt_gate {
	u16 offset_low;
	u16 selector;
	u8 ist;
	u8 type_attr;
	u16 offset_mid;
	u32 offset_high;
	u32 reserved;
} __attribute__((packed));

extern const u64 isr_table[32]; /* common.S */
static struct idt_gate idt[32] __attribute__((aligned(16)));

/* Called first, so that a fault prints a line instead of becoming a silent triple fault. */
void idt_init(void)
{
	struct {
		u16 limit;
		u64 base;
	} __attribute__((packed)) desc;
	u16 cs;
	int i;

	__asm__ volatile("mov %%cs, %0" : "=r"(cs));
	for (i = 0; i < 32; i++) {
		u64 h = isr_table[i];
		idt[i].offset_low = (u16)h;
		idt[i].selector = cs;
		idt[i].ist = 0;
		idt[i].type_attr = 0x8e; /* present, DPL 0, 64-bit interrupt gate */
		idt[i].offset_mid = (u16)(h >> 16);
		idt[i].offset_high = (u32)(h >> 32);
		idt[i].reserved = 0;
	}
	desc.limit = sizeof(idt) - 1;
	desc.base = (u64)idt;
	__asm__ volatile("lidt %0" : : "m"(desc));
}

void __attribute__((noreturn)) guest_exception(u64 vector, u64 rip, u64 error)
{
	u64 cr2;
	__asm__ volatile("mov %%cr2, %0" : "=r"(cr2));
	puts("GUEST EXCEPTION ");
	put_dec(vector);
	puts(" rip=");
	put_hex(rip);
	puts("\nGUEST EXCEPTION detail: error=");
	put_hex(error);
	puts(" cr2=");
	put_hex(cr2);
	putc('\n');
	reset();
}

/* ---- boot information --------------------------------------------------------------------- */

static u32 rd32(u64 addr)
{
	return *(const u32 *)addr;
}

static u64 rd64(u64 addr)
{
	return *(const u64 *)addr;
}

/*
 * Linux boot protocol: the zero page (struct boot_params): e820_entries (u8) at 0x1e8,
 * e820_table (20-byte entries) at 0x2d0, cmd_line_ptr at 0x228 (+ ext_cmd_line_ptr at 0xc8),
 * ramdisk_image/size at 0x218/0x21c (+ ext_ramdisk_image/size at 0xc0/0xc4).
 */
static void from_boot_params(u64 bp)
{
	u32 i, n = *(const u8 *)(bp + 0x1e8);
	u64 cmdline = rd32(bp + 0x228) | ((u64)rd32(bp + 0xc8) << 32);

	info.cmdline = (const char *)cmdline;
	if (n > MAX_E820)
		n = MAX_E820;
	info.n_e820 = n;
	for (i = 0; i < n; i++) {
		u64 e = bp + 0x2d0 + 20 * i;
		info.e820[i].addr = rd64(e);
		info.e820[i].size = rd64(e + 8);
		info.e820[i].type = rd32(e + 16);
	}
	info.initrd_addr = rd32(bp + 0x218) | ((u64)rd32(bp + 0xc0) << 32);
	info.initrd_size = rd32(bp + 0x21c) | ((u64)rd32(bp + 0xc4) << 32);
}

#define HVM_START_MAGIC 0x336ec578

/*
 * Xen PVH boot protocol: struct hvm_start_info {u32 magic, version, flags, nr_modules;
 * u64 modlist_paddr (0x10), cmdline_paddr (0x18), rsdp_paddr (0x20), memmap_paddr (0x28);
 * u32 memmap_entries (0x30), reserved}, memory map entries {u64 addr, size; u32 type, reserved}
 * and modules {u64 paddr, size, cmdline_paddr, reserved}; module 0 is the initrd.
 */
static int from_hvm_start_info(u64 si)
{
	u32 i, n;

	if (rd32(si) != HVM_START_MAGIC) {
		puts("pvh: bad hvm_start_info magic ");
		put_hex(rd32(si));
		putc('\n');
		return 0;
	}
	info.cmdline = (const char *)rd64(si + 0x18);
	n = rd32(si + 4) >= 1 ? rd32(si + 0x30) : 0; /* the memory map exists since version 1 */
	if (n > MAX_E820)
		n = MAX_E820;
	info.n_e820 = n;
	for (i = 0; i < n; i++) {
		u64 e = rd64(si + 0x28) + 24 * i;
		info.e820[i].addr = rd64(e);
		info.e820[i].size = rd64(e + 8);
		info.e820[i].type = rd32(e + 16);
	}
	if (rd32(si + 0xc) > 0) {
		u64 mod = rd64(si + 0x10); /* module 0 is the initrd */
		info.initrd_addr = rd64(mod);
		info.initrd_size = rd64(mod + 8);
	}
	return 1;
}

int is_printable(u8 c)
{
	return c >= 0x20 && c < 0x7f;
}

static void print_boot_info(void)
{
	u32 i;

	puts("cmdline: ");
	if (info.cmdline)
		puts(info.cmdline);
	puts("\ne820: ");
	put_dec(info.n_e820);
	putc('\n');
	for (i = 0; i < info.n_e820; i++) {
		puts("e820[");
		put_dec(i);
		puts("]: addr=");
		put_hex(info.e820[i].addr);
		puts(" size=");
		put_hex(info.e820[i].size);
		puts(" type=");
		put_dec(info.e820[i].type);
		putc('\n');
	}
	if (info.initrd_size == 0) {
		puts("initrd: none\n");
		return;
	}
	puts("initrd: addr=");
	put_hex(info.initrd_addr);
	puts(" size=");
	put_hex(info.initrd_size);
	puts(" first=");
	for (i = 0; i < 16 && i < info.initrd_size; i++) {
		u8 c = *(const u8 *)(info.initrd_addr + i);
		if (!is_printable(c))
			break;
		putc((char)c);
	}
	putc('\n');
}

/* ---- MP table ----------------------------------------------------------------------------- */

static u8 checksum(u64 addr, u32 len)
{
	u8 sum = 0;
	while (len--)
		sum += *(const u8 *)addr++;
	return sum;
}

/* Intel MP spec 1.4 section 4: the floating pointer lies on a 16-byte boundary. */
static u64 find_mp_floating(u64 start, u64 end)
{
	for (; start < end; start += 16)
		if (rd32(start) == 0x5f504d5f /* "_MP_" */ && checksum(start, 16) == 0)
			return start;
	return 0;
}

static void parse_mp_table(void)
{
	u64 fp, cfg, p;
	u32 i, entries;

	fp = find_mp_floating(0x9fc00, 0xa0000);
	if (!fp)
		fp = find_mp_floating(0xf0000, 0x100000);
	if (!fp)
		return;
	mp.found = 1;
	cfg = rd32(fp + 4);
	if (cfg == 0 || rd32(cfg) != 0x504d4350 /* "PCMP" */) {
		mp.error = "no PCMP configuration table";
		return;
	}
	if (checksum(cfg, *(const u16 *)(cfg + 4)) != 0) {
		mp.error = "bad PCMP checksum";
		return;
	}
	entries = *(const u16 *)(cfg + 0x22);
	p = cfg + 0x2c;
	for (i = 0; i < entries; i++) {
		u8 type = *(const u8 *)p;
		switch (type) {
		case 0: /* processor */
			if ((*(const u8 *)(p + 3) & 1) && mp.cpus < MAX_CPUS) {
				if (*(const u8 *)(p + 3) & 2)
					mp.bsp_index = mp.cpus;
				mp.apic_ids[mp.cpus++] = *(const u8 *)(p + 1);
			}
			p += 20;
			break;
		case 2: /* I/O APIC */
			if (mp.ioapic_addr == 0) {
				mp.ioapic_id = *(const u8 *)(p + 1);
				mp.ioapic_addr = rd32(p + 4);
			}
			p += 8;
			break;
		case 3: /* I/O interrupt assignment */
			mp.irq_entries++;
			p += 8;
			break;
		case 1: /* bus */
		case 4: /* local interrupt assignment */
			p += 8;
			break;
		default:
			mp.error = "unknown entry type";
			return;
		}
	}
}

static void print_mp_table(void)
{
	u32 i;

	if (!mp.found) {
		puts("mptable: none\n");
		return;
	}
	if (mp.error) {
		puts("mptable: error ");
		puts(mp.error);
		putc('\n');
		return;
	}
	puts("mptable: cpus=");
	put_dec(mp.cpus);
	puts(" apic_ids=");
	for (i = 0; i < mp.cpus; i++) {
		if (i)
			putc(',');
		put_dec(mp.apic_ids[i]);
	}
	puts(" ioapic_id=");
	put_dec(mp.ioapic_id);
	puts(" ioapic_addr=");
	put_hex(mp.ioapic_addr);
	puts(" irq_entries=");
	put_dec(mp.irq_entries);
	putc('\n');
}

/* ---- actions ------------------------------------------------------------------------------ */

extern const u8 ap_trampoline_start[], ap_trampoline_end[], ap_trampoline_flag[]; /* common.S */

static void lapic_write(u32 reg, u32 val)
{
	mmio_write32(LAPIC_BASE + reg, val);
}

static u32 lapic_read(u32 reg)
{
	return mmio_read32(LAPIC_BASE + reg);
}

/* Waits a little (each poll is a port exit) and for the ICR's delivery status to clear. */
static void ipi_settle(void)
{
	int i;
	for (i = 0; i < IPI_DELAY_POLLS; i++)
		(void)inb(UART_LSR);
	for (i = 0; i < IPI_DELAY_POLLS && (lapic_read(LAPIC_ICR_LOW) & ICR_BUSY); i++)
		;
}

static void send_ipi(u32 apic_id, u32 icr)
{
	lapic_write(LAPIC_ICR_HIGH, apic_id << 24);
	lapic_write(LAPIC_ICR_LOW, icr);
	ipi_settle();
}

/* The AP's APIC id: the first enabled processor of the MP table that is not the BSP. */
static u32 first_ap_apic_id(void)
{
	u32 i, self = lapic_read(LAPIC_ID) >> 24;
	for (i = 0; i < mp.cpus; i++)
		if (mp.apic_ids[i] != self)
			return mp.apic_ids[i];
	return 1;
}

/* Starts the first AP with the trampoline in `mode` (0: it halts, 1: it counts); returns the
   trampoline's flag word (flag, count, mode follow each other). */
static volatile u32 *start_ap(u32 mode)
{
	u64 len = (u64)(ap_trampoline_end - ap_trampoline_start);
	volatile u32 *flag =
		(volatile u32 *)(AP_TRAMPOLINE + (u64)(ap_trampoline_flag - ap_trampoline_start));
	u32 ap = first_ap_apic_id();
	int i;

	memcpy((void *)AP_TRAMPOLINE, ap_trampoline_start, len);
	flag[0] = 0;
	flag[1] = 0;
	flag[2] = mode;
	lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100); /* software-enable the LAPIC */
	send_ipi(ap, ICR_INIT | ICR_LEVEL_ASSERT | ICR_TRIGGER_LEVEL);
	send_ipi(ap, ICR_INIT | ICR_TRIGGER_LEVEL);
	send_ipi(ap, ICR_STARTUP | (AP_TRAMPOLINE >> 12));
	send_ipi(ap, ICR_STARTUP | (AP_TRAMPOLINE >> 12));
	for (i = 0; i < SMP_POLLS && *flag == 0; i++)
		(void)inb(UART_LSR);
	return flag;
}

/* `nimbus.test=count`: prints `count: N` for N = 1, 2, ... for ever, `nimbus.countpause=P`
   pause instructions apart (default 50000). With `nimbus.countap=1` (and -smp 2) the first AP
   counts too and each line ends with ` ap=<its count>`. A snapshot taken mid-count and
   restored goes on from where it was. */
static void __attribute__((noreturn)) action_count(void)
{
	u64 pause = cmdline_number(info.cmdline, "nimbus.countpause=", 50000);
	u64 with_ap = cmdline_number(info.cmdline, "nimbus.countap=", 0);
	volatile u32 *flag = 0;
	u64 n, j;

	if (with_ap) {
		flag = start_ap(1);
		puts(*flag ? "count: ap counting\n" : "count: ap timeout\n");
	}
	for (n = 1;; n++) {
		puts("count: ");
		put_dec(n);
		if (flag) {
			puts(" ap=");
			put_dec(flag[1]);
		}
		putc('\n');
		for (j = 0; j < pause; j++)
			__asm__ volatile("pause");
	}
}

static void action_smp(void)
{
	u64 len = (u64)(ap_trampoline_end - ap_trampoline_start);
	volatile u32 *flag =
		(volatile u32 *)(AP_TRAMPOLINE + (u64)(ap_trampoline_flag - ap_trampoline_start));
	u32 ap = first_ap_apic_id();
	int i;

	memcpy((void *)AP_TRAMPOLINE, ap_trampoline_start, len);
	*flag = 0;
	lapic_write(LAPIC_SVR, lapic_read(LAPIC_SVR) | 0x100); /* software-enable the LAPIC */
	send_ipi(ap, ICR_INIT | ICR_LEVEL_ASSERT | ICR_TRIGGER_LEVEL);
	send_ipi(ap, ICR_INIT | ICR_TRIGGER_LEVEL);
	send_ipi(ap, ICR_STARTUP | (AP_TRAMPOLINE >> 12));
	send_ipi(ap, ICR_STARTUP | (AP_TRAMPOLINE >> 12));
	for (i = 0; i < SMP_POLLS && *flag == 0; i++)
		(void)inb(UART_LSR);
	puts(*flag ? "smp: ap started\n" : "smp: ap timeout\n");
}

static void action_popcnt(void)
{
	u64 in = 0xf0f0, out;
	/* popcnt %rdi, %rax, spelled out so that the rest of the guest stays popcnt-free. */
	__asm__ volatile(".byte 0xf3, 0x48, 0x0f, 0xb8, 0xc7" : "=a"(out) : "D"(in));
	(void)out;
	puts("popcnt: survived\n");
}

static void __attribute__((noreturn)) action_triple(void)
{
	puts("triple: now\n");
	triple_fault();
}

static void action_echo(void)
{
	char line[LINE_MAX + 1];
	u32 n = 0, polls = 0;

	puts("echo: ready\n");
	for (;;) {
		u8 c;
		if (!(inb(UART_LSR) & LSR_DATA_READY)) {
			if (++polls == ECHO_POLLS) {
				puts("echo: timeout\n");
				return;
			}
			continue;
		}
		polls = 0;
		c = inb(UART_THR);
		if (c == '\n' || n == LINE_MAX)
			break;
		line[n++] = (char)c;
	}
	line[n] = 0;
	puts("echo: ");
	puts(line);
	putc('\n');
}

static void action_ud2(void)
{
	puts("ud2: now\n");
	__asm__ volatile("ud2");
}

static void __attribute__((noreturn)) action_hang(void)
{
	puts("hang: now\n");
	for (;;)
		__asm__ volatile("cli; hlt");
}

/* ---- virtio-blk, polled ------------------------------------------------------------------- */

#define VQ_SIZE 8
/* Queue and buffers at a fixed spot of RAM that no boot structure or guest image uses. */
#define BLK_AREA 0x400000UL
#define BLK_DESC (BLK_AREA)
#define BLK_AVAIL (BLK_AREA + 0x100)
#define BLK_USED (BLK_AREA + 0x1000)
#define BLK_HDR (BLK_AREA + 0x2000)
#define BLK_STATUS (BLK_AREA + 0x2100)
#define BLK_DATA (BLK_AREA + 0x3000)
#define BLK_DATA_LEN 1024
#define BLK_BENCH_MAX 0x20000 /* largest blkbench request: BLK_DATA up to 0x423000 */
#define BLK_POLLS 100000
#define BLK_T_IN 0
#define BLK_T_OUT 1
#define BLK_T_FLUSH 4
#define BLK_T_GET_ID 8
#define BLK_TIMEOUT 0x100

u64 vdev_base; /* the virtio-mmio device being driven */
static u16 blk_avail_idx;
static u32 blk_isr;
static u32 blk_polls = BLK_POLLS; /* polls of the used index before a request times out */

u32 vr(u32 off)
{
	return mmio_read32(vdev_base + off);
}

void vw(u32 off, u32 val)
{
	mmio_write32(vdev_base + off, val);
}

static int hex_digit(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	return -1;
}

/* The base of the first `virtio_mmio.device=<size>@0x<base>:<irq>` of the command line. */
static u64 find_virtio_mmio(const char *p)
{
	static const char key[] = "virtio_mmio.device=";
	u64 base = 0;
	int d;

	while (p && *p && !starts_with(p, key))
		p++;
	if (!p || !*p)
		return 0;
	while (*p && *p != '@' && *p != ' ')
		p++;
	if (!starts_with(p, "@0x"))
		return 0;
	for (p += 3; (d = hex_digit(*p)) >= 0; p++)
		base = base << 4 | (u64)d;
	return base;
}

static void vq_desc(u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
	volatile struct vq_desc *d = (volatile struct vq_desc *)BLK_DESC + i;
	d->addr = addr;
	d->len = len;
	d->flags = flags;
	d->next = next;
}

/* One request: header, `len` data bytes at BLK_DATA (written by the device if `device_writes`),
   status. Returns the status byte, or BLK_TIMEOUT if the device never used the chain. */
static u32 blk_request(u32 type, u64 sector, u32 len, int device_writes)
{
	volatile u32 *hdr = (volatile u32 *)BLK_HDR;
	volatile u16 *avail = (volatile u16 *)BLK_AVAIL;
	volatile u16 *used_idx = (volatile u16 *)(BLK_USED + 2);
	u16 before = *used_idx, status_desc = len ? 2 : 1;
	u32 polls = 0;

	hdr[0] = type;
	hdr[1] = 0;
	hdr[2] = (u32)sector;
	hdr[3] = (u32)(sector >> 32);
	*(volatile u8 *)BLK_STATUS = 0xff;
	vq_desc(0, BLK_HDR, 16, VQ_F_NEXT, 1);
	if (len)
		vq_desc(1, BLK_DATA, len, VQ_F_NEXT | (device_writes ? VQ_F_WRITE : 0), 2);
	vq_desc(status_desc, BLK_STATUS, 1, VQ_F_WRITE, 0);
	avail[2 + blk_avail_idx % VQ_SIZE] = 0;
	__asm__ volatile("" ::: "memory");
	avail[1] = ++blk_avail_idx;
	__asm__ volatile("" ::: "memory");
	vw(0x50, 0);
	while (*used_idx == before)
		if (++polls == blk_polls)
			return BLK_TIMEOUT;
	blk_isr = vr(0x60);
	vw(0x64, blk_isr);
	return *(volatile u8 *)BLK_STATUS;
}

static void blk_print_text(const char *what, u32 status, u32 max)
{
	const u8 *data = (const u8 *)BLK_DATA;
	u32 i;

	puts("blk: ");
	puts(what);
	puts(" status=");
	put_dec(status);
	puts(" text=");
	for (i = 0; i < max && is_printable(data[i]); i++)
		putc((char)data[i]);
	putc('\n');
}

/* Linux's virtio_mmio probe up to FEATURES_OK, accepting VIRTIO_F_VERSION_1 and the device
   features of `want` (bits 0-31) it offers. Returns 0 on success, -1 if FEATURES_OK did not stick. */
int virtio_negotiate(u32 want, u32 *offered)
{
	u32 high;

	vw(0x70, 0);
	vw(0x70, 1);
	vw(0x70, 3);
	vw(0x14, 1);
	high = vr(0x10);
	vw(0x14, 0);
	*offered = vr(0x10);
	vw(0x24, 1);
	vw(0x20, high & 1); /* VIRTIO_F_VERSION_1 */
	vw(0x24, 0);
	vw(0x20, *offered & want);
	vw(0x70, 0xb);
	return (vr(0x70) & 8) ? 0 : -1;
}

/* Sets up queue `index` with `size` entries over zeroed rings. Returns 0, or -1 if the device
   has no such queue, a smaller one, or one already live. */
int virtio_queue_sized(u32 index, u32 size, u64 desc, u64 avail, u64 used)
{
	vw(0x30, index);
	if (vr(0x44) || vr(0x34) < size)
		return -1;
	*(volatile u32 *)avail = 0;
	*(volatile u32 *)used = 0;
	vw(0x38, size);
	vw(0x80, (u32)desc);
	vw(0x84, 0);
	vw(0x90, (u32)avail);
	vw(0x94, 0);
	vw(0xa0, (u32)used);
	vw(0xa4, 0);
	vw(0x44, 1);
	return 0;
}

/* A queue of VQ_SIZE entries, as virtio_queue_sized. */
static int virtio_queue(u32 index, u64 desc, u64 avail, u64 used)
{
	return virtio_queue_sized(index, VQ_SIZE, desc, avail, used);
}

/* Linux's virtio_mmio probe (VERSION_1 and FLUSH only), then one queue of VQ_SIZE entries.
   Returns 0 on success. */
static int blk_probe(void)
{
	u32 low;

	if (virtio_negotiate(1 << 9 /* VIRTIO_BLK_F_FLUSH */, &low)) {
		puts("blk: features refused\n");
		return -1;
	}
	blk_avail_idx = 0;
	if (virtio_queue(0, BLK_DESC, BLK_AVAIL, BLK_USED)) {
		puts("blk: queue unavailable\n");
		return -1;
	}
	vw(0x70, 0xf);
	puts("blk: status=");
	put_hex(vr(0x70));
	puts(" flush=");
	put_dec((low >> 9) & 1);
	putc('\n');
	return vr(0x70) == 0xf ? 0 : -1;
}

static void action_blk(void)
{
	u8 *data = (u8 *)BLK_DATA;
	u64 capacity;
	u32 status, i;

	vdev_base = find_virtio_mmio(info.cmdline);
	if (!vdev_base || vr(0) != VIRTIO_MAGIC || vr(4) != 2 || vr(8) != 2) {
		puts("blk: no device\n");
		return;
	}
	if (blk_probe())
		return;
	capacity = vr(0x100) | (u64)vr(0x104) << 32;
	puts("blk: capacity=");
	put_dec(capacity);
	putc('\n');
	blk_print_text("id", blk_request(BLK_T_GET_ID, 0, 20, 1), 20);
	puts("blk: interrupt status=");
	put_dec(blk_isr);
	putc('\n');
	blk_print_text("marker", blk_request(BLK_T_IN, 0, 512, 1), 32);
	for (i = 0; i < BLK_DATA_LEN; i++)
		data[i] = (u8)(i * 7 + 3);
	puts("blk: write status=");
	put_dec(blk_request(BLK_T_OUT, 2, BLK_DATA_LEN, 0));
	puts("\nblk: flush status=");
	put_dec(blk_request(BLK_T_FLUSH, 0, 0, 0));
	putc('\n');
	memset(data, 0, BLK_DATA_LEN);
	status = blk_request(BLK_T_IN, 2, BLK_DATA_LEN, 1);
	for (i = 0; i < BLK_DATA_LEN && data[i] == (u8)(i * 7 + 3); i++)
		;
	puts("blk: read status=");
	put_dec(status);
	puts(i == BLK_DATA_LEN ? " same\n" : " different\n");
	puts("blk: beyond-end status=");
	put_dec(blk_request(BLK_T_IN, capacity, 512, 1));
	vw(0x70, 0);
	puts("\nblk: reset status=");
	put_dec(vr(0x70));
	putc('\n');
}

/* The decimal value of `<key><digits>` on the command line, or `fallback`. */
u64 cmdline_number(const char *p, const char *key, u64 fallback)
{
	u64 n = 0;
	u64 klen = 0;

	while (key[klen])
		klen++;
	while (p && *p && !starts_with(p, key))
		p++;
	if (!p || !*p)
		return fallback;
	for (p += klen; *p >= '0' && *p <= '9'; p++)
		n = n * 10 + (u64)(*p - '0');
	return n ? n : fallback;
}

static void blkbench_deep(u64 n, u64 bytes, u64 write, u64 seq);

/* `nimbus.test=blkbench`: `nimbus.blkreads=N` (default 2000) requests of `nimbus.blkbytes=B`
   bytes (default 4096; a multiple of 512, at most 128 KiB), one at a time, polled: reads, or
   writes with `nimbus.blkwrite=1`, at pseudo-random B-aligned offsets, or in order from sector 0
   (wrapping at the end) with `nimbus.blkseq=1`. The host times the lines around them:
   `blkbench: start`, then `blkbench: reads=N errors=E` (or `writes=`).
   `nimbus.blkdepth=D` (1-8), `nimbus.blkqueues=Q` (1-2) or `nimbus.blkindirect=1` switch to
   the driver of `blkmq`: up to D requests in flight on each of Q queues (D at most 2 without
   indirect tables), B at most 4 KiB. */
static void action_blkbench(void)
{
	u64 n = cmdline_number(info.cmdline, "nimbus.blkreads=", 2000);
	u64 bytes = cmdline_number(info.cmdline, "nimbus.blkbytes=", 4096);
	u64 write = cmdline_number(info.cmdline, "nimbus.blkwrite=", 0);
	u64 seq = cmdline_number(info.cmdline, "nimbus.blkseq=", 0);
	u64 capacity, blocks, block, i, errors = 0, x = 12345;

	if (bytes % 512 || bytes > BLK_BENCH_MAX)
		bytes = 4096;
	vdev_base = find_virtio_mmio(info.cmdline);
	if (!vdev_base || vr(0) != VIRTIO_MAGIC || vr(4) != 2 || vr(8) != 2) {
		puts("blkbench: no device\n");
		return;
	}
	if (cmdline_number(info.cmdline, "nimbus.blkdepth=", 1) > 1 ||
	    cmdline_number(info.cmdline, "nimbus.blkqueues=", 1) > 1 ||
	    has_token(info.cmdline, "nimbus.blkindirect=1")) {
		blkbench_deep(n, bytes, write, seq);
		return;
	}
	if (blk_probe())
		return;
	capacity = vr(0x100) | (u64)vr(0x104) << 32;
	blocks = capacity / (bytes / 512);
	if (!blocks) {
		puts("blkbench: disk smaller than one request\n");
		return;
	}
	puts("blkbench: start\n");
	for (i = 0; i < n; i++) {
		if (seq) {
			block = i % blocks;
		} else {
			x = x * 6364136223846793005ULL + 1442695040888963407ULL;
			block = (x >> 33) % blocks;
		}
		if (blk_request(write ? BLK_T_OUT : BLK_T_IN, block * (bytes / 512), (u32)bytes,
				!write) != 0)
			errors++;
	}
	puts(write ? "blkbench: writes=" : "blkbench: reads=");
	put_dec(n);
	puts(" errors=");
	put_dec(errors);
	putc('\n');
}

/* ---- virtio-blk with indirect tables, two queues, several requests in flight ------------- */

#define BLKQ_AREA 0x440000UL
#define BLKQ_MAX 2 /* queues */
#define BLKQ_DEPTH VQ_SIZE /* requests in flight per queue (one descriptor each if indirect) */
#define BLKQ_DESC(q) (BLKQ_AREA + (u64)(q) * 0x2000)
#define BLKQ_AVAIL(q) (BLKQ_DESC(q) + 0x100)
#define BLKQ_USED(q) (BLKQ_DESC(q) + 0x1000)
/* Slot s of queue q: its indirect table (3 entries), header at +0x40, status at +0x50. */
#define BLKQ_SLOT(q, s) (BLKQ_AREA + 0x4000 + ((u64)(q) * BLKQ_DEPTH + (s)) * 0x80)
#define BLKQ_DATA(q, s) (BLKQ_AREA + 0x8000 + ((u64)(q) * BLKQ_DEPTH + (s)) * 0x1000)
#define VQ_F_INDIRECT 4
#define BLK_F_MQ (1u << 12)
#define RING_F_INDIRECT (1u << 28)

static u16 blkq_avail[BLKQ_MAX], blkq_seen[BLKQ_MAX];

static void desc_at(u64 table, u16 i, u64 addr, u32 len, u16 flags, u16 next)
{
	volatile struct vq_desc *d = (volatile struct vq_desc *)table + i;
	d->addr = addr;
	d->len = len;
	d->flags = flags;
	d->next = next;
}

/* Probe taking FLUSH, INDIRECT_DESC if `indirect`, MQ if `queues` > 1, then `queues` queues.
   Returns 0, or -1 (with a line saying why). */
static int blkq_probe(u32 queues, u32 indirect)
{
	u32 want = (1u << 9) | (indirect ? RING_F_INDIRECT : 0) | (queues > 1 ? BLK_F_MQ : 0);
	u32 low, q;

	if (virtio_negotiate(want, &low) || (low & want) != want) {
		puts("blkq: features refused\n");
		return -1;
	}
	if (queues > 1 && (vr(0x120) >> 16) < queues) {
		puts("blkq: too few queues\n");
		return -1;
	}
	for (q = 0; q < queues; q++) {
		blkq_avail[q] = blkq_seen[q] = 0;
		if (virtio_queue(q, BLKQ_DESC(q), BLKQ_AVAIL(q), BLKQ_USED(q))) {
			puts("blkq: queue unavailable\n");
			return -1;
		}
	}
	vw(0x70, 0xf);
	return vr(0x70) == 0xf ? 0 : -1;
}

/* Makes request slot `s` of queue `q` available (header, `len` bytes at its data buffer,
   status), through an indirect table or, without, ring descriptors 3s..3s+2; the caller
   notifies. */
static void blkq_post(u32 q, u32 s, u32 type, u64 sector, u32 len, u32 indirect)
{
	u64 slot = BLKQ_SLOT(q, s), table = indirect ? slot : BLKQ_DESC(q);
	u16 base = indirect ? 0 : (u16)(3 * s), head = indirect ? (u16)s : base;
	volatile u32 *hdr = (volatile u32 *)(slot + 0x40);
	volatile u16 *avail = (volatile u16 *)BLKQ_AVAIL(q);
	u16 w = type == BLK_T_IN ? VQ_F_WRITE : 0;

	hdr[0] = type;
	hdr[1] = 0;
	hdr[2] = (u32)sector;
	hdr[3] = (u32)(sector >> 32);
	*(volatile u8 *)(slot + 0x50) = 0xff;
	desc_at(table, base, slot + 0x40, 16, VQ_F_NEXT, base + 1);
	desc_at(table, base + 1, BLKQ_DATA(q, s), len, VQ_F_NEXT | w, base + 2);
	desc_at(table, base + 2, slot + 0x50, 1, VQ_F_WRITE, 0);
	if (indirect)
		desc_at(BLKQ_DESC(q), head, table, 48, VQ_F_INDIRECT, 0);
	avail[2 + blkq_avail[q] % VQ_SIZE] = head;
	__asm__ volatile("" ::: "memory");
	avail[1] = ++blkq_avail[q];
	__asm__ volatile("" ::: "memory");
}

/* The next used slot of queue `q` (its status in *status), or -1 if none is new. */
static int blkq_reap(u32 q, u32 indirect, u32 *status)
{
	volatile u16 *used = (volatile u16 *)BLKQ_USED(q);
	u32 id, s;

	if (used[1] == blkq_seen[q])
		return -1;
	id = *(volatile u32 *)(BLKQ_USED(q) + 4 + 8 * (u64)(blkq_seen[q] % VQ_SIZE));
	blkq_seen[q]++;
	s = indirect ? id : id / 3;
	*status = *(volatile u8 *)(BLKQ_SLOT(q, s) + 0x50);
	return (int)s;
}

/* One request on slot 0 of queue `q`, waited for. Returns its status or BLK_TIMEOUT. */
static u32 blkq_one(u32 q, u32 type, u64 sector, u32 len, u32 indirect)
{
	u32 polls = 0, status;

	blkq_post(q, 0, type, sector, len, indirect);
	vw(0x50, q);
	while (blkq_reap(q, indirect, &status) < 0)
		if (++polls == blk_polls)
			return BLK_TIMEOUT;
	vw(0x64, vr(0x60));
	return status;
}

/* FNV-1a of `len` bytes: the host checks reads byte for byte with it. */
static u32 fnv1a(const volatile u8 *p, u32 len)
{
	u32 h = 2166136261u, i;

	for (i = 0; i < len; i++)
		h = (h ^ p[i]) * 16777619u;
	return h;
}

/* blkbench with up to `nimbus.blkdepth=` requests in flight on each of `nimbus.blkqueues=`
   queues, through indirect tables with `nimbus.blkindirect=1`. */
static void blkbench_deep(u64 n, u64 bytes, u64 write, u64 seq)
{
	u32 depth = (u32)cmdline_number(info.cmdline, "nimbus.blkdepth=", 1);
	u32 queues = (u32)cmdline_number(info.cmdline, "nimbus.blkqueues=", 1);
	u32 indirect = has_token(info.cmdline, "nimbus.blkindirect=1");
	u64 capacity, blocks, block, posted = 0, done = 0, errors = 0, x = 12345, polls = 0;
	u32 busy[BLKQ_MAX] = { 0 }, q, s, status;
	int got;

	if (bytes > 4096)
		bytes = 4096;
	if (queues > BLKQ_MAX)
		queues = BLKQ_MAX;
	if (depth > (indirect ? BLKQ_DEPTH : BLKQ_DEPTH / 3))
		depth = indirect ? BLKQ_DEPTH : BLKQ_DEPTH / 3;
	if (blkq_probe(queues, indirect))
		return;
	capacity = vr(0x100) | (u64)vr(0x104) << 32;
	blocks = capacity / (bytes / 512);
	if (!blocks) {
		puts("blkbench: disk smaller than one request\n");
		return;
	}
	puts("blkbench: start\n");
	while (done < n) {
		for (q = 0; q < queues; q++) {
			int kicked = 0;
			for (s = 0; s < depth && posted < n; s++) {
				if (busy[q] & (1u << s))
					continue;
				if (seq) {
					block = posted % blocks;
				} else {
					x = x * 6364136223846793005ULL + 1442695040888963407ULL;
					block = (x >> 33) % blocks;
				}
				blkq_post(q, s, write ? BLK_T_OUT : BLK_T_IN, block * (bytes / 512),
					  (u32)bytes, indirect);
				busy[q] |= 1u << s;
				posted++;
				kicked = 1;
			}
			if (kicked)
				vw(0x50, q);
		}
		got = 0;
		for (q = 0; q < queues; q++) {
			int slot;
			while ((slot = blkq_reap(q, indirect, &status)) >= 0) {
				busy[q] &= ~(1u << slot);
				errors += status != 0;
				done++;
				got = 1;
			}
		}
		if (got) {
			polls = 0;
			vw(0x64, vr(0x60));
		} else if (++polls == blk_polls) {
			errors += n - done;
			break;
		}
	}
	puts(write ? "blkbench: writes=" : "blkbench: reads=");
	put_dec(n);
	puts(" errors=");
	put_dec(errors);
	putc('\n');
}

/* `nimbus.test=blkmq`: `nimbus.blkqueues=Q` (1 or 2, default 2) queues, indirect tables unless
   `nimbus.blkindirect=0`. On each queue q: reads 4 KiB at sector 8 * (q + 1) and prints
   `blkmq: q<q> read status=S sum=0x<FNV-1a>`, then writes 512 bytes of (i * 3 + q) & 0xff at
   sector 100 + q (`blkmq: q<q> write status=S`). With `nimbus.blkhostile=1` it then posts a
   looping indirect table on queue 0 and prints `blkmq: hostile used=U status=S device=0x..`
   (status 255: nothing written) and waits (`nimbus.test=hang` after it keeps the VM up). */
static void action_blkmq(void)
{
	u32 queues = (u32)cmdline_number(info.cmdline, "nimbus.blkqueues=", 2);
	u32 indirect = !has_token(info.cmdline, "nimbus.blkindirect=0");
	u32 q, i, status;
	volatile u8 *data;

	vdev_base = find_virtio_mmio(info.cmdline);
	if (!vdev_base || vr(0) != VIRTIO_MAGIC || vr(8) != 2 || queues > BLKQ_MAX ||
	    blkq_probe(queues, indirect)) {
		puts("blkmq: no device\n");
		return;
	}
	puts("blkmq: queues=");
	put_dec(queues);
	puts(" indirect=");
	put_dec(indirect);
	putc('\n');
	for (q = 0; q < queues; q++) {
		data = (volatile u8 *)BLKQ_DATA(q, 0);
		status = blkq_one(q, BLK_T_IN, 8 * (q + 1), 4096, indirect);
		puts("blkmq: q");
		put_dec(q);
		puts(" read status=");
		put_dec(status);
		puts(" sum=");
		put_hex(fnv1a(data, 4096));
		putc('\n');
		for (i = 0; i < 512; i++)
			data[i] = (u8)(i * 3 + q);
		puts("blkmq: q");
		put_dec(q);
		puts(" write status=");
		put_dec(blkq_one(q, BLK_T_OUT, 100 + q, 512, indirect));
		putc('\n');
	}
	if (cmdline_number(info.cmdline, "nimbus.blkhostile=", 0)) {
		u64 slot = BLKQ_SLOT(0, 0);
		volatile u16 *used = (volatile u16 *)BLKQ_USED(0);
		u32 polls = 0;

		blkq_post(0, 0, BLK_T_IN, 0, 512, 1);
		desc_at(slot, 2, slot + 0x50, 1, VQ_F_WRITE | VQ_F_NEXT, 0); /* 2 -> 0: a loop */
		vw(0x50, 0);
		while (used[1] == blkq_seen[0] && ++polls < blk_polls)
			;
		puts("blkmq: hostile used=");
		put_dec(used[1] - blkq_seen[0]);
		puts(" status=");
		put_dec(*(volatile u8 *)(slot + 0x50));
		puts(" device=");
		put_hex(vr(0x70));
		putc('\n');
	}
}

/* `nimbus.test=exits`: `nimbus.exits=N` (default 100000) iterations of an empty loop, then of
   `outb` to the POST port 0x80 (a port exit each, ignored by both VMMs), then, if the command
   line names a virtio-mmio device, of a 32-bit read of its MagicValue (an MMIO exit each). The
   host times the lines between the phases; the empty loop is the emulation cost of the loop
   itself on hosts that emulate guest instructions. */
static void action_exits(void)
{
	u64 n = cmdline_number(info.cmdline, "nimbus.exits=", 100000), i;

	puts("exits: loop start\n");
	for (i = 0; i < n; i++)
		__asm__ volatile("" ::: "memory");
	puts("exits: pio start\n");
	for (i = 0; i < n; i++)
		outb(0x80, 0);
	puts("exits: pio done\n");
	vdev_base = find_virtio_mmio(info.cmdline);
	if (vdev_base) {
		puts("exits: mmio start\n");
		for (i = 0; i < n; i++)
			(void)vr(0);
		puts("exits: mmio done\n");
	}
	puts("exits: n=");
	put_dec(n);
	putc('\n');
}

/* The base of the `n`th (from 0) `virtio_mmio.device=` of the command line, or 0. */
u64 find_virtio_mmio_nth(const char *p, u64 n)
{
	static const char key[] = "virtio_mmio.device=";

	while (p && *p) {
		if (!starts_with(p, key)) {
			p++;
			continue;
		}
		if (!n)
			return find_virtio_mmio(p);
		n--;
		p += sizeof(key) - 1;
	}
	return 0;
}

/* `nimbus.test=blkwatch`: drives the block device of virtio-mmio slot `nimbus.blkslot=N`
   (N >= 1, default 1: the second device, QMP's addr "0x1") and reports its capacity each time
   it changes as QMP device_add / device_del swap the medium behind it, with " config-change"
   when the configuration-change interrupt bit was set, then reads sector 0. Returns after
   `nimbus.blkchanges=N` changes (default 2). */
static void action_blkwatch(void)
{
	u64 changes = cmdline_number(info.cmdline, "nimbus.blkchanges=", 2);
	u64 slot = cmdline_number(info.cmdline, "nimbus.blkslot=", 1);
	u64 seen, capacity;
	u32 isr, i;

	vdev_base = find_virtio_mmio_nth(info.cmdline, slot);
	if (!vdev_base || vr(0) != VIRTIO_MAGIC || vr(4) != 2 || vr(8) != 2) {
		puts("blkwatch: no device\n");
		return;
	}
	if (blk_probe())
		return;
	seen = vr(0x100) | (u64)vr(0x104) << 32;
	puts("blkwatch: capacity=");
	put_dec(seen);
	putc('\n');
	while (changes) {
		capacity = vr(0x100) | (u64)vr(0x104) << 32;
		if (capacity == seen) {
			for (i = 0; i < 20000; i++)
				__asm__ volatile("pause");
			continue;
		}
		/* The host writes the capacity, then raises the interrupt, under one lock that the
		   configuration read above waited for: the status bit is set by now. */
		isr = vr(0x60);
		vw(0x64, isr);
		seen = capacity;
		changes--;
		puts("blkwatch: capacity=");
		put_dec(capacity);
		puts(isr & 2 ? " config-change\n" : "\n");
		memset((u8 *)BLK_DATA, 0, 512);
		blk_print_text("marker", blk_request(BLK_T_IN, 0, 512, 1), 32);
	}
}

/* `nimbus.test=blkloop`: `nimbus.blkwrites=N` (default 40) writes, one at a time, to the block
   device of virtio-mmio slot `nimbus.blkslot=N` (default 0): write i fills `nimbus.blkbytes=B`
   bytes (default 512, a multiple of 512, at most 128 KiB) at sector 8 + i * `nimbus.blkstride=`
   (default 1) with the byte i + 1 and prints `blkloop: write <i> status=<S>` (256: no answer
   within `nimbus.blkpolls=` polls, default 20 times blk's), then pauses (`nimbus.blkpause=`
   pause instructions, default 20000) so that the host can act between requests.
   `nimbus.blkretry=R` repeats a failed write up to R times (each attempt printed);
   `nimbus.blkflush=1` flushes after each successful write, printing `blkloop: flush <i>
   status=<S>` once the flush is acknowledged; `nimbus.blkread=1` reads instead, printing
   `blkloop: read <i> status=<S> byte=<b>` (b: the byte the whole request holds, or `mixed`).
   Ends with `blkloop: done writes=N errors=E status=0x..` (the device status register). */
static u32 blkloop_one(u64 i, u64 sector, u32 bytes, int read)
{
	u8 *data = (u8 *)BLK_DATA;
	u32 status, k;

	memset(data, read ? 0 : (int)(u8)(i + 1), bytes);
	status = blk_request(read ? BLK_T_IN : BLK_T_OUT, sector, bytes, read);
	puts(read ? "blkloop: read " : "blkloop: write ");
	put_dec(i);
	puts(" status=");
	put_dec(status);
	if (read) {
		for (k = 1; k < bytes && data[k] == data[0]; k++)
			;
		puts(" byte=");
		if (k == bytes)
			put_dec(data[0]);
		else
			puts("mixed");
	}
	putc('\n');
	return status;
}

static void action_blkloop(void)
{
	const char *cmd = info.cmdline;
	u64 writes = cmdline_number(cmd, "nimbus.blkwrites=", 40);
	u64 slot = cmdline_number(cmd, "nimbus.blkslot=", 0);
	u64 pause = cmdline_number(cmd, "nimbus.blkpause=", 20000);
	u64 bytes = cmdline_number(cmd, "nimbus.blkbytes=", 512);
	u64 stride = cmdline_number(cmd, "nimbus.blkstride=", 1);
	u64 retries = cmdline_number(cmd, "nimbus.blkretry=", 0);
	int flush = has_token(cmd, "nimbus.blkflush=1");
	int read = has_token(cmd, "nimbus.blkread=1");
	u64 i, j, tries, errors = 0;
	u32 status;

	blk_polls = (u32)cmdline_number(cmd, "nimbus.blkpolls=", 20 * BLK_POLLS);
	if (bytes % 512 || bytes > BLK_BENCH_MAX)
		bytes = 512;
	vdev_base = find_virtio_mmio_nth(cmd, slot);
	if (!vdev_base || vr(0) != VIRTIO_MAGIC || vr(4) != 2 || vr(8) != 2) {
		puts("blkloop: no device\n");
		return;
	}
	if (blk_probe())
		return;
	for (i = 0; i < writes; i++) {
		tries = 0;
		do {
			status = blkloop_one(i, 8 + i * stride, (u32)bytes, read);
			for (j = 0; j < pause; j++)
				__asm__ volatile("pause");
		} while (status && tries++ < retries);
		if (status)
			errors++;
		if (flush && !status) {
			puts("blkloop: flush ");
			put_dec(i);
			puts(" status=");
			put_dec(blk_request(BLK_T_FLUSH, 0, 0, 0));
			putc('\n');
		}
	}
	puts("blkloop: done writes=");
	put_dec(writes);
	puts(" errors=");
	put_dec(errors);
	puts(" status=");
	put_hex(vr(0x70));
	putc('\n');
}

/* ---- virtio-net, polled ------------------------------------------------------------------- */

#define VIRTIO_MMIO_BASE 0xd0000000UL
#define VIRTIO_MMIO_SLOTS 8
#define VIRTIO_ID_NET 1
#define NET_F_MAC (1 << 5)
#define NET_HDR_LEN 12 /* virtio_net_hdr with num_buffers: VERSION_1, no MRG_RXBUF */
#define NET_AREA 0x500000UL
#define NET_RX_DESC (NET_AREA)
#define NET_RX_AVAIL (NET_AREA + 0x100)
#define NET_RX_USED (NET_AREA + 0x1000)
#define NET_TX_DESC (NET_AREA + 0x2000)
#define NET_TX_AVAIL (NET_AREA + 0x2100)
#define NET_TX_USED (NET_AREA + 0x3000)
#define NET_TX_BUF (NET_AREA + 0x4000)
#define NET_RX_BUF (NET_AREA + 0x8000) /* VQ_SIZE buffers of NET_BUF_LEN bytes */
#define NET_BUF_LEN 2048
#define NET_FRAME_MIN 60
#define NET_ETHERTYPE_HI 0x88 /* 0x88b5: IEEE local experimental */
#define NET_ETHERTYPE_LO 0xb5
#define NET_POLLS 300000 /* each poll is a port exit: a few seconds on kvm-pvm */
#define NET_PAYLOAD_MAX 48

static u16 net_rx_avail_idx;

static void net_desc(u64 table, u16 i, u64 addr, u32 len, u16 flags)
{
	volatile struct vq_desc *d = (volatile struct vq_desc *)table + i;
	d->addr = addr;
	d->len = len;
	d->flags = flags;
	d->next = 0;
}

/* Makes rx buffer `id` available to the device (the caller notifies). */
static void net_post_rx(u16 id)
{
	volatile u16 *avail = (volatile u16 *)NET_RX_AVAIL;

	net_desc(NET_RX_DESC, id, NET_RX_BUF + (u64)id * NET_BUF_LEN, NET_BUF_LEN, VQ_F_WRITE);
	avail[2 + net_rx_avail_idx % VQ_SIZE] = id;
	__asm__ volatile("" ::: "memory");
	avail[1] = ++net_rx_avail_idx;
	__asm__ volatile("" ::: "memory");
}

/* The first virtio-mmio slot holding a network device, or 0. */
static u64 find_virtio_net(void)
{
	u64 base;
	u32 i;

	for (i = 0; i < VIRTIO_MMIO_SLOTS; i++) {
		base = VIRTIO_MMIO_BASE + (u64)i * 0x1000;
		if (mmio_read32(base) == VIRTIO_MAGIC && mmio_read32(base + 8) == VIRTIO_ID_NET)
			return base;
	}
	return 0;
}

static void put_byte_hex(u8 b)
{
	putc("0123456789abcdef"[b >> 4]);
	putc("0123456789abcdef"[b & 0xf]);
}

/* The MAC in the device's configuration space. */
static void net_read_mac(u8 *mac)
{
	u32 cfg[2], i;

	cfg[0] = vr(0x100);
	cfg[1] = vr(0x104);
	for (i = 0; i < 6; i++)
		mac[i] = (u8)(cfg[i / 4] >> (8 * (i % 4)));
}

/* Prints `mac` as xx:xx:xx:xx:xx:xx. */
static void net_put_mac(const u8 *mac)
{
	u32 i;

	for (i = 0; i < 6; i++) {
		if (i)
			putc(':');
		put_byte_hex(mac[i]);
	}
}

/* Probe, two queues, VQ_SIZE posted rx buffers, DRIVER_OK. Returns 0 on success. */
static int net_probe(u8 *mac)
{
	u32 offered, i;

	if (virtio_negotiate(NET_F_MAC, &offered)) {
		puts("net: features refused\n");
		return -1;
	}
	if (virtio_queue(0, NET_RX_DESC, NET_RX_AVAIL, NET_RX_USED) ||
	    virtio_queue(1, NET_TX_DESC, NET_TX_AVAIL, NET_TX_USED)) {
		puts("net: queue unavailable\n");
		return -1;
	}
	net_rx_avail_idx = 0;
	for (i = 0; i < VQ_SIZE; i++)
		net_post_rx((u16)i);
	vw(0x70, 0xf);
	if (vr(0x70) != 0xf) {
		puts("net: status=");
		put_hex(vr(0x70));
		putc('\n');
		return -1;
	}
	vw(0x50, 0);
	net_read_mac(mac);
	puts("net: mac=");
	net_put_mac(mac);
	putc('\n');
	return (offered & NET_F_MAC) ? 0 : -1;
}

/* One broadcast frame of ethertype 0x88b5 carrying "NIMBUS-GUEST-PING", zero-padded. */
static void net_send_ping(const u8 *mac)
{
	static const char payload[] = "NIMBUS-GUEST-PING";
	volatile u16 *avail = (volatile u16 *)NET_TX_AVAIL;
	u8 *hdr = (u8 *)NET_TX_BUF, *frame = hdr + NET_HDR_LEN;
	u32 i;

	memset(hdr, 0, NET_HDR_LEN + NET_FRAME_MIN);
	memset(frame, 0xff, 6);
	memcpy(frame + 6, mac, 6);
	frame[12] = NET_ETHERTYPE_HI;
	frame[13] = NET_ETHERTYPE_LO;
	for (i = 0; payload[i]; i++)
		frame[14 + i] = (u8)payload[i];
	net_desc(NET_TX_DESC, 0, NET_TX_BUF, NET_HDR_LEN + NET_FRAME_MIN, 0);
	avail[2] = 0;
	__asm__ volatile("" ::: "memory");
	avail[1] = 1;
	__asm__ volatile("" ::: "memory");
	vw(0x50, 1);
}

/* Whether rx buffer `id` holds a 0x88b5 frame whose payload starts "NIMBUS-HOST-PONG"; if so,
   prints `net: got <payload>`. */
static int net_check_pong(u16 id, u32 len)
{
	const u8 *frame = (const u8 *)(NET_RX_BUF + (u64)id * NET_BUF_LEN + NET_HDR_LEN);
	u32 i;

	if (len < NET_HDR_LEN + 14 + 16 || frame[12] != NET_ETHERTYPE_HI ||
	    frame[13] != NET_ETHERTYPE_LO || !starts_with((const char *)frame + 14, "NIMBUS-HOST-PONG"))
		return 0;
	puts("net: got ");
	for (i = 14; i < len - NET_HDR_LEN && i < 14 + NET_PAYLOAD_MAX && is_printable(frame[i]); i++)
		putc((char)frame[i]);
	putc('\n');
	return 1;
}

/* Polls the rx used ring for the host's answer, giving other frames' buffers back. */
static void net_wait_pong(void)
{
	volatile u16 *used_idx = (volatile u16 *)(NET_RX_USED + 2);
	volatile u32 *used_ring = (volatile u32 *)(NET_RX_USED + 4);
	u16 seen = 0;
	u32 polls = 0;

	while (polls < NET_POLLS) {
		if (*used_idx == seen) {
			(void)inb(UART_LSR);
			polls++;
			continue;
		}
		__asm__ volatile("" ::: "memory");
		{
			u16 id = (u16)used_ring[2 * (seen % VQ_SIZE)];
			u32 len = used_ring[2 * (seen % VQ_SIZE) + 1];
			seen++;
			if (id < VQ_SIZE && net_check_pong(id, len))
				return;
			if (id < VQ_SIZE) {
				net_post_rx(id);
				vw(0x50, 0);
			}
		}
	}
	puts("net: timeout\n");
}

static void action_net(void)
{
	u8 mac[6];

	vdev_base = find_virtio_net();
	if (!vdev_base || vr(4) != 2) {
		puts("net: no device\n");
		return;
	}
	if (net_probe(mac))
		return;
	net_send_ping(mac);
	net_wait_pong();
	vw(0x70, 0);
}

/* Bit 0 of the net config `status` field (offset 6): the link is up. */
static u32 net_link_up(void)
{
	return (vr(0x104) >> 16) & 1;
}

/* Waits (pausing between reads, not spinning on exits) until the link is `up`; prints the
   link, whether a configuration-change interrupt came with it, and the MAC in config. */
static void net_wait_link(u32 up, u8 *mac)
{
	u32 isr, i;

	while (net_link_up() != up)
		for (i = 0; i < 20000; i++)
			__asm__ volatile("pause");
	isr = vr(0x60);
	vw(0x64, isr);
	net_read_mac(mac);
	puts(up ? "netwatch: link up" : "netwatch: link down");
	puts(isr & 2 ? " config-change mac=" : " mac=");
	net_put_mac(mac);
	putc('\n');
}

/* `nimbus.test=netwatch`: drives the first net device, an empty hot-plug slot at boot: prints
   its link, waits for a backend to be plugged (link up), pings through it, waits for the
   backend to be unplugged (link down), then idles as `hang` does. */
static void action_netwatch(void)
{
	u8 mac[6];

	vdev_base = find_virtio_net();
	if (!vdev_base || vr(4) != 2) {
		puts("netwatch: no device\n");
		return;
	}
	if (net_probe(mac))
		return;
	puts(net_link_up() ? "netwatch: link=1\n" : "netwatch: link=0\n");
	net_wait_link(1, mac);
	net_send_ping(mac);
	net_wait_pong();
	net_wait_link(0, mac);
	vw(0x70, 0);
	/* Idle rather than reset: the VM must outlive the monitor's commands after the unplug. */
	action_hang();
}

/* ---- virtio-net throughput: `nettx` / `netrx` ------------------------------------------- */

#define NET_BENCH_POLLS 1000000 /* idle polls (each a port exit) before giving up */
#define NET_BENCH_TXBUF 128     /* per tx slot: header and a 60-byte frame */

/* The network device: the fixed slots first (Nimbus), then the `virtio_mmio.device=` entries
   of the command line (QEMU's microvm with acpi=off). */
static u64 find_virtio_net_any(void)
{
	u64 base = find_virtio_net(), n;

	for (n = 0; !base && n < VIRTIO_MMIO_SLOTS; n++) {
		base = find_virtio_mmio_nth(info.cmdline, n);
		if (!base)
			break;
		if (mmio_read32(base) != VIRTIO_MAGIC || mmio_read32(base + 8) != VIRTIO_ID_NET)
			base = 0;
	}
	return base;
}

static int net_bench_probe(u8 *mac, const char *who)
{
	vdev_base = find_virtio_net_any();
	if (!vdev_base || vr(4) != 2) {
		puts(who);
		puts(": no device\n");
		return -1;
	}
	return net_probe(mac);
}

/* Writes the decimal `v` at `p` followed by a NUL. */
static void net_put_number(u8 *p, u64 v)
{
	u8 tmp[20];
	u32 n = 0;

	do {
		tmp[n++] = (u8)('0' + v % 10);
		v /= 10;
	} while (v);
	while (n)
		*p++ = tmp[--n];
	*p = 0;
}

/* `nimbus.test=nettx nimbus.frames=N`: N broadcast 60-byte 0x88b5 frames carrying
   "NIMBUS-BENCH-<n>", as fast as the tx ring takes them (VQ_SIZE in flight, one notification
   per batch, completions polled). */
static void action_nettx(void)
{
	static const char payload[] = "NIMBUS-BENCH-";
	u64 n = cmdline_number(info.cmdline, "nimbus.frames=", 1000), sent = 0;
	volatile u16 *avail = (volatile u16 *)NET_TX_AVAIL;
	volatile u16 *used_idx = (volatile u16 *)(NET_TX_USED + 2);
	u16 avail_idx = 0, added;
	u32 i, j, idle = 0;
	u8 mac[6];

	if (net_bench_probe(mac, "nettx"))
		return;
	for (i = 0; i < VQ_SIZE; i++) {
		u8 *hdr = (u8 *)(NET_TX_BUF + (u64)i * NET_BENCH_TXBUF), *frame = hdr + NET_HDR_LEN;
		memset(hdr, 0, NET_BENCH_TXBUF);
		memset(frame, 0xff, 6);
		memcpy(frame + 6, mac, 6);
		frame[12] = NET_ETHERTYPE_HI;
		frame[13] = NET_ETHERTYPE_LO;
		for (j = 0; payload[j]; j++)
			frame[14 + j] = (u8)payload[j];
		net_desc(NET_TX_DESC, (u16)i, (u64)hdr, NET_HDR_LEN + NET_FRAME_MIN, 0);
	}
	while (sent < n || *used_idx != avail_idx) {
		added = 0;
		while (sent < n && (u16)(avail_idx - *used_idx) < VQ_SIZE) {
			u16 id = avail_idx % VQ_SIZE;
			net_put_number((u8 *)(NET_TX_BUF + (u64)id * NET_BENCH_TXBUF + NET_HDR_LEN + 14 +
					      sizeof(payload) - 1),
				       sent);
			avail[2 + id] = id;
			__asm__ volatile("" ::: "memory");
			avail[1] = ++avail_idx;
			sent++;
			added++;
		}
		__asm__ volatile("" ::: "memory");
		if (added) {
			vw(0x50, 1);
			idle = 0;
		} else if (++idle == NET_BENCH_POLLS) {
			puts("nettx: timeout sent=");
			put_dec(sent);
			puts(" used=");
			put_dec(*used_idx);
			putc('\n');
			vw(0x70, 0);
			return;
		} else {
			(void)inb(UART_LSR);
		}
	}
	puts("nettx: sent ");
	put_dec(sent);
	putc('\n');
	vw(0x70, 0);
}

/* `nimbus.test=netrx nimbus.frames=N`: counts received 0x88b5 frames until N, giving every
   buffer back (one notification per batch); gives up after NET_BENCH_POLLS idle polls. */
static void action_netrx(void)
{
	u64 n = cmdline_number(info.cmdline, "nimbus.frames=", 1000), got = 0;
	volatile u16 *used_idx = (volatile u16 *)(NET_RX_USED + 2);
	volatile u32 *used_ring = (volatile u32 *)(NET_RX_USED + 4);
	u16 seen = 0, now;
	u32 idle = 0;
	u8 mac[6];

	if (net_bench_probe(mac, "netrx"))
		return;
	puts("netrx: ready\n");
	while (got < n) {
		now = *used_idx;
		if (now == seen) {
			if (++idle == NET_BENCH_POLLS) {
				puts("netrx: timeout got=");
				put_dec(got);
				putc('\n');
				vw(0x70, 0);
				return;
			}
			(void)inb(UART_LSR);
			continue;
		}
		__asm__ volatile("" ::: "memory");
		idle = 0;
		while (seen != now) {
			u16 id = (u16)used_ring[2 * (seen % VQ_SIZE)];
			const u8 *frame = (const u8 *)(NET_RX_BUF + (u64)id * NET_BUF_LEN + NET_HDR_LEN);
			seen++;
			if (id >= VQ_SIZE)
				continue;
			if (frame[12] == NET_ETHERTYPE_HI && frame[13] == NET_ETHERTYPE_LO)
				got++;
			net_post_rx(id);
		}
		vw(0x50, 0);
	}
	puts("netrx: got ");
	put_dec(got);
	putc('\n');
	vw(0x70, 0);
}

/* ---- virtio-rng: one 16-byte request, printed as text ------------------------------------ */

#define VIRTIO_ID_RNG 4
#define RNG_AREA 0x600000UL
#define RNG_DESC (RNG_AREA)
#define RNG_AVAIL (RNG_AREA + 0x100)
#define RNG_USED (RNG_AREA + 0x1000)
#define RNG_BUF (RNG_AREA + 0x2000)
#define RNG_WANT 16

/* The first virtio-mmio slot holding an entropy device, or 0. */
static u64 find_virtio_rng(void)
{
	u64 base;
	u32 i;

	for (i = 0; i < VIRTIO_MMIO_SLOTS; i++) {
		base = VIRTIO_MMIO_BASE + (u64)i * 0x1000;
		if (mmio_read32(base) == VIRTIO_MAGIC && mmio_read32(base + 8) == VIRTIO_ID_RNG)
			return base;
	}
	return 0;
}

/* Probes the device, asks for RNG_WANT bytes once and prints `rng: <n> bytes: <text>` (bytes
   outside printable ASCII as '.'), or why it could not. */
static void action_rng(void)
{
	volatile u16 *avail = (volatile u16 *)RNG_AVAIL;
	volatile u16 *used_idx = (volatile u16 *)(RNG_USED + 2);
	volatile u32 *used_len = (volatile u32 *)(RNG_USED + 8);
	u8 *buf = (u8 *)RNG_BUF;
	u32 offered, polls = 0, i, n;

	vdev_base = find_virtio_rng();
	if (!vdev_base || vr(4) != 2) {
		puts("rng: no device\n");
		return;
	}
	if (virtio_negotiate(0, &offered) || virtio_queue(0, RNG_DESC, RNG_AVAIL, RNG_USED)) {
		puts("rng: setup refused\n");
		return;
	}
	vw(0x70, 0xf);
	for (i = 0; i < RNG_WANT; i++)
		buf[i] = 0;
	{
		volatile struct vq_desc *d = (volatile struct vq_desc *)RNG_DESC;
		d->addr = RNG_BUF;
		d->len = RNG_WANT;
		d->flags = VQ_F_WRITE;
		d->next = 0;
	}
	avail[2] = 0;
	__asm__ volatile("" ::: "memory");
	avail[1] = 1;
	__asm__ volatile("" ::: "memory");
	vw(0x50, 0);
	while (*used_idx == 0)
		if (++polls == BLK_POLLS) {
			puts("rng: timeout\n");
			return;
		}
	n = *used_len;
	puts("rng: ");
	put_dec(n);
	puts(" bytes: ");
	for (i = 0; i < n && i < RNG_WANT; i++)
		putc(is_printable(buf[i]) ? (char)buf[i] : '.');
	putc('\n');
	vw(0x70, 0);
}

static void run_action(const char *name, u64 len)
{
	if (str_eq_n(name, len, "smp"))
		action_smp();
	else if (str_eq_n(name, len, "popcnt"))
		action_popcnt();
	else if (str_eq_n(name, len, "triple"))
		action_triple();
	else if (str_eq_n(name, len, "echo"))
		action_echo();
	else if (str_eq_n(name, len, "ud2"))
		action_ud2();
	else if (str_eq_n(name, len, "hang"))
		action_hang();
	else if (str_eq_n(name, len, "blk"))
		action_blk();
	else if (str_eq_n(name, len, "blkbench"))
		action_blkbench();
	else if (str_eq_n(name, len, "blkwatch"))
		action_blkwatch();
	else if (str_eq_n(name, len, "blkloop"))
		action_blkloop();
	else if (str_eq_n(name, len, "blkmq"))
		action_blkmq();
	else if (str_eq_n(name, len, "count"))
		action_count();
	else if (str_eq_n(name, len, "net"))
		action_net();
	else if (str_eq_n(name, len, "rng"))
		action_rng();
	else if (str_eq_n(name, len, "netwatch"))
		action_netwatch();
	else if (str_eq_n(name, len, "nettx"))
		action_nettx();
	else if (str_eq_n(name, len, "netrx"))
		action_netrx();
	else if (str_eq_n(name, len, "exits"))
		action_exits();
	else if (str_eq_n(name, len, "balloon"))
		action_balloon(info.cmdline);
	else if (str_eq_n(name, len, "balloon-bad"))
		action_balloon_bad(info.cmdline);
	else if (vsock_action(name, len, info.cmdline))
		;
	else if (console_action(name, len, info.cmdline))
		;
	else {
		puts("action: unknown ");
		while (len--)
			putc(*name++);
		putc('\n');
	}
}

static void run_actions(const char *cmdline)
{
	static const char key[] = "nimbus.test=";
	const char *p = cmdline;

	while (p && *p) {
		const char *tok;
		while (*p == ' ')
			p++;
		tok = p;
		while (*p && *p != ' ')
			p++;
		if (starts_with(tok, key) && (u64)(p - tok) >= sizeof(key) - 1)
			run_action(tok + sizeof(key) - 1, (u64)(p - tok) - (sizeof(key) - 1));
	}
}

/* ---- main --------------------------------------------------------------------------------- */

static const char *const format_names[] = { "elf", "pvh", "bzimage", "raw" };

void __attribute__((noreturn)) guest_main(u64 format, u64 boot_info)
{
	puts("NIMBUS-GUEST hello format=");
	puts(format < 4 ? format_names[format] : "unknown");
	putc('\n');
	if (format == FORMAT_PVH) {
		if (!from_hvm_start_info(boot_info))
			reset();
	} else {
		from_boot_params(boot_info);
	}
	reset_by_triple_fault = has_token(info.cmdline, "reboot=t");
	/* `nimbus.quiet`: no boot report, no actions: the least a guest does between its first
	   console line and its reset (the lifecycle benchmark's second row). */
	if (has_token(info.cmdline, "nimbus.quiet")) {
		puts("NIMBUS-GUEST done\n");
		reset();
	}
	print_boot_info();
	parse_mp_table();
	print_mp_table();
	run_actions(info.cmdline);
	puts("NIMBUS-GUEST done\n");
	reset();
}
