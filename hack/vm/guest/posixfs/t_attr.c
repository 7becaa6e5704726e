/*
 * posixfs groups chmod, chown, utimens, times: mode and ownership changes,
 * setting timestamps, and which operations update mtime/ctime.
 */
#include "posixfs.h"

#include <string.h>

static const struct timespec TS_A = {1000000000, 123456789};
static const struct timespec TS_B = {1200000000, 987654321};

/* ---- chmod ---- */

static void chmod_roundtrip(void)
{
	static const mode_t modes[] = {0, 0777, 07777, 0644, 04711, 02640, 01600};

	pfs_mkfile("f", 0644, NULL, 0);
	OK(mkdir("d", 0755));
	for (size_t i = 0; i < sizeof modes / sizeof modes[0]; i++) {
		OK(chmod("f", modes[i]));
		EQ_MODE(pfs_lstat("f").st_mode, S_IFREG | modes[i]);
		OK(chmod("d", modes[i]));
		EQ_MODE(pfs_lstat("d").st_mode, S_IFDIR | modes[i]);
	}
}

static void chmod_fchmod(void)
{
	struct stat st;
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));

	OK(fchmod(fd, 0400));
	OK(fstat(fd, &st));
	EQ_MODE(st.st_mode, S_IFREG | 0400);
	EQ(write(fd, "x", 1), 1); /* the fd was opened for writing before */
	OK(close(fd));
	EQ_MODE(pfs_lstat("f").st_mode, S_IFREG | 0400);
}

static void chmod_follows_symlink(void)
{
	pfs_mkfile("f", 0644, NULL, 0);
	OK(symlink("f", "l"));
	OK(chmod("l", 0600));
	EQ_MODE(pfs_lstat("f").st_mode, S_IFREG | 0600);
	EQ_MODE(pfs_lstat("l").st_mode, S_IFLNK | 0777);
}

static void chmod_updates_ctime_only(void)
{
	struct stat before, after;

	pfs_mkfile("f", 0644, NULL, 0);
	before = pfs_lstat("f");
	pfs_tick(before.st_ctim);
	OK(chmod("f", 0600));
	after = pfs_lstat("f");
	LATER(after.st_ctim, before.st_ctim);
	SAME_TIME(after.st_mtim, before.st_mtim);
}

static void chmod_errors(void)
{
	pfs_mkfile("f", 0644, NULL, 0);
	ERR(chmod("missing", 0644), ENOENT);
	ERR(chmod("f/x", 0644), ENOTDIR);
	ERR(chmod(pfs_name(256), 0644), ENAMETOOLONG);
}

/* ---- chown ---- */

static void chown_basic(void)
{
	struct stat st;

	pfs_mkfile("f", 0644, NULL, 0);
	OK(chown("f", 1000, 2000));
	st = pfs_lstat("f");
	EQ(st.st_uid, 1000);
	EQ(st.st_gid, 2000);
	OK(chown("f", (uid_t)-1, (gid_t)-1));
	st = pfs_lstat("f");
	EQ(st.st_uid, 1000);
	EQ(st.st_gid, 2000);
	OK(chown("f", (uid_t)-1, 3000));
	st = pfs_lstat("f");
	EQ(st.st_uid, 1000);
	EQ(st.st_gid, 3000);
	OK(chown("f", 0, 0));
	EQ(pfs_lstat("f").st_uid, 0);
}

static void chown_lchown_symlink(void)
{
	struct stat st;

	pfs_mkfile("f", 0644, NULL, 0);
	OK(symlink("f", "l"));
	OK(lchown("l", 1000, 1001));
	st = pfs_lstat("l");
	EQ(st.st_uid, 1000);
	EQ(st.st_gid, 1001);
	EQ(pfs_lstat("f").st_uid, 0);
	OK(chown("l", 2000, 2001));
	st = pfs_lstat("f");
	EQ(st.st_uid, 2000);
	EQ(st.st_gid, 2001);
	EQ(pfs_lstat("l").st_uid, 1000);
}

static void chown_fchown(void)
{
	struct stat st;
	int fd;

	OK(mkdir("d", 0755));
	fd = (int)OK(open("d", O_RDONLY | O_DIRECTORY));
	OK(fchown(fd, 1000, 1000));
	OK(fstat(fd, &st));
	EQ(st.st_uid, 1000);
	OK(close(fd));
	EQ(pfs_lstat("d").st_gid, 1000);
}

static void chown_clears_setid(void)
{
	pfs_mkfile("u", 04755, NULL, 0);
	OK(chmod("u", 04755));
	OK(chown("u", 1000, 1000));
	EQ_MODE(pfs_lstat("u").st_mode, S_IFREG | 0755);
	pfs_mkfile("ug", 0644, NULL, 0);
	OK(chmod("ug", 06755));
	OK(chown("ug", 1000, (gid_t)-1));
	EQ_MODE(pfs_lstat("ug").st_mode, S_IFREG | 0755);
	/* setgid without group execute is not a privilege bit: kept */
	pfs_mkfile("g", 0644, NULL, 0);
	OK(chmod("g", 02745));
	OK(chown("g", 1000, 1000));
	EQ_MODE(pfs_lstat("g").st_mode, S_IFREG | 02745);
	/* directories keep both */
	OK(mkdir("d", 0755));
	OK(chmod("d", 06755));
	OK(chown("d", 1000, 1000));
	EQ_MODE(pfs_lstat("d").st_mode, S_IFDIR | 06755);
}

static void chown_updates_ctime(void)
{
	struct stat before, after;

	pfs_mkfile("f", 0644, NULL, 0);
	before = pfs_lstat("f");
	pfs_tick(before.st_ctim);
	OK(chown("f", 1000, 1000));
	after = pfs_lstat("f");
	LATER(after.st_ctim, before.st_ctim);
	SAME_TIME(after.st_mtim, before.st_mtim);
}

/* ---- utimens ---- */

static void utimens_explicit_ns(void)
{
	struct timespec ts[2] = {TS_A, TS_B}, far[2] = {{4000000000LL, 1}, {4000000001LL, 999999999}};
	struct stat st;

	pfs_mkfile("f", 0644, NULL, 0);
	OK(utimensat(AT_FDCWD, "f", ts, 0));
	st = pfs_lstat("f");
	SAME_TIME(st.st_atim, TS_A);
	SAME_TIME(st.st_mtim, TS_B);
	OK(utimensat(AT_FDCWD, "f", far, 0)); /* past 2038 */
	st = pfs_lstat("f");
	SAME_TIME(st.st_atim, far[0]);
	SAME_TIME(st.st_mtim, far[1]);
}

static void utimens_omit(void)
{
	struct timespec ts[2] = {TS_A, TS_B}, c = {5, 6};
	struct stat st;

	pfs_mkfile("f", 0644, NULL, 0);
	OK(utimensat(AT_FDCWD, "f", ts, 0));
	ts[0].tv_nsec = UTIME_OMIT;
	ts[1] = c;
	OK(utimensat(AT_FDCWD, "f", ts, 0));
	st = pfs_lstat("f");
	SAME_TIME(st.st_atim, TS_A);
	SAME_TIME(st.st_mtim, c);
	ts[0] = TS_B;
	ts[1].tv_nsec = UTIME_OMIT;
	OK(utimensat(AT_FDCWD, "f", ts, 0));
	st = pfs_lstat("f");
	SAME_TIME(st.st_atim, TS_B);
	SAME_TIME(st.st_mtim, c);
}

/* The file system's clock, read off a probe file touched with UTIME_NOW.  With
 * a FUSE writeback cache the guest keeps a regular file's mtime itself (guest
 * clock) while atime "now" still comes from the daemon (host clock), so each
 * timestamp is bracketed by the probe's timestamp of the same kind. */
static void fs_now(const char *probe, struct timespec *atime, struct timespec *mtime)
{
	int fd = (int)OK(open(probe, O_CREAT | O_WRONLY, 0644));
	struct stat st;

	OK(futimens(fd, NULL));
	OK(close(fd));
	st = pfs_lstat(probe);
	*atime = st.st_atim;
	*mtime = st.st_mtim;
}

#define BETWEEN(t, lo, hi) CHECK(pfs_tscmp((t), (lo)) >= 0 && pfs_tscmp((t), (hi)) <= 0)

static void utimens_now(void)
{
	struct timespec ts[2] = {TS_A, TS_B}, alo, ahi, mlo, mhi;
	struct stat st;

	pfs_mkfile("f", 0644, NULL, 0);
	OK(utimensat(AT_FDCWD, "f", ts, 0));
	fs_now("probe", &alo, &mlo);
	ts[0].tv_nsec = UTIME_OMIT;
	ts[1].tv_nsec = UTIME_NOW;
	OK(utimensat(AT_FDCWD, "f", ts, 0));
	fs_now("probe", &ahi, &mhi);
	st = pfs_lstat("f");
	SAME_TIME(st.st_atim, TS_A);
	BETWEEN(st.st_mtim, mlo, mhi);
	fs_now("probe", &alo, &mlo);
	OK(utimensat(AT_FDCWD, "f", NULL, 0));
	fs_now("probe", &ahi, &mhi);
	st = pfs_lstat("f");
	BETWEEN(st.st_atim, alo, ahi);
	BETWEEN(st.st_mtim, mlo, mhi);
}

static void utimens_symlink_nofollow(void)
{
	struct timespec ts[2] = {TS_A, TS_B}, tt[2] = {{300, 0}, {400, 0}};
	struct stat st;

	pfs_mkfile("f", 0644, NULL, 0);
	OK(symlink("f", "l"));
	OK(utimensat(AT_FDCWD, "f", tt, 0));
	OK(utimensat(AT_FDCWD, "l", ts, AT_SYMLINK_NOFOLLOW));
	st = pfs_lstat("l");
	SAME_TIME(st.st_mtim, TS_B);
	st = pfs_lstat("f");
	SAME_TIME(st.st_mtim, tt[1]);
	OK(utimensat(AT_FDCWD, "l", ts, 0)); /* follows */
	SAME_TIME(pfs_lstat("f").st_mtim, TS_B);
}

static void utimens_futimens_and_dir(void)
{
	struct timespec ts[2] = {TS_A, TS_B};
	int fd;

	OK(mkdir("d", 0755));
	fd = (int)OK(open("d", O_RDONLY | O_DIRECTORY));
	OK(futimens(fd, ts));
	OK(close(fd));
	SAME_TIME(pfs_lstat("d").st_mtim, TS_B);
	fd = (int)OK(open("f", O_CREAT | O_RDONLY, 0644));
	OK(futimens(fd, ts));
	OK(close(fd));
	SAME_TIME(pfs_lstat("f").st_atim, TS_A);
}

static void utimens_updates_ctime(void)
{
	struct timespec ts[2] = {TS_A, TS_B};
	struct stat before, after;

	pfs_mkfile("f", 0644, NULL, 0);
	before = pfs_lstat("f");
	pfs_tick(before.st_ctim);
	OK(utimensat(AT_FDCWD, "f", ts, 0));
	after = pfs_lstat("f");
	LATER(after.st_ctim, before.st_ctim);
}

static void utimens_errors(void)
{
	struct timespec bad[2] = {{0, 1000000000}, {0, 0}};

	pfs_mkfile("f", 0644, NULL, 0);
	ERR(utimensat(AT_FDCWD, "missing", NULL, 0), ENOENT);
	ERR(utimensat(AT_FDCWD, "f", bad, 0), EINVAL);
	ERR(utimensat(AT_FDCWD, "f", NULL, 0x4000000), EINVAL);
}

/* ---- which operations touch which times ---- */

static void times_write_updates_mtime(void)
{
	struct stat before, after;
	int fd;

	pfs_mkfile("f", 0644, "abc", 3);
	before = pfs_lstat("f");
	pfs_tick(before.st_ctim);
	fd = (int)OK(open("f", O_WRONLY));
	EQ(pwrite(fd, "x", 1, 1), 1);
	OK(close(fd));
	after = pfs_lstat("f");
	LATER(after.st_mtim, before.st_mtim);
	LATER(after.st_ctim, before.st_ctim);
}

static void times_read_keeps_mtime(void)
{
	struct stat before, after;
	char buf[4];
	int fd;

	pfs_mkfile("f", 0644, "abc", 3);
	before = pfs_lstat("f");
	pfs_tick(before.st_ctim);
	fd = (int)OK(open("f", O_RDONLY));
	EQ(read(fd, buf, sizeof buf), 3);
	OK(close(fd));
	after = pfs_lstat("f");
	SAME_TIME(after.st_mtim, before.st_mtim);
	SAME_TIME(after.st_ctim, before.st_ctim);
}

static void times_create_updates_parent(void)
{
	struct stat before, after;

	OK(mkdir("d", 0755));
	before = pfs_lstat("d");
	pfs_tick(before.st_ctim);
	pfs_mkfile("d/f", 0644, NULL, 0);
	after = pfs_lstat("d");
	LATER(after.st_mtim, before.st_mtim);
	LATER(after.st_ctim, before.st_ctim);
	before = after;
	pfs_tick(before.st_ctim);
	OK(symlink("f", "d/l"));
	after = pfs_lstat("d");
	LATER(after.st_mtim, before.st_mtim);
}

static void times_new_file_consistent(void)
{
	struct stat st;

	pfs_mkfile("f", 0644, NULL, 0);
	st = pfs_lstat("f");
	/* a new file's three times are set together */
	SAME_TIME(st.st_mtim, st.st_ctim);
	SAME_TIME(st.st_atim, st.st_mtim);
}

const struct pfs_case pfs_cases_attr[] = {
	{"chmod/roundtrip", chmod_roundtrip},
	{"chmod/fchmod", chmod_fchmod},
	{"chmod/follows_symlink", chmod_follows_symlink},
	{"chmod/updates_ctime_only", chmod_updates_ctime_only},
	{"chmod/errors", chmod_errors},
	{"chown/basic", chown_basic},
	{"chown/lchown_symlink", chown_lchown_symlink},
	{"chown/fchown", chown_fchown},
	{"chown/clears_setid", chown_clears_setid},
	{"chown/updates_ctime", chown_updates_ctime},
	{"utimens/explicit_ns", utimens_explicit_ns},
	{"utimens/omit", utimens_omit},
	{"utimens/now", utimens_now},
	{"utimens/symlink_nofollow", utimens_symlink_nofollow},
	{"utimens/futimens_and_dir", utimens_futimens_and_dir},
	{"utimens/updates_ctime", utimens_updates_ctime},
	{"utimens/errors", utimens_errors},
	{"times/write_updates_mtime", times_write_updates_mtime},
	{"times/read_keeps_mtime", times_read_keeps_mtime},
	{"times/create_updates_parent", times_create_updates_parent},
	{"times/new_file_consistent", times_new_file_consistent},
	{NULL, NULL},
};
