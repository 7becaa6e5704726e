/*
 * posixfs runner: posixfs [-l] [-f SUBSTRING] DIR
 *
 * Runs every case (or those whose name contains SUBSTRING) against DIR, which
 * must be an existing, writable directory on the file system under test, as
 * root.  Each case gets DIR/posixfs.PID/NNN (mode 0755), runs there in a
 * forked child with a 60 s alarm, and the directory is removed afterwards
 * (nftw, depth first); a failed removal fails the case.  Output, one line per
 * case, then one summary line:
 *
 *   ok N group/case
 *   not ok N group/case: expected X, got Y (file:line: expression)
 *   P passed, F failed
 *
 * Exit status 0 only if every selected case passed; 2 on usage errors.
 * -l lists the case names and exits.
 */
#include "posixfs.h"

#include <ftw.h>
#include <grp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#define CASE_TIMEOUT 60
#define TICK_LIMIT_NS (10LL * 1000000000LL)

static int msg_fd = -1; /* write end of the current case's message pipe */
static char base_dir[4096];

static const struct pfs_case *const tables[] = {
	pfs_cases_open, pfs_cases_dir, pfs_cases_rename,
	pfs_cases_attr, pfs_cases_special, pfs_cases_perm,
};

/* ---- failure reporting and helpers used by the cases ---- */

void pfs_fail(const char *file, int line, const char *expr, const char *fmt, ...)
{
	char buf[1024];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(buf, sizeof buf, fmt, ap);
	va_end(ap);
	if (n < 0 || (size_t)n >= sizeof buf)
		n = (int)sizeof buf - 1;
	n += snprintf(buf + n, sizeof buf - (size_t)n, " (%s:%d: %s)\n",
		      strrchr(file, '/') ? strrchr(file, '/') + 1 : file, line, expr);
	if ((size_t)n >= sizeof buf)
		n = (int)sizeof buf - 1;
	if (write(msg_fd, buf, (size_t)n) < 0)
		_exit(3);
	_exit(1);
}

const char *pfs_errname(int err)
{
	static char buf[32];
	const char *name = strerrorname_np(err);

	if (name != NULL)
		return name;
	snprintf(buf, sizeof buf, "errno %d", err);
	return buf;
}

int pfs_tscmp(struct timespec a, struct timespec b)
{
	if (a.tv_sec != b.tv_sec)
		return a.tv_sec < b.tv_sec ? -1 : 1;
	if (a.tv_nsec != b.tv_nsec)
		return a.tv_nsec < b.tv_nsec ? -1 : 1;
	return 0;
}

struct stat pfs_lstat(const char *path)
{
	struct stat st;

	OK(lstat(path, &st));
	return st;
}

void pfs_mkfile(const char *path, mode_t mode, const void *data, size_t len)
{
	int fd = (int)OK(open(path, O_CREAT | O_EXCL | O_WRONLY, mode));

	if (len > 0)
		EQ(write(fd, data, len), len);
	OK(close(fd));
}

void pfs_fill(unsigned char *buf, size_t len, unsigned seed)
{
	unsigned x = seed * 2654435761u + 1;

	for (size_t i = 0; i < len; i++) {
		x ^= x << 13;
		x ^= x >> 17;
		x ^= x << 5;
		buf[i] = (unsigned char)x;
	}
}

void pfs_read_exact(int fd, off_t off, void *buf, size_t len)
{
	size_t done = 0;

	while (done < len) {
		ssize_t n = OK(pread(fd, (char *)buf + done, len - done, off + (off_t)done));
		if (n == 0)
			pfs_fail(PFS_LOC, "pread", "expected %zu bytes, got EOF after %zu",
				 len, done);
		done += (size_t)n;
	}
}

int pfs_is_zero(const unsigned char *buf, size_t len)
{
	for (size_t i = 0; i < len; i++)
		if (buf[i] != 0)
			return 0;
	return 1;
}

void pfs_tick(struct timespec ts)
{
	char probe[4200];
	struct timespec start, now;
	struct stat st;
	int fd;

	snprintf(probe, sizeof probe, "%s/tick.%d", base_dir, (int)getpid());
	fd = (int)OK(open(probe, O_CREAT | O_WRONLY, 0600));
	OK(clock_gettime(CLOCK_MONOTONIC, &start));
	for (;;) {
		OK(futimens(fd, NULL));
		OK(fstat(fd, &st));
		if (pfs_tscmp(st.st_ctim, ts) > 0)
			break;
		OK(clock_gettime(CLOCK_MONOTONIC, &now));
		if ((now.tv_sec - start.tv_sec) * 1000000000LL + now.tv_nsec - start.tv_nsec >
		    TICK_LIMIT_NS)
			pfs_fail(PFS_LOC, "pfs_tick", "expected the clock to pass %lld.%09ld, "
				 "got %lld.%09ld", (long long)ts.tv_sec, ts.tv_nsec,
				 (long long)st.st_ctim.tv_sec, st.st_ctim.tv_nsec);
	}
	OK(close(fd));
	OK(unlink(probe));
}

void pfs_as(uid_t uid, gid_t gid, void (*fn)(void *), void *arg)
{
	int status;
	pid_t pid = (pid_t)OK(fork());

	if (pid == 0) {
		OK(setgroups(0, NULL));
		OK(setresgid(gid, gid, gid));
		OK(setresuid(uid, uid, uid));
		fn(arg);
		_exit(0);
	}
	OK(waitpid(pid, &status, 0));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		_exit(1); /* the child already wrote the message */
}

const char *pfs_name(size_t n)
{
	static char buf[8192];

	if (n >= sizeof buf)
		n = sizeof buf - 1;
	memset(buf, 'n', n);
	buf[n] = '\0';
	return buf;
}

/* ---- the runner ---- */

static int remove_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
	(void)st;
	(void)ftw;
	return flag == FTW_DP ? rmdir(path) : unlink(path);
}

/* Run one case; returns 1 if it passed.  msg gets the failure text. */
static int run_case(const struct pfs_case *c, const char *dir, char *msg, size_t cap)
{
	int fds[2], status;
	size_t len = 0;
	ssize_t n;
	pid_t pid;

	msg[0] = '\0';
	if (pipe(fds) != 0) {
		snprintf(msg, cap, "pipe: %s", pfs_errname(errno));
		return 0;
	}
	fflush(stdout);
	pid = fork();
	if (pid == 0) {
		close(fds[0]);
		msg_fd = fds[1];
		alarm(CASE_TIMEOUT);
		umask(022);
		OK(chdir(dir));
		c->fn();
		_exit(0);
	}
	close(fds[1]);
	while (len + 1 < cap && (n = read(fds[0], msg + len, cap - 1 - len)) > 0)
		len += (size_t)n;
	msg[len] = '\0';
	close(fds[0]);
	if (pid < 0 || waitpid(pid, &status, 0) != pid) {
		snprintf(msg, cap, "fork/wait: %s", pfs_errname(errno));
		return 0;
	}
	if (strchr(msg, '\n'))
		*strchr(msg, '\n') = '\0';
	if (WIFSIGNALED(status)) {
		snprintf(msg, cap, "killed by signal %d%s", WTERMSIG(status),
			 WTERMSIG(status) == SIGALRM ? " (timeout)" : "");
		return 0;
	}
	if (WEXITSTATUS(status) != 0 && msg[0] == '\0')
		snprintf(msg, cap, "exit status %d", WEXITSTATUS(status));
	return WEXITSTATUS(status) == 0;
}

int main(int argc, char **argv)
{
	const char *filter = NULL;
	int list = 0, opt, number = 0, passed = 0, failed = 0;
	char dir[4200], msg[4400];

	while ((opt = getopt(argc, argv, "lf:")) != -1) {
		if (opt == 'l')
			list = 1;
		else if (opt == 'f')
			filter = optarg;
		else
			return 2;
	}
	if (!list && optind + 1 != argc) {
		fprintf(stderr, "usage: posixfs [-l] [-f SUBSTRING] DIR\n");
		return 2;
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	if (!list) {
		snprintf(base_dir, sizeof base_dir, "%s/posixfs.%d", argv[optind], (int)getpid());
		if (mkdir(base_dir, 0755) != 0) {
			fprintf(stderr, "posixfs: mkdir %s: %s\n", base_dir, strerror(errno));
			return 2;
		}
	}
	for (size_t t = 0; t < sizeof tables / sizeof tables[0]; t++) {
		for (const struct pfs_case *c = tables[t]; c->name; c++) {
			if (filter && !strstr(c->name, filter))
				continue;
			number++;
			if (list) {
				printf("%s\n", c->name);
				continue;
			}
			snprintf(dir, sizeof dir, "%s/%03d", base_dir, number);
			if (mkdir(dir, 0755) != 0 || chmod(dir, 0755) != 0) {
				snprintf(msg, sizeof msg, "mkdir %s: %s", dir, strerror(errno));
			} else if (run_case(c, dir, msg, sizeof msg)) {
				if (nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS) != 0)
					snprintf(msg, sizeof msg, "cleanup of %s: %s", dir,
						 strerror(errno));
			}
			if (msg[0] == '\0') {
				passed++;
				printf("ok %d %s\n", number, c->name);
			} else {
				failed++;
				printf("not ok %d %s: %s\n", number, c->name, msg);
				nftw(dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
			}
		}
	}
	if (list)
		return 0;
	if (rmdir(base_dir) != 0)
		fprintf(stderr, "posixfs: rmdir %s: %s\n", base_dir, strerror(errno));
	printf("%d passed, %d failed\n", passed, failed);
	return failed == 0 && number > 0 ? 0 : 1;
}
