/*
 * The real-mode part of hello.bzimage: SETUP_SECTS + 1 sectors holding a Linux boot protocol
 * 2.15 setup header. Nimbus never runs this code (it enters code32_start in protected mode),
 * but it reads setup_sects, the magic numbers and loadflags from here and copies the header
 * into boot_params. build.sh supplies SETUP_SECTS, SYSSIZE and INIT_SIZE.
 */
	.code16
	.section .text, "ax"
	.globl _start
_start:
	.org 0x1f1
setup_sects:		.byte SETUP_SECTS
root_flags:		.word 0
syssize:		.long SYSSIZE		/* protected-mode code size in 16-byte units */
ram_size:		.word 0
vid_mode:		.word 0xffff
root_dev:		.word 0
boot_flag:		.word 0xaa55
	.org 0x200
header_start:
jump:			.byte 0xeb, setup_code - 1f
1:
	.org 0x202
header:			.ascii "HdrS"
version:		.word 0x020f
realmode_swtch:		.long 0
start_sys_seg:		.word 0x1000
kernel_version:		.word kernel_version_str - header_start
type_of_loader:		.byte 0
	.org 0x211
loadflags:		.byte 0x01		/* LOADED_HIGH */
setup_move_size:	.word 0x8000
code32_start:		.long 0x100000
ramdisk_image:		.long 0
ramdisk_size:		.long 0
bootsect_kludge:	.long 0
heap_end_ptr:		.word 0
ext_loader_ver:		.byte 0
ext_loader_type:	.byte 0
	.org 0x228
cmd_line_ptr:		.long 0
initrd_addr_max:	.long 0x7fffffff
kernel_alignment:	.long 0x200000
relocatable_kernel:	.byte 0
min_alignment:		.byte 21
xloadflags:		.word 0			/* no 64-bit entry: the 32-bit one is the contract */
	.org 0x238
cmdline_size:		.long 2047
hardware_subarch:	.long 0
hardware_subarch_data:	.quad 0
payload_offset:		.long 0
payload_length:		.long 0
setup_data:		.quad 0
	.org 0x258
pref_address:		.quad 0x100000
init_size:		.long INIT_SIZE
handover_offset:	.long 0
kernel_info_offset:	.long 0
	.org 0x26c
setup_code:		/* a real-mode entry nobody should take: halt */
	cli
	hlt
	jmp setup_code
kernel_version_str:
	.asciz "nimbus-test-guest"
	.org (SETUP_SECTS + 1) * 512
