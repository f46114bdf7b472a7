/* Format ids the entry stubs pass to guest_main (hello.c prints the matching name). */
#define FORMAT_ELF 0
#define FORMAT_PVH 1
#define FORMAT_BZIMAGE 2
#define FORMAT_RAW 3
