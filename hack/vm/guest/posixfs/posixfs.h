/*
 * posixfs: the project's POSIX file-system conformance suite (shared declarations).
 *
 * A case is a function run in its own child process, with its own fresh empty
 * directory as cwd, umask 022 and root credentials.  It issues syscalls and
 * checks each result with the macros below; the first failed check writes one
 * line ("expected X, got Y (file:line: expression)") to the runner and ends the
 * child, so a case reports at most one failure and never runs on after a
 * broken precondition.  Cases that need another uid run a function through
 * pfs_as(), which forks again and drops to that uid; a failure there fails the
 * case the same way.
 *
 * Expectations are Linux's (the suite runs on Linux guests and hosts), not the
 * loosest POSIX reading: e.g. rmdir of a non-empty directory is ENOTEMPTY.
 */
#ifndef POSIXFS_H
#define POSIXFS_H

#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

struct pfs_case {
	const char *name; /* "group/case"; group is the part before the slash */
	void (*fn)(void);
};

/* One NULL-terminated table per source file (t_*.c). */
extern const struct pfs_case pfs_cases_open[];
extern const struct pfs_case pfs_cases_dir[];
extern const struct pfs_case pfs_cases_rename[];
extern const struct pfs_case pfs_cases_attr[];
extern const struct pfs_case pfs_cases_special[];
extern const struct pfs_case pfs_cases_perm[];

/* Unprivileged identities used by the permission cases. */
#define UID_A 1000
#define GID_A 1000
#define UID_B 2000
#define GID_B 2000

__attribute__((noreturn, format(printf, 4, 5)))
void pfs_fail(const char *file, int line, const char *expr, const char *fmt, ...);
const char *pfs_errname(int err);

#define PFS_LOC __FILE__, __LINE__

/* The call must not return -1; evaluates to its result. */
#define OK(call) ({                                                        \
	long long r_ = (long long)(call);                                  \
	if (r_ == -1)                                                      \
		pfs_fail(PFS_LOC, #call, "expected success, got %s",       \
			 pfs_errname(errno));                              \
	r_;                                                                \
})

/* The call must return -1 with errno e. */
#define ERR(call, e) do {                                                  \
	errno = 0;                                                         \
	long long r_ = (long long)(call);                                  \
	int e_ = errno;                                                    \
	if (r_ != -1 || e_ != (e))                                         \
		pfs_fail(PFS_LOC, #call, "expected %s, got %s",            \
			 pfs_errname(e), r_ == -1 ? pfs_errname(e_) : "success"); \
} while (0)

#define EQ(a, b) do {                                                      \
	long long a_ = (long long)(a), b_ = (long long)(b);                \
	if (a_ != b_)                                                      \
		pfs_fail(PFS_LOC, #a, "expected %lld, got %lld", b_, a_);  \
} while (0)

/* Mode bits, printed in octal. */
#define EQ_MODE(a, b) do {                                                 \
	unsigned a_ = (unsigned)(a), b_ = (unsigned)(b);                   \
	if (a_ != b_)                                                      \
		pfs_fail(PFS_LOC, #a, "expected 0%o, got 0%o", b_, a_);    \
} while (0)

#define CHECK(cond) do {                                                   \
	if (!(cond))                                                       \
		pfs_fail(PFS_LOC, #cond, "expected true, got false");      \
} while (0)

/* Timestamps: a is strictly later than b. */
#define LATER(a, b) do {                                                   \
	struct timespec a_ = (a), b_ = (b);                                \
	if (pfs_tscmp(a_, b_) <= 0)                                        \
		pfs_fail(PFS_LOC, #a, "expected later than %lld.%09ld, got %lld.%09ld", \
			 (long long)b_.tv_sec, b_.tv_nsec,                 \
			 (long long)a_.tv_sec, a_.tv_nsec);                \
} while (0)

#define SAME_TIME(a, b) do {                                               \
	struct timespec a_ = (a), b_ = (b);                                \
	if (pfs_tscmp(a_, b_) != 0)                                        \
		pfs_fail(PFS_LOC, #a, "expected %lld.%09ld, got %lld.%09ld", \
			 (long long)b_.tv_sec, b_.tv_nsec,                 \
			 (long long)a_.tv_sec, a_.tv_nsec);                \
} while (0)

/* ---- helpers (runner.c) ---- */

int pfs_tscmp(struct timespec a, struct timespec b);
struct stat pfs_lstat(const char *path);        /* fails the case on error */
void pfs_mkfile(const char *path, mode_t mode, const void *data, size_t len);
void pfs_fill(unsigned char *buf, size_t len, unsigned seed);
void pfs_read_exact(int fd, off_t off, void *buf, size_t len);
int pfs_is_zero(const unsigned char *buf, size_t len);
/* Wait (by touching a probe file, no sleeping) until the file system's clock
 * is past ts, so the next change gets a strictly later timestamp. */
void pfs_tick(struct timespec ts);
/* Run fn(arg) in a child with uid/gid (no supplementary groups). */
void pfs_as(uid_t uid, gid_t gid, void (*fn)(void *), void *arg);
/* A name of n bytes ('n' repeated); the buffer is static. */
const char *pfs_name(size_t n);

#endif
