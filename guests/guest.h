/*
 * What hello.c shares with the guest's other C files (vsock.c): integer types, port and MMIO
 * access, the console, the command line and the virtio-mmio helpers. Integer-only, no libc:
 * see build.sh for the flags and README.md for why.
 */
#ifndef GUEST_H
#define GUEST_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;

#define UART_THR 0x3f8
#define UART_LSR 0x3fd

static inline void outb(u16 port, u8 val)
{
	__asm__ volatile("outb %0, %1" : : "a"(val), "Nd"(port));
}

static inline u8 inb(u16 port)
{
	u8 val;
	__asm__ volatile("inb %1, %0" : "=a"(val) : "Nd"(port));
	return val;
}

static inline u32 mmio_read32(u64 addr)
{
	return *(volatile u32 *)addr;
}

static inline void mmio_write32(u64 addr, u32 val)
{
	*(volatile u32 *)addr = val;
}

/* Orders the guest's stores to rings against the device (x86 keeps stores in order). */
static inline void barrier(void)
{
	__asm__ volatile("" ::: "memory");
}

void *memcpy(void *dst, const void *src, u64 n);
void *memset(void *dst, int c, u64 n);

/* Console (16550 at 0x3f8): numbers in lowercase hex with 0x, or in decimal. */
void putc(char c);
void puts(const char *s);
void put_hex(u64 v);
void put_dec(u64 v);
int is_printable(u8 c);

/* The decimal value of `<key><digits>` on the command line, or `fallback`. */
u64 cmdline_number(const char *p, const char *key, u64 fallback);
/* The base of the `n`th (from 0) `virtio_mmio.device=` of the command line, or 0. */
u64 find_virtio_mmio_nth(const char *p, u64 n);

/* virtio-mmio (version 2) of the device at `vdev_base`. */
#define VIRTIO_MAGIC 0x74726976
#define VQ_F_NEXT 1
#define VQ_F_WRITE 2

struct vq_desc {
	u64 addr;
	u32 len;
	u16 flags;
	u16 next;
};

extern u64 vdev_base;
u32 vr(u32 off);
void vw(u32 off, u32 val);
int virtio_negotiate(u32 want, u32 *offered);
int virtio_queue_sized(u32 index, u32 size, u64 desc, u64 avail, u64 used);

/* balloon.c: `nimbus.test=balloon` and `nimbus.test=balloon-bad`. */
void action_balloon(const char *cmdline);
void action_balloon_bad(const char *cmdline);

/* vsock.c: runs the `vsock-*` action `name` (`len` bytes); 0 if it is not one of them. */
int vsock_action(const char *name, u64 len, const char *cmdline);

/* console.c: runs `conbench` (virtio-console or UART output rate); 0 if `name` is not it. */
int console_action(const char *name, u64 len, const char *cmdline);

#endif
