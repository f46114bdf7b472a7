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
 *   kit.mode=agent: a Kata-style agent on virtio-vsock (see agent() below): listens
 *     on vsock port 1024, prints `KIT agent listening on vsock port 1024`, sends
 *     `agent log: started` to the host's port 1025 and answers requests line by
 *     line, one connection after another; with kit.fstag= it first mounts that
 *     virtio-fs share on /mnt, as Kata's agent mounts kataShared, and reports it
 *   kit.mode=fs: mounts virtio-fs (tag from kit.fstag=, default myfs) on /mnt (see
 *     fs_mode() below): prints `KIT fs read: <hello.txt>`, writes from-guest.txt,
 *     prints `KIT fs many: <entries in many/>` and `KIT fs done`, then restarts
 *   kit.mode=fsbench: mounts virtio-fs like fs, reads /mnt/big in 1 MiB reads and
 *     stats every entry of /mnt/many, each between two console lines (see
 *     fsbench_mode() below), then restarts
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
		/* spaces, and the newline that ends /proc/cmdline */
		while (*p && is_space(*p))
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

/* tmpfs on /tmp and /run (a read-only root stays untouched) */
static void mount_tmpfs(void)
{
	mount("tmpfs", "/tmp", "tmpfs", 0, "mode=1777");
	mount("tmpfs", "/run", "tmpfs", 0, "mode=0755");
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

	mount_tmpfs();
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

/* ---- a file's content on one line ------------------------------------------------------ */

#define FS_CONTENT_MAX 400

/*
 * Appends the first FS_CONTENT_MAX bytes of `path` to the line in `out` (of `size` bytes,
 * truncating), its last newline dropped and any other newline or carriage return shown as
 * `\n`/`\r`. Returns 0, or -1 with errno set and `*step` naming what failed ("open", "read").
 */
static int append_escaped_file(char *out, size_t size, const char *path, const char **step)
{
	static char content[FS_CONTENT_MAX];
	size_t len = strlen(out);
	int fd, n = 0, total = 0, i;

	fd = open(path, O_RDONLY, 0);
	if (fd < 0) {
		*step = "open";
		return -1;
	}
	while (total < FS_CONTENT_MAX && (n = read(fd, content + total, FS_CONTENT_MAX - total)) > 0)
		total += n;
	if (n < 0) {
		int saved = errno;

		*step = "read";
		close(fd);
		SET_ERRNO(saved);
		return -1;
	}
	close(fd);
	if (total > 0 && content[total - 1] == '\n')
		total--;
	for (i = 0; i < total && len + 3 <= size; i++) {
		if (content[i] == '\n' || content[i] == '\r') {
			out[len++] = '\\';
			out[len++] = content[i] == '\n' ? 'n' : 'r';
		} else {
			out[len++] = content[i];
		}
	}
	out[len] = 0;
	return 0;
}

/* ---- kit.mode=agent ---------------------------------------------------------------------
 *
 * A stand-in for Kata Containers' agent, to drive a VMM's virtio-vsock device the way Kata's
 * runtime does. One process, one connection at a time:
 *
 *   1. listen on AF_VSOCK port 1024 (any CID), print `KIT agent listening on vsock port 1024`
 *   2. connect to CID 2 (the host) port 1025, write `agent log: started\n` and keep that
 *      connection open (print `KIT agent log connected` or `KIT agent log failed errno=<n>`)
 *   3. accept a connection, print `KIT agent connection <n> from cid <cid> port <port>`,
 *      answer each line (`\n`-terminated; a trailing `\r` is dropped) with one line:
 *        ping          -> pong
 *        echo <text>   -> <text>
 *        uname         -> the kernel release (uname -r)
 *        cat <path>    -> the file's first 400 bytes, escaped as `KIT fs read:` does
 *                         (last newline dropped, other newlines and CRs as \n/\r), or
 *                         `error cat <path> errno=<n>`
 *        quit          -> bye, then the agent closes the connection
 *        reboot        -> bye, then the machine restarts (the VMM exits 0)
 *        anything else -> error unknown command: <line>
 *      a line longer than 511 bytes is answered `error line too long` and dropped;
 *      at EOF or an error, print `KIT agent connection <n> closed` and accept the next
 *
 * With `kit.fstag=<tag>` on the command line it mounts that virtio-fs share on /mnt before it
 * listens (as Kata's agent mounts the `kataShared` share) and says how it went on the console,
 * `KIT agent fs mounted <tag> on /mnt` or `KIT agent fs mount <tag> failed errno=<n>`, and in
 * the same words after `agent log: ` on the log channel (Kata's VMM has no console).
 *
 * PID 1 ignores SIGPIPE by default (the kernel does not deliver default-action signals to
 * init), so writing to a connection the peer closed just fails with EPIPE.
 */

#define KIT_AF_VSOCK 40
#define KIT_SOCK_STREAM 1
#define KIT_SOCK_CLOEXEC 02000000
#define KIT_VMADDR_CID_ANY 0xffffffffu
#define KIT_VMADDR_CID_HOST 2u
#define AGENT_PORT 1024u
#define AGENT_LOG_PORT 1025u

/* struct sockaddr_vm of <linux/vm_sockets.h> (16 bytes) */
struct kit_sockaddr_vm {
	unsigned short svm_family;
	unsigned short svm_reserved1;
	unsigned int svm_port;
	unsigned int svm_cid;
	unsigned char svm_flags;
	unsigned char svm_zero[3];
};

static struct kit_sockaddr_vm vsock_addr(unsigned int cid, unsigned int port)
{
	struct kit_sockaddr_vm addr;

	memset(&addr, 0, sizeof(addr));
	addr.svm_family = KIT_AF_VSOCK;
	addr.svm_cid = cid;
	addr.svm_port = port;
	return addr;
}

/* Returns the result of a raw system call, setting errno as nolibc's wrappers do. */
static long checked(long ret)
{
	if (ret < 0) {
		SET_ERRNO(-ret);
		return -1;
	}
	return ret;
}

static int vsock_socket(void)
{
	return checked(my_syscall3(__NR_socket, KIT_AF_VSOCK, KIT_SOCK_STREAM | KIT_SOCK_CLOEXEC, 0));
}

/* Appends a number to the line in `buf`. */
static void append_num(char *buf, unsigned long v)
{
	char num[24];

	u64toa_r(v, num);
	append(buf, num);
}

/* Prints `KIT agent <what> errno=<errno>` in one write. */
static void agent_error(const char *what)
{
	char line[LINE_MAX_LEN] = "KIT agent ";

	append(line, what);
	append(line, " errno=");
	append_num(line, errno);
	append(line, "\n");
	put(line);
}

/* Writes all of buf; -1 on an error. */
static int write_all(int fd, const char *buf, size_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return -1;
		buf += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Writes `text` and a newline to `fd` in one write; -1 on an error. */
static int reply(int fd, const char *prefix, const char *text)
{
	static char out[2 * LINE_MAX_LEN];
	size_t plen = strlen(prefix), tlen = strlen(text);

	memcpy(out, prefix, plen);
	memcpy(out + plen, text, tlen);
	out[plen + tlen] = '\n';
	return write_all(fd, out, plen + tlen + 1);
}

/* The kernel release (struct utsname: six fields of 65 bytes, release is the third). */
static void kernel_release(char *out, int size)
{
	static char uts[6][65];
	int n;

	if (checked(my_syscall1(__NR_uname, uts)) == 0) {
		uts[2][64] = 0;
		out[0] = 0;
		for (n = 0; uts[2][n] && n < size - 1; n++)
			out[n] = uts[2][n];
		out[n] = 0;
		return;
	}
	if (read_file("/proc/sys/kernel/osrelease", out, size) > 0 && out[strlen(out) - 1] == '\n')
		out[strlen(out) - 1] = 0;
}

/* Replies with the escaped content of `path`, or `error cat <path> errno=<n>`; -1 on an error. */
static int reply_cat(int fd, const char *path)
{
	/* the reply plus its newline fits reply()'s buffer */
	static char content[2 * LINE_MAX_LEN - 1];
	char line[LINE_MAX_LEN] = "error cat ";
	const char *step;

	content[0] = 0;
	if (append_escaped_file(content, sizeof(content), path, &step) == 0)
		return reply(fd, "", content);
	append(line, path);
	append(line, " errno=");
	append_num(line, errno);
	return reply(fd, "", line);
}

enum { KEEP, CLOSE, RESTART };

/* Answers one request line; returns KEEP, CLOSE or RESTART (or CLOSE when the reply failed). */
static int answer(int fd, char *line)
{
	size_t len = strlen(line);
	char release[128] = "unknown";
	int rc;

	if (len > 0 && line[len - 1] == '\r')
		line[--len] = 0;
	if (!strcmp(line, "ping")) {
		rc = reply(fd, "", "pong");
	} else if (!strcmp(line, "echo")) {
		rc = reply(fd, "", "");
	} else if (!strncmp(line, "echo ", 5)) {
		rc = reply(fd, "", line + 5);
	} else if (!strcmp(line, "uname")) {
		kernel_release(release, sizeof(release));
		rc = reply(fd, "", release);
	} else if (!strncmp(line, "cat ", 4)) {
		rc = reply_cat(fd, line + 4);
	} else if (!strcmp(line, "quit")) {
		reply(fd, "", "bye");
		return CLOSE;
	} else if (!strcmp(line, "reboot")) {
		reply(fd, "", "bye");
		return RESTART;
	} else {
		rc = reply(fd, "error unknown command: ", line);
	}
	return rc < 0 ? CLOSE : KEEP;
}

/* Serves one accepted connection until EOF, an error or `quit`; returns CLOSE or RESTART. */
static int serve(int fd)
{
	static char in[LINE_MAX_LEN];
	int have = 0, discarding = 0;

	for (;;) {
		ssize_t n = read(fd, in + have, sizeof(in) - 1 - have);
		int start = 0, i;

		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return CLOSE;
		have += n;
		for (i = 0; i < have; i++) {
			int what;

			if (in[i] != '\n')
				continue;
			in[i] = 0;
			if (discarding) {
				discarding = 0;
			} else if ((what = answer(fd, in + start)) != KEEP) {
				return what;
			}
			start = i + 1;
		}
		memmove(in, in + start, have - start);
		have -= start;
		if (have == (int)sizeof(in) - 1) {
			/* no newline in a full buffer: answer once, drop up to the next newline */
			if (!discarding && reply(fd, "", "error line too long") < 0)
				return CLOSE;
			discarding = 1;
			have = 0;
		}
	}
}

/*
 * With `kit.fstag=<tag>` on the command line: mounts that virtio-fs share on /mnt, writes
 * `fs mounted <tag> on /mnt` or `fs mount <tag> failed errno=<n>` into `status` (of
 * LINE_MAX_LEN bytes) and prints it after `KIT agent `. Without kit.fstag `status` is empty.
 */
static void agent_mount_share(char *status)
{
	char tag[64];
	char line[LINE_MAX_LEN] = "KIT agent ";

	status[0] = 0;
	if (!cmdline_value("kit.fstag", tag, sizeof(tag)))
		return;
	if (mount(tag, "/mnt", "virtiofs", 0, 0) < 0) {
		append(status, "fs mount ");
		append(status, tag);
		append(status, " failed errno=");
		append_num(status, errno);
	} else {
		append(status, "fs mounted ");
		append(status, tag);
		append(status, " on /mnt");
	}
	append(line, status);
	append(line, "\n");
	put(line);
}

/* Connects to the host's port 1025 and sends the log lines; the descriptor, or -1. */
static int agent_log_connect(const char *fs_status)
{
	struct kit_sockaddr_vm addr = vsock_addr(KIT_VMADDR_CID_HOST, AGENT_LOG_PORT);
	char line[LINE_MAX_LEN] = "agent log: started\n";
	int log_fd = vsock_socket();

	if (fs_status[0]) {
		append(line, "agent log: ");
		append(line, fs_status);
		append(line, "\n");
	}
	if (log_fd < 0 || checked(my_syscall3(__NR_connect, log_fd, &addr, sizeof(addr))) < 0) {
		agent_error("log failed");
		return -1;
	}
	if (write_all(log_fd, line, strlen(line)) < 0) {
		agent_error("log write failed");
		return -1;
	}
	put("KIT agent log connected to cid 2 port 1025\n");
	return log_fd;
}

static void agent(void)
{
	struct kit_sockaddr_vm addr = vsock_addr(KIT_VMADDR_CID_ANY, AGENT_PORT);
	char fs_status[LINE_MAX_LEN];
	unsigned long served = 0;
	int listener, failures = 0;

	mount_tmpfs();
	agent_mount_share(fs_status);
	listener = vsock_socket();
	if (listener < 0) {
		agent_error("socket(AF_VSOCK) failed");
		return;
	}
	if (checked(my_syscall3(__NR_bind, listener, &addr, sizeof(addr))) < 0) {
		agent_error("bind to vsock port 1024 failed");
		return;
	}
	if (checked(my_syscall2(__NR_listen, listener, 8)) < 0) {
		agent_error("listen failed");
		return;
	}
	put("KIT agent listening on vsock port 1024\n");

	/*
	 * The log channel, as Kata's agent sends its logs to the host's port 1025; its
	 * descriptor stays open for the agent's lifetime.
	 */
	agent_log_connect(fs_status);

	for (;;) {
		struct kit_sockaddr_vm peer;
		int peer_len = sizeof(peer);
		char line[LINE_MAX_LEN] = "KIT agent connection ";
		int fd, what;

		memset(&peer, 0, sizeof(peer));
		fd = checked(my_syscall4(__NR_accept4, listener, &peer, &peer_len, KIT_SOCK_CLOEXEC));
		if (fd < 0) {
			agent_error("accept failed");
			if (errno != EINTR && ++failures >= 10)
				return;
			continue;
		}
		failures = 0;
		served++;
		append_num(line, served);
		append(line, " from cid ");
		append_num(line, peer.svm_cid);
		append(line, " port ");
		append_num(line, peer.svm_port);
		append(line, "\n");
		put(line);

		what = serve(fd);
		close(fd);
		line[0] = 0;
		append(line, "KIT agent connection ");
		append_num(line, served);
		append(line, " closed\n");
		put(line);
		if (what == RESTART)
			return;
	}
}

/* ---- kit.mode=fs ------------------------------------------------------------------------
 *
 * Exercises a virtio-fs device (e.g. a vhost-user-fs device with virtiofsd behind it):
 *
 *   1. mount -t virtiofs <tag> /mnt, the tag from `kit.fstag=` (default `myfs`)
 *   2. read /mnt/hello.txt and print `KIT fs read: <content>` (its last newline dropped, any
 *      other newline or carriage return shown as `\n`/`\r`, at most 400 bytes)
 *   3. create /mnt/from-guest.txt with the line FS_GUEST_LINE, fsync and close it
 *   4. count the entries of /mnt/many (without . and ..): `KIT fs many: <n>`
 *   5. print `KIT fs done` and restart
 *
 * A failed step prints `KIT fs error <step> errno=<n>` (steps: mount, open-hello, read-hello,
 * create, write, fsync, close, open-many, getdents) and restarts. The console log level is
 * set to 4 first, so that kernel errors still show but no informational message lands in
 * the middle of a line.
 */

#define FS_GUEST_LINE "written by the guest through virtio-fs\n"

/* Prints `KIT fs error <step> errno=<errno>` in one write. */
static void fs_error(const char *step)
{
	char line[LINE_MAX_LEN] = "KIT fs error ";

	append(line, step);
	append(line, " errno=");
	append_num(line, errno);
	append(line, "\n");
	put(line);
}

/* Prints `KIT fs read: <content>` from /mnt/hello.txt; -1 on an error. */
static int fs_read_hello(void)
{
	char line[LINE_MAX_LEN * 2] = "KIT fs read: ";
	const char *step;
	size_t len;

	/* room for the newline */
	if (append_escaped_file(line, sizeof(line) - 1, "/mnt/hello.txt", &step) < 0) {
		fs_error(!strcmp(step, "open") ? "open-hello" : "read-hello");
		return -1;
	}
	len = strlen(line);
	line[len++] = '\n';
	/* one write, so that no kernel message lands inside the line */
	write(1, line, len);
	return 0;
}

/* Creates /mnt/from-guest.txt with FS_GUEST_LINE and fsyncs it; -1 on an error. */
static int fs_write_file(void)
{
	int fd = open("/mnt/from-guest.txt", O_WRONLY | O_CREAT | O_TRUNC, 0644);

	if (fd < 0) {
		fs_error("create");
		return -1;
	}
	if (write_all(fd, FS_GUEST_LINE, strlen(FS_GUEST_LINE)) < 0) {
		fs_error("write");
		close(fd);
		return -1;
	}
	if (fsync(fd) < 0) {
		fs_error("fsync");
		close(fd);
		return -1;
	}
	if (close(fd) < 0) {
		fs_error("close");
		return -1;
	}
	return 0;
}

/* Prints `KIT fs many: <n>`, the entries of /mnt/many without . and ..; -1 on an error. */
static int fs_count_many(void)
{
	static char dents[4096];
	char line[LINE_MAX_LEN] = "KIT fs many: ";
	unsigned long count = 0;
	int fd = open("/mnt/many", O_RDONLY | O_DIRECTORY, 0);
	int n;

	if (fd < 0) {
		fs_error("open-many");
		return -1;
	}
	while ((n = getdents64(fd, (struct linux_dirent64 *)dents, sizeof(dents))) > 0) {
		int off = 0;

		while (off < n) {
			struct linux_dirent64 *d = (struct linux_dirent64 *)(dents + off);

			off += d->d_reclen;
			if (!strcmp(d->d_name, ".") || !strcmp(d->d_name, ".."))
				continue;
			count++;
		}
	}
	if (n < 0) {
		fs_error("getdents");
		close(fd);
		return -1;
	}
	close(fd);
	append_num(line, count);
	append(line, "\n");
	put(line);
	return 0;
}

/*
 * Sets the console log level to 4 (kernel errors show, informational messages do not) and
 * mounts the virtio-fs share tagged `kit.fstag=` (default myfs) on /mnt; -1 (reported) on an
 * error.
 */
static int fs_mount(void)
{
	char tag[64] = "myfs";

	my_syscall3(__NR_syslog, 8, 0, 4);
	cmdline_value("kit.fstag", tag, sizeof(tag));
	if (mount(tag, "/mnt", "virtiofs", 0, 0) < 0) {
		fs_error("mount");
		return -1;
	}
	return 0;
}

static void fs_mode(void)
{
	if (fs_mount() < 0)
		return;
	if (fs_read_hello() < 0 || fs_write_file() < 0 || fs_count_many() < 0)
		return;
	put("KIT fs done\n");
}

/* ---- kit.mode=fsbench -------------------------------------------------------------------
 *
 * Measures a virtio-fs share, mounted as kit.mode=fs does, each phase between two console
 * lines that the host timestamps:
 *
 *   KIT fsbench read start
 *   KIT fsbench read done bytes=<n> guest_ms=<ms>   read(2) of /mnt/big, 1 MiB at a time
 *                                                   (as `dd if=/mnt/big of=/dev/null bs=1M`)
 *   KIT fsbench stat start
 *   KIT fsbench stat done files=<n> guest_ms=<ms>   lstat of every entry of /mnt/many (as the
 *                                                   stat calls of `ls -l`), names by getdents64
 *   KIT fsbench done
 *
 * guest_ms is the guest's CLOCK_MONOTONIC (10 ms steps with clocksource=jiffies). A failed step
 * prints `KIT fs error <step> errno=<n>` (mount, open-big, read-big, open-many, getdents,
 * stat) and the machine restarts.
 */

#define FSBENCH_CHUNK (1 << 20)
#define KIT_CLOCK_MONOTONIC 1
#define KIT_AT_SYMLINK_NOFOLLOW 0x100

/* The guest's CLOCK_MONOTONIC in milliseconds. */
static unsigned long monotonic_ms(void)
{
	struct { long sec; long nsec; } ts = { 0, 0 };

	my_syscall2(__NR_clock_gettime, KIT_CLOCK_MONOTONIC, &ts);
	return (unsigned long)ts.sec * 1000 + (unsigned long)ts.nsec / 1000000;
}

/* Prints `KIT fsbench <phase> done <what>=<count> guest_ms=<ms>` in one write. */
static void fsbench_done(const char *phase, const char *what, unsigned long count,
			 unsigned long since_ms)
{
	char line[LINE_MAX_LEN] = "KIT fsbench ";

	append(line, phase);
	append(line, " done ");
	append(line, what);
	append(line, "=");
	append_num(line, count);
	append(line, " guest_ms=");
	append_num(line, monotonic_ms() - since_ms);
	append(line, "\n");
	put(line);
}

/* Reads /mnt/big to its end, 1 MiB at a time; -1 (reported) on an error. */
static int fsbench_read(void)
{
	static char chunk[FSBENCH_CHUNK];
	unsigned long bytes = 0, t0;
	ssize_t n;
	int fd;

	put("KIT fsbench read start\n");
	t0 = monotonic_ms();
	fd = open("/mnt/big", O_RDONLY, 0);
	if (fd < 0) {
		fs_error("open-big");
		return -1;
	}
	while ((n = read(fd, chunk, sizeof(chunk))) > 0)
		bytes += (unsigned long)n;
	if (n < 0) {
		fs_error("read-big");
		close(fd);
		return -1;
	}
	close(fd);
	fsbench_done("read", "bytes", bytes, t0);
	return 0;
}

/* lstat()s each name in one getdents64 buffer of /mnt/many; the count, or -1 (reported). */
static long fsbench_stat_batch(int dir, const char *dents, int n)
{
	static char st[256]; /* struct stat is 144 bytes on x86-64 */
	long count = 0;
	int off = 0;

	while (off < n) {
		const struct linux_dirent64 *d = (const struct linux_dirent64 *)(dents + off);

		off += d->d_reclen;
		if (!strcmp(d->d_name, ".") || !strcmp(d->d_name, ".."))
			continue;
		if (checked(my_syscall4(__NR_newfstatat, dir, d->d_name, st,
					KIT_AT_SYMLINK_NOFOLLOW)) < 0) {
			fs_error("stat");
			return -1;
		}
		count++;
	}
	return count;
}

/* lstat()s every entry of /mnt/many; -1 (reported) on an error. */
static int fsbench_stat(void)
{
	static char dents[4096];
	unsigned long files = 0, t0;
	long batch;
	int fd, n;

	put("KIT fsbench stat start\n");
	t0 = monotonic_ms();
	fd = open("/mnt/many", O_RDONLY | O_DIRECTORY, 0);
	if (fd < 0) {
		fs_error("open-many");
		return -1;
	}
	while ((n = getdents64(fd, (struct linux_dirent64 *)dents, sizeof(dents))) > 0) {
		batch = fsbench_stat_batch(fd, dents, n);
		if (batch < 0) {
			close(fd);
			return -1;
		}
		files += (unsigned long)batch;
	}
	if (n < 0) {
		fs_error("getdents");
		close(fd);
		return -1;
	}
	close(fd);
	fsbench_done("stat", "files", files, t0);
	return 0;
}

static void fsbench_mode(void)
{
	if (fs_mount() < 0 || fsbench_read() < 0 || fsbench_stat() < 0)
		return;
	put("KIT fsbench done\n");
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
	} else if (!strcmp(mode, "agent")) {
		agent();
	} else if (!strcmp(mode, "fs")) {
		fs_mode();
	} else if (!strcmp(mode, "fsbench")) {
		fsbench_mode();
	} else {
		put("KIT unknown kit.mode=");
		put(mode);
		put("\n");
	}
	restart();
	return 0;
}
