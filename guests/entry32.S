/*
 * 32-bit entry of hello-pvh.elf (FORMAT_PVH: %ebx = hvm_start_info) and of the bzImage's
 * protected-mode code (FORMAT_BZIMAGE: %esi = boot_params). Entered with paging off; builds
 * nothing at run time: loads the guest's GDT and the static page tables below (identity map of
 * 4 GiB in 2 MiB pages, LAPIC included), enables PAE and long mode, and jumps to 64-bit code.
 */
#define SEL_CODE64 0x10
#define SEL_DATA 0x18
#define CR0_PE 0x00000001
#define CR0_PG 0x80000000
#define CR4_PAE 0x20
#define MSR_EFER 0xc0000080
#define EFER_LME 0x100
#define PTE_PRESENT_RW 0x3
#define PDE_2M 0x83		/* present, writable, 2 MiB page */

#include "formats.h"

	.section .text.entry, "ax"
	.code32
	.globl _start32
_start32:
	cli
#if FORMAT != FORMAT_PVH
	mov %esi, %ebx
#endif
	mov $FORMAT, %ebp
	lgdt gdt_desc
	mov $SEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %cr4, %eax
	or $CR4_PAE, %eax
	mov %eax, %cr4
	mov $pml4, %eax
	mov %eax, %cr3
	mov $MSR_EFER, %ecx
	rdmsr
	or $EFER_LME, %eax
	wrmsr
	mov %cr0, %eax
	or $(CR0_PG | CR0_PE), %eax
	mov %eax, %cr0
	ljmp $SEL_CODE64, $long_mode

	.code64
long_mode:
	mov %ebx, %ebx		/* the upper halves are undefined after the switch */
	mov %ebp, %ebp
	jmp start64_common

	.section .data.pagetables, "aw"
	.balign 4096
pml4:
	.quad pdpt + PTE_PRESENT_RW
	.fill 511, 8, 0
pdpt:
	.quad pd + PTE_PRESENT_RW
	.quad pd + 0x1000 + PTE_PRESENT_RW
	.quad pd + 0x2000 + PTE_PRESENT_RW
	.quad pd + 0x3000 + PTE_PRESENT_RW
	.fill 508, 8, 0
pd:
	.set page, 0
	.rept 2048
	.quad (page << 21) + PDE_2M
	.set page, page + 1
	.endr

#if FORMAT == FORMAT_PVH
/* Xen PVH entry note: XEN_ELFNOTE_PHYS32_ENTRY (18), a 32-bit physical entry address. */
	.section .note.Xen, "a", @note
	.balign 4
	.long 4			/* namesz */
	.long 4			/* descsz */
	.long 18		/* type */
	.asciz "Xen"
	.balign 4
	.long _start32
#endif
