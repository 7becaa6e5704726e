/*
 * posixfs group rename: rename(2) and renameat2(2) (called through syscall(2):
 * RENAME_NOREPLACE, RENAME_EXCHANGE, RENAME_WHITEOUT).
 */
#include "posixfs.h"

#include <string.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>

#ifndef RENAME_NOREPLACE
#define RENAME_NOREPLACE (1 << 0)
#define RENAME_EXCHANGE (1 << 1)
#define RENAME_WHITEOUT (1 << 2)
#endif

static long rename2(const char *from, const char *to, unsigned flags)
{
	return syscall(SYS_renameat2, AT_FDCWD, from, AT_FDCWD, to, flags);
}

static void rename_file(void)
{
	char buf[8];
	ino_t ino;
	int fd;

	pfs_mkfile("a", 0640, "abc", 3);
	ino = pfs_lstat("a").st_ino;
	OK(rename("a", "b"));
	ERR(lstat("a", &(struct stat){0}), ENOENT);
	EQ(pfs_lstat("b").st_ino, ino);
	EQ_MODE(pfs_lstat("b").st_mode, S_IFREG | 0640);
	fd = (int)OK(open("b", O_RDONLY));
	EQ(read(fd, buf, sizeof buf), 3);
	OK(close(fd));
}

static void rename_over_file(void)
{
	struct stat st;
	ino_t ino;
	int old;

	pfs_mkfile("a", 0644, "new", 3);
	pfs_mkfile("b", 0644, "old", 3);
	ino = pfs_lstat("a").st_ino;
	old = (int)OK(open("b", O_RDONLY));
	OK(rename("a", "b"));
	EQ(pfs_lstat("b").st_ino, ino);
	OK(fstat(old, &st));
	EQ(st.st_nlink, 0);
	OK(close(old));
	ERR(lstat("a", &st), ENOENT);
}

static void rename_dir(void)
{
	OK(mkdir("d", 0755));
	pfs_mkfile("d/f", 0644, NULL, 0);
	OK(rename("d", "e"));
	ERR(lstat("d", &(struct stat){0}), ENOENT);
	CHECK(S_ISREG(pfs_lstat("e/f").st_mode));
	OK(rename("e/f", "e/g"));
	CHECK(S_ISREG(pfs_lstat("e/g").st_mode));
}

static void rename_dir_across_parents(void)
{
	nlink_t n1, n2;

	OK(mkdir("p1", 0755));
	OK(mkdir("p2", 0755));
	OK(mkdir("p1/d", 0755));
	n1 = pfs_lstat("p1").st_nlink;
	n2 = pfs_lstat("p2").st_nlink;
	OK(rename("p1/d", "p2/d"));
	EQ(pfs_lstat("p1").st_nlink, n1 - 1);
	EQ(pfs_lstat("p2").st_nlink, n2 + 1);
	EQ(pfs_lstat("p2/d/..").st_ino, pfs_lstat("p2").st_ino);
}

static void rename_dir_over_dir(void)
{
	ino_t ino;

	OK(mkdir("a", 0755));
	OK(mkdir("empty", 0755));
	OK(mkdir("full", 0755));
	pfs_mkfile("full/f", 0644, NULL, 0);
	ino = pfs_lstat("a").st_ino;
	ERR(rename("a", "full"), ENOTEMPTY);
	OK(rename("a", "empty"));
	EQ(pfs_lstat("empty").st_ino, ino);
	ERR(lstat("a", &(struct stat){0}), ENOENT);
}

static void rename_type_mismatch(void)
{
	pfs_mkfile("f", 0644, NULL, 0);
	OK(mkdir("d", 0755));
	ERR(rename("f", "d"), EISDIR);
	ERR(rename("d", "f"), ENOTDIR);
	ERR(rename("f", "d/"), ENOTDIR);
}

static void rename_into_own_subdir(void)
{
	OK(mkdir("d", 0755));
	OK(mkdir("d/sub", 0755));
	ERR(rename("d", "d/sub/x"), EINVAL);
	ERR(rename("d", "d/x"), EINVAL);
	ERR(rename2("d", "d/sub", RENAME_EXCHANGE), EINVAL);
	CHECK(S_ISDIR(pfs_lstat("d/sub").st_mode));
}

static void rename_hardlinks_of_one_inode(void)
{
	pfs_mkfile("a", 0644, NULL, 0);
	OK(link("a", "b"));
	OK(rename("a", "b")); /* POSIX: does nothing, both names stay */
	EQ(pfs_lstat("a").st_nlink, 2);
	EQ(pfs_lstat("b").st_nlink, 2);
	OK(rename("a", "a"));
	EQ(pfs_lstat("a").st_nlink, 2);
}

static void rename_errors(void)
{
	OK(mkdir("d", 0755));
	pfs_mkfile("f", 0644, NULL, 0);
	ERR(rename("missing", "x"), ENOENT);
	ERR(rename("f", "missing/x"), ENOENT);
	ERR(rename("f/x", "y"), ENOTDIR);
	ERR(rename("d/.", "x"), EBUSY);
	ERR(rename("f", pfs_name(256)), ENAMETOOLONG);
}

static void rename_updates_times(void)
{
	struct stat f0, p0, q0, f1, p1, q1;
	struct timespec latest;

	OK(mkdir("p", 0755));
	OK(mkdir("q", 0755));
	pfs_mkfile("p/f", 0644, NULL, 0);
	f0 = pfs_lstat("p/f");
	p0 = pfs_lstat("p");
	q0 = pfs_lstat("q");
	latest = f0.st_ctim;
	if (pfs_tscmp(p0.st_ctim, latest) > 0)
		latest = p0.st_ctim;
	if (pfs_tscmp(q0.st_ctim, latest) > 0)
		latest = q0.st_ctim;
	pfs_tick(latest);
	OK(rename("p/f", "q/g"));
	f1 = pfs_lstat("q/g");
	p1 = pfs_lstat("p");
	q1 = pfs_lstat("q");
	LATER(f1.st_ctim, f0.st_ctim); /* Linux updates the moved inode's ctime */
	SAME_TIME(f1.st_mtim, f0.st_mtim);
	LATER(p1.st_mtim, p0.st_mtim);
	LATER(q1.st_mtim, q0.st_mtim);
}

static void rename_noreplace(void)
{
	pfs_mkfile("a", 0644, "a", 1);
	pfs_mkfile("b", 0644, "bb", 2);
	ERR(rename2("a", "b", RENAME_NOREPLACE), EEXIST);
	EQ(pfs_lstat("a").st_size, 1);
	EQ(pfs_lstat("b").st_size, 2);
	OK(rename2("a", "c", RENAME_NOREPLACE));
	EQ(pfs_lstat("c").st_size, 1);
	ERR(lstat("a", &(struct stat){0}), ENOENT);
}

static void rename_exchange(void)
{
	ino_t f, d;
	nlink_t n1, n2;

	OK(mkdir("p1", 0755));
	OK(mkdir("p2", 0755));
	pfs_mkfile("p1/f", 0644, NULL, 0);
	OK(mkdir("p2/d", 0755));
	pfs_mkfile("p2/d/inner", 0644, NULL, 0);
	f = pfs_lstat("p1/f").st_ino;
	d = pfs_lstat("p2/d").st_ino;
	n1 = pfs_lstat("p1").st_nlink;
	n2 = pfs_lstat("p2").st_nlink;
	OK(rename2("p1/f", "p2/d", RENAME_EXCHANGE));
	EQ(pfs_lstat("p1/f").st_ino, d);
	EQ(pfs_lstat("p2/d").st_ino, f);
	CHECK(S_ISREG(pfs_lstat("p1/f/inner").st_mode));
	EQ(pfs_lstat("p1").st_nlink, n1 + 1);
	EQ(pfs_lstat("p2").st_nlink, n2 - 1);
	EQ(pfs_lstat("p1/f/..").st_ino, pfs_lstat("p1").st_ino);
	ERR(rename2("p1/f", "missing", RENAME_EXCHANGE), ENOENT);
}

static void rename_flag_errors(void)
{
	pfs_mkfile("a", 0644, NULL, 0);
	pfs_mkfile("b", 0644, NULL, 0);
	ERR(rename2("a", "b", RENAME_EXCHANGE | RENAME_NOREPLACE), EINVAL);
	ERR(rename2("a", "b", RENAME_EXCHANGE | RENAME_WHITEOUT), EINVAL);
	ERR(rename2("a", "b", 1u << 30), EINVAL);
}

static void rename_whiteout(void)
{
	struct stat st;
	ino_t ino;

	pfs_mkfile("a", 0644, "x", 1);
	ino = pfs_lstat("a").st_ino;
	OK(rename2("a", "b", RENAME_WHITEOUT));
	EQ(pfs_lstat("b").st_ino, ino);
	st = pfs_lstat("a");
	CHECK(S_ISCHR(st.st_mode));
	EQ(major(st.st_rdev), 0);
	EQ(minor(st.st_rdev), 0);
	OK(unlink("a"));
}

static void rename_symlink_itself(void)
{
	char buf[8];

	pfs_mkfile("f", 0644, NULL, 0);
	OK(symlink("f", "l"));
	OK(rename("l", "m"));
	EQ(readlink("m", buf, sizeof buf), 1);
	CHECK(S_ISREG(pfs_lstat("f").st_mode));
}

static void rename_open_file_follows(void)
{
	char buf[8];
	struct stat st;
	int fd = (int)OK(open("a", O_CREAT | O_RDWR, 0644));

	OK(rename("a", "b"));
	EQ(write(fd, "moved", 5), 5);
	OK(fstat(fd, &st));
	EQ(st.st_ino, pfs_lstat("b").st_ino);
	OK(close(fd));
	fd = (int)OK(open("b", O_RDONLY));
	EQ(read(fd, buf, sizeof buf), 5);
	CHECK(memcmp(buf, "moved", 5) == 0);
	OK(close(fd));
}

const struct pfs_case pfs_cases_rename[] = {
	{"rename/file", rename_file},
	{"rename/over_file", rename_over_file},
	{"rename/dir", rename_dir},
	{"rename/dir_across_parents", rename_dir_across_parents},
	{"rename/dir_over_dir", rename_dir_over_dir},
	{"rename/type_mismatch", rename_type_mismatch},
	{"rename/into_own_subdir", rename_into_own_subdir},
	{"rename/hardlinks_of_one_inode", rename_hardlinks_of_one_inode},
	{"rename/errors", rename_errors},
	{"rename/updates_times", rename_updates_times},
	{"rename/noreplace", rename_noreplace},
	{"rename/exchange", rename_exchange},
	{"rename/flag_errors", rename_flag_errors},
	{"rename/whiteout", rename_whiteout},
	{"rename/symlink_itself", rename_symlink_itself},
	{"rename/open_file_follows", rename_open_file_follows},
	{NULL, NULL},
};
