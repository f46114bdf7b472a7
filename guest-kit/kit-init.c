/*
 * kit-init.c -- the guest kit's /init: libc-free, one process.
 *
 * Built by build.sh against the kernel's own tools/include/nolibc with
 * -mgeneral-regs-only (no SSE/AVX: under kvm-pvm guest user mode runs natively
 * while a `noxsave` kernel saves only x87/SSE state, and every system call is
 * an emulated kernel path, so fewer is faster). Grown from the shared kit's
 * pvm-init.c; it does what the shell /init did, in a handful of system calls:
 *
 *   mount proc, sysfs, devtmpfs (unless already mounted); print GUEST_INIT_READY
 *   kit.mode=boot (default): print
 *       KIT cpus=<online cpus> mem_kb=<MemTotal> disks=<names in /sys/block|none>
 *     and restart the machine (reboot=k: i8042 reset; reboot=t: triple fault;
 *     without ACPI a power-off would only halt, so the kit always restarts)
 *   kit.mode=shell: a login shell on the console (busybox: setsid + cttyhack sh),
 *     restart when it exits
 *   anything else: print `KIT unknown kit.mode=<mode>` and restart
 */

#define LINE_MAX_LEN 512

static void put(const char *s)
{
	write(1, s, strlen(s));
}

/* Appends `s` to the line in `buf` (of LINE_MAX_LEN bytes), truncating. */
static void append(char *buf, const char *s)
{
	size_t len = strlen(buf);

	while (*s && len < LINE_MAX_LEN - 1)
		buf[len++] = *s++;
	buf[len] = 0;
}

/* Reads up to `size - 1` bytes of `path` into `buf`; returns the length or -1. */
static int read_file(const char *path, char *buf, int size)
{
	int fd = open(path, O_RDONLY, 0);
	int n, total = 0;

	if (fd < 0)
		return -1;
	while (total < size - 1 && (n = read(fd, buf + total, size - 1 - total)) > 0)
		total += n;
	close(fd);
	buf[total] = 0;
	return total;
}

static int is_space(char c)
{
	return c == ' ' || c == '\n' || c == '\t' || c == 0;
}

/* The value of `key=` in the kernel command line, copied into `out`; 0 if absent. */
static int cmdline_value(const char *key, char *out, int size)
{
	static char cmdline[4096];
	size_t klen = strlen(key);
	char *p = cmdline;

	if (read_file("/proc/cmdline", cmdline, sizeof(cmdline)) <= 0)
		return 0;
	while (*p) {
		while (*p == ' ')
			p++;
		if (!strncmp(p, key, klen) && p[klen] == '=') {
			int n = 0;

			p += klen + 1;
			while (!is_space(*p) && n < size - 1)
				out[n++] = *p++;
			out[n] = 0;
			return 1;
		}
		while (!is_space(*p))
			p++;
	}
	return 0;
}

static unsigned long parse_num(const char **p)
{
	unsigned long v = 0;

	while (**p >= '0' && **p <= '9')
		v = v * 10 + (unsigned long)(*(*p)++ - '0');
	return v;
}

/* Counts the CPUs in a list such as "0-3,5,7-8"; 0 if it cannot be read. */
static unsigned long online_cpus(void)
{
	char buf[256];
	const char *p = buf;
	unsigned long count = 0;

	if (read_file("/sys/devices/system/cpu/online", buf, sizeof(buf)) <= 0)
		return 0;
	while (*p >= '0' && *p <= '9') {
		unsigned long first = parse_num(&p), last = first;

		if (*p == '-') {
			p++;
			last = parse_num(&p);
		}
		count += last - first + 1;
		if (*p != ',')
			break;
		p++;
	}
	return count;
}

/* MemTotal from /proc/meminfo, in kB; 0 if it cannot be read. */
static unsigned long mem_total_kb(void)
{
	static char buf[4096];
	const char *p;

	if (read_file("/proc/meminfo", buf, sizeof(buf)) <= 0)
		return 0;
	p = buf;
	while (*p) {
		if (!strncmp(p, "MemTotal:", 9)) {
			p += 9;
			while (*p == ' ')
				p++;
			return parse_num(&p);
		}
		while (*p && *p != '\n')
			p++;
		if (*p)
			p++;
	}
	return 0;
}

/* Appends the names in /sys/block, space-separated, or "none". */
static void append_disks(char *line)
{
	static char dents[4096];
	int fd = open("/sys/block", O_RDONLY | O_DIRECTORY, 0);
	int found = 0, n;

	while (fd >= 0 && (n = getdents64(fd, (struct linux_dirent64 *)dents, sizeof(dents))) > 0) {
		int off = 0;

		while (off < n) {
			struct linux_dirent64 *d = (struct linux_dirent64 *)(dents + off);

			off += d->d_reclen;
			if (d->d_name[0] == '.')
				continue;
			if (found++)
				append(line, " ");
			append(line, d->d_name);
		}
	}
	if (fd >= 0)
		close(fd);
	if (!found)
		append(line, "none");
}

static void report(void)
{
	char line[LINE_MAX_LEN] = "KIT cpus=";
	char num[24];

	u64toa_r(online_cpus(), num);
	append(line, num);
	append(line, " mem_kb=");
	u64toa_r(mem_total_kb(), num);
	append(line, num);
	append(line, " disks=");
	append_disks(line);
	append(line, "\n");
	/* one write, so that no kernel message lands inside the line */
	put(line);
}

static void restart(void)
{
	my_syscall0(__NR_sync);
	reboot(LINUX_REBOOT_CMD_RESTART);
	put("kit-init: reboot failed\n");
	for (;;)
		my_syscall0(__NR_pause);
}

static char *const shell_env[] = {
	"PATH=/bin:/sbin:/usr/bin:/usr/sbin", "HOME=/root", "TERM=vt100", 0
};

/* A login shell in its own session with the console as its controlling tty. */
static void run_shell(void)
{
	char *const argv[] = { "cttyhack", "sh", "-l", 0 };
	int status;
	pid_t pid;

	mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777");
	mount("tmpfs", "/run", "tmpfs", 0, "mode=0755");
	put("guest-kit shell (exit, poweroff -f or reboot -f to leave)\n");
	pid = fork();
	if (pid == 0) {
		setsid();
		execve("/bin/cttyhack", argv, shell_env);
		put("kit-init: cannot run /bin/cttyhack\n");
		exit(127);
	}
	/* PID 1 reaps every orphan until the shell itself is gone */
	while (pid > 0 && wait(&status) != pid)
		;
}

int main(int argc, char **argv, char **envp)
{
	char mode[64] = "boot";

	if (mount("proc", "/proc", "proc", 0, 0) < 0)
		put("kit-init: mount /proc failed\n");
	if (mount("sysfs", "/sys", "sysfs", 0, 0) < 0)
		put("kit-init: mount /sys failed\n");
	/* CONFIG_DEVTMPFS_MOUNT mounts it for a disk root: EBUSY is fine */
	mount("devtmpfs", "/dev", "devtmpfs", 0, 0);
	put("GUEST_INIT_READY\n");

	cmdline_value("kit.mode", mode, sizeof(mode));
	if (!strcmp(mode, "boot")) {
		/* console loglevel 1, as `dmesg -n 1`: keep kernel chatter off the report */
		my_syscall3(__NR_syslog, 8, 0, 1);
		report();
	} else if (!strcmp(mode, "shell")) {
		run_shell();
	} else {
		put("KIT unknown kit.mode=");
		put(mode);
		put("\n");
	}
	restart();
	return 0;
}
