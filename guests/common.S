/*
 * 64-bit code shared by every format: the landing point of all entry stubs, the guest's own
 * GDT, the exception stubs behind the IDT, the stack, and the AP's real-mode trampoline.
 *
 * Entry stubs jump to start64_common in 64-bit mode with
 *   %rbx = boot information (boot_params or hvm_start_info, zero-extended)
 *   %ebp = format id (FORMAT_* from build.sh)
 * Interrupts are off; the stack is unknown.
 */

#define SEL_CODE32 0x08
#define SEL_CODE64 0x10
#define SEL_DATA 0x18

	.section .text, "ax"
	.code64
	.globl start64_common
start64_common:
	cli
	lgdt gdt_desc(%rip)
	mov $SEL_DATA, %eax
	mov %eax, %ds
	mov %eax, %es
	mov %eax, %ss
	mov %eax, %fs
	mov %eax, %gs
	lea stack_top(%rip), %rsp
	/* Reload CS from our own GDT. */
	pushq $SEL_CODE64
	lea 1f(%rip), %rax
	pushq %rax
	lretq
1:
	call idt_init
	mov %ebp, %edi
	mov %rbx, %rsi
	call guest_main
2:	cli
	hlt
	jmp 2b

/* Exception stubs: push a zero error code where the CPU pushes none, then the vector. */
	.macro isr vec
isr\vec:
	.if (\vec == 8) || ((\vec >= 10) && (\vec <= 14)) || (\vec == 17) || (\vec == 21) || (\vec == 29) || (\vec == 30)
	.else
	pushq $0
	.endif
	pushq $\vec
	jmp isr_common
	.endm

	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	isr \v
	.endr

isr_common:
	/* Stack: vector, error code, RIP, CS, RFLAGS, RSP, SS. */
	mov (%rsp), %rdi
	mov 16(%rsp), %rsi
	mov 8(%rsp), %rdx
	and $-16, %rsp
	call guest_exception
3:	cli
	hlt
	jmp 3b

	.section .rodata, "a"
	.balign 8
	.globl isr_table
isr_table:
	.irp v, 0,1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20,21,22,23,24,25,26,27,28,29,30,31
	.quad isr\v
	.endr

/* Flat GDT: the 32-bit stubs use it to enter long mode, then start64_common reloads it. */
	.section .data, "aw"
	.balign 16
	.globl gdt, gdt_desc
gdt:
	.quad 0
	.quad 0x00cf9a000000ffff	/* 0x08: 32-bit code, base 0, limit 4 GiB */
	.quad 0x00af9a000000ffff	/* 0x10: 64-bit code */
	.quad 0x00cf92000000ffff	/* 0x18: data, base 0, limit 4 GiB */
gdt_end:
	.balign 8
	.word 0, 0, 0
gdt_desc:
	.word gdt_end - gdt - 1
	.quad gdt

	.balign 16
stack:
	.fill 8192, 1, 0
stack_top:

/*
 * AP trampoline, copied to 0x2000 and started by SIPI vector 0x02 (CS=0x0200, IP=0) in
 * 16-bit real mode. Prints "SMP: AP <initial APIC id>", sets the flag word, then halts.
 * Addresses are offsets from ap_trampoline_start, since CS:0 is the copy's first byte.
 */
	.section .rodata, "a"
	.balign 16
	.globl ap_trampoline_start, ap_trampoline_end, ap_trampoline_flag
	.code16
ap_trampoline_start:
	cli
	mov %cs, %ax
	mov %ax, %ds
	xor %ax, %ax
	mov %ax, %ss
	mov $0x3000, %sp
	mov $(ap_msg - ap_trampoline_start), %si
	call ap_puts
	mov $1, %eax
	cpuid
	shr $24, %ebx
	mov %bl, %al
	call ap_put_dec
	mov $'\n', %al
	call ap_putc
	movl $1, (ap_trampoline_flag - ap_trampoline_start)
	/* With the mode word (flag + 8) set, count at flag + 4 for ever, a pause loop apart. */
	cmpl $0, (ap_trampoline_flag - ap_trampoline_start + 8)
	je 4f
8:	incl (ap_trampoline_flag - ap_trampoline_start + 4)
	mov $2000, %ecx
9:	pause
	dec %ecx
	jnz 9b
	jmp 8b
4:	cli
	hlt
	jmp 4b

ap_puts:	/* prints the NUL-terminated string at %ds:%si */
	lodsb
	test %al, %al
	jz 5f
	call ap_putc
	jmp ap_puts
5:	ret

ap_put_dec:	/* prints %al (0..255) in decimal */
	xor %ah, %ah
	mov $10, %bl
	xor %cx, %cx
6:	div %bl		/* %al = quotient, %ah = remainder */
	mov %ah, %dl
	add $'0', %dl
	push %dx
	inc %cx
	xor %ah, %ah
	test %al, %al
	jnz 6b
7:	pop %ax		/* %al = the digit pushed as %dl */
	call ap_putc
	loop 7b
	ret

ap_putc:	/* prints %al, waiting for the THR to be empty */
	push %dx
	push %ax
	mov $0x3fd, %dx
8:	in %dx, %al
	test $0x20, %al
	jz 8b
	pop %ax
	mov $0x3f8, %dx
	out %al, %dx
	pop %dx
	ret

ap_msg:
	.asciz "SMP: AP "
	.balign 4
ap_trampoline_flag:
	.long 0		/* set by the AP when it runs */
	.long 0		/* its count (mode 1) */
	.long 0		/* mode: 0 halt, 1 count */
ap_trampoline_end:
	.code64
