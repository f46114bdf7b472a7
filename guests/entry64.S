/*
 * 64-bit entry of hello.elf and hello.bin: the VMM enters here in long mode with paging on
 * (its identity map of the first 4 GiB) and %rsi = boot_params. FORMAT comes from build.sh.
 */
#include "formats.h"

	.section .text.entry, "ax"
	.code64
	.globl _start64
_start64:
	cli
	mov %rsi, %rbx
	mov $FORMAT, %ebp
	jmp start64_common
