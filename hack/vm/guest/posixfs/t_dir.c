/*
 * posixfs groups mkdir, rmdir, unlink, link, symlink, readdir.
 */
#include "posixfs.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>

/* ---- mkdir ---- */

static void mkdir_mode_umask(void)
{
	umask(022);
	OK(mkdir("a", 0777));
	EQ_MODE(pfs_lstat("a").st_mode, S_IFDIR | 0755);
	umask(0);
	OK(mkdir("b", 01777));
	EQ_MODE(pfs_lstat("b").st_mode, S_IFDIR | 01777);
	OK(mkdir("c", 02700)); /* S_ISGID is not taken from mode (parent is not setgid) */
	EQ_MODE(pfs_lstat("c").st_mode, S_IFDIR | 0700);
	OK(mkdir("e", 0));
	EQ_MODE(pfs_lstat("e").st_mode, S_IFDIR);
}

static void mkdir_nlink(void)
{
	nlink_t base;

	OK(mkdir("p", 0755));
	base = pfs_lstat("p").st_nlink;
	EQ(base, 2);
	OK(mkdir("p/a", 0755));
	OK(mkdir("p/b", 0755));
	EQ(pfs_lstat("p/a").st_nlink, 2);
	EQ(pfs_lstat("p").st_nlink, base + 2);
	pfs_mkfile("p/f", 0644, NULL, 0);
	EQ(pfs_lstat("p").st_nlink, base + 2);
	OK(rmdir("p/a"));
	EQ(pfs_lstat("p").st_nlink, base + 1);
}

static void mkdir_eexist(void)
{
	OK(mkdir("d", 0755));
	pfs_mkfile("f", 0644, NULL, 0);
	OK(symlink("missing", "l"));
	ERR(mkdir("d", 0755), EEXIST);
	ERR(mkdir("f", 0755), EEXIST);
	ERR(mkdir("l", 0755), EEXIST);
	ERR(mkdir(".", 0755), EEXIST);
}

static void mkdir_path_errors(void)
{
	pfs_mkfile("f", 0644, NULL, 0);
	ERR(mkdir("missing/d", 0755), ENOENT);
	ERR(mkdir("f/d", 0755), ENOTDIR);
	ERR(mkdir(pfs_name(256), 0755), ENAMETOOLONG);
	OK(mkdir(pfs_name(255), 0755));
}

static void mkdir_updates_parent_times(void)
{
	struct stat before, after;

	OK(mkdir("p", 0755));
	before = pfs_lstat("p");
	pfs_tick(before.st_ctim);
	OK(mkdir("p/d", 0755));
	after = pfs_lstat("p");
	LATER(after.st_mtim, before.st_mtim);
	LATER(after.st_ctim, before.st_ctim);
}

/* ---- rmdir ---- */

static void rmdir_basic(void)
{
	OK(mkdir("d", 0755));
	OK(rmdir("d"));
	ERR(lstat("d", &(struct stat){0}), ENOENT);
	ERR(rmdir("d"), ENOENT);
}

static void rmdir_enotempty(void)
{
	OK(mkdir("a", 0755));
	pfs_mkfile("a/f", 0644, NULL, 0);
	ERR(rmdir("a"), ENOTEMPTY);
	OK(mkdir("b", 0755));
	OK(mkdir("b/c", 0755));
	ERR(rmdir("b"), ENOTEMPTY);
	OK(mkdir("c", 0755));
	OK(symlink("missing", "c/l"));
	ERR(rmdir("c"), ENOTEMPTY);
	OK(unlink("c/l"));
	OK(rmdir("c"));
}

static void rmdir_errors(void)
{
	OK(mkdir("d", 0755));
	OK(mkdir("d/e", 0755));
	pfs_mkfile("f", 0644, NULL, 0);
	OK(symlink("d", "ld"));
	ERR(rmdir("f"), ENOTDIR);
	ERR(rmdir("ld"), ENOTDIR);
	ERR(rmdir("d/e/."), EINVAL);
	ERR(rmdir("d/e/.."), ENOTEMPTY);
	ERR(rmdir("f/x"), ENOTDIR);
}

static void rmdir_open_dir(void)
{
	char buf[4096];
	struct stat st;
	int fd;

	OK(mkdir("d", 0755));
	fd = (int)OK(open("d", O_RDONLY | O_DIRECTORY));
	OK(rmdir("d"));
	OK(fstat(fd, &st));
	CHECK(S_ISDIR(st.st_mode));
	ERR(syscall(SYS_getdents64, fd, buf, sizeof buf), ENOENT);
	ERR(openat(fd, "x", O_CREAT | O_WRONLY, 0644), ENOENT);
	ERR(mkdirat(fd, "x", 0755), ENOENT);
	OK(close(fd));
}

/* ---- unlink ---- */

static void unlink_basic(void)
{
	struct stat before, after;

	OK(mkdir("d", 0755));
	pfs_mkfile("d/f", 0644, "x", 1);
	before = pfs_lstat("d");
	pfs_tick(before.st_ctim);
	OK(unlink("d/f"));
	ERR(lstat("d/f", &(struct stat){0}), ENOENT);
	after = pfs_lstat("d");
	LATER(after.st_mtim, before.st_mtim);
	LATER(after.st_ctim, before.st_ctim);
}

static void unlink_errors(void)
{
	OK(mkdir("d", 0755));
	pfs_mkfile("f", 0644, NULL, 0);
	ERR(unlink("missing"), ENOENT);
	ERR(unlink("d"), EISDIR);
	ERR(unlink("f/x"), ENOTDIR);
	ERR(unlink(pfs_name(256)), ENAMETOOLONG);
}

static void unlink_open_file_survives(void)
{
	char buf[16];
	struct stat st;
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));

	EQ(write(fd, "before", 6), 6);
	OK(unlink("f"));
	ERR(lstat("f", &st), ENOENT);
	OK(fstat(fd, &st));
	EQ(st.st_nlink, 0);
	EQ(st.st_size, 6);
	EQ(write(fd, "+after", 6), 6);
	EQ(pread(fd, buf, sizeof buf, 0), 12);
	CHECK(memcmp(buf, "before+after", 12) == 0);
	OK(ftruncate(fd, 3));
	OK(fstat(fd, &st));
	EQ(st.st_size, 3);
	OK(fchmod(fd, 0600));
	OK(fstat(fd, &st));
	EQ_MODE(st.st_mode, S_IFREG | 0600);
	OK(close(fd));
	/* the name is free for a new file */
	pfs_mkfile("f", 0644, NULL, 0);
}

static void unlink_symlink_not_target(void)
{
	pfs_mkfile("f", 0644, NULL, 0);
	OK(symlink("f", "l"));
	OK(unlink("l"));
	CHECK(S_ISREG(pfs_lstat("f").st_mode));
}

static void unlink_hardlink_updates_ctime(void)
{
	struct stat before, after;

	pfs_mkfile("a", 0644, NULL, 0);
	OK(link("a", "b"));
	before = pfs_lstat("b");
	EQ(before.st_nlink, 2);
	pfs_tick(before.st_ctim);
	OK(unlink("a"));
	after = pfs_lstat("b");
	EQ(after.st_nlink, 1);
	LATER(after.st_ctim, before.st_ctim);
}

/* ---- link ---- */

static void link_basic(void)
{
	char buf[8];
	struct stat a, b;
	int fd;

	pfs_mkfile("a", 0644, NULL, 0);
	OK(mkdir("d", 0755));
	OK(link("a", "d/b"));
	a = pfs_lstat("a");
	b = pfs_lstat("d/b");
	EQ(a.st_ino, b.st_ino);
	EQ(a.st_nlink, 2);
	EQ(b.st_nlink, 2);
	fd = (int)OK(open("a", O_WRONLY));
	EQ(write(fd, "shared", 6), 6);
	OK(close(fd));
	fd = (int)OK(open("d/b", O_RDONLY));
	EQ(read(fd, buf, sizeof buf), 6);
	CHECK(memcmp(buf, "shared", 6) == 0);
	OK(close(fd));
}

static void link_updates_ctime(void)
{
	struct stat before, dir_before, after, dir_after;

	OK(mkdir("d", 0755));
	pfs_mkfile("a", 0644, NULL, 0);
	before = pfs_lstat("a");
	dir_before = pfs_lstat("d");
	pfs_tick(pfs_tscmp(before.st_ctim, dir_before.st_ctim) > 0 ? before.st_ctim
								   : dir_before.st_ctim);
	OK(link("a", "d/b"));
	after = pfs_lstat("a");
	dir_after = pfs_lstat("d");
	LATER(after.st_ctim, before.st_ctim);
	SAME_TIME(after.st_mtim, before.st_mtim);
	LATER(dir_after.st_mtim, dir_before.st_mtim);
}

static void link_eexist(void)
{
	pfs_mkfile("a", 0644, NULL, 0);
	pfs_mkfile("b", 0644, NULL, 0);
	OK(mkdir("d", 0755));
	OK(symlink("missing", "l"));
	ERR(link("a", "b"), EEXIST);
	ERR(link("a", "d"), EEXIST);
	ERR(link("a", "l"), EEXIST);
	EQ(pfs_lstat("a").st_nlink, 1);
}

static void link_dir_eperm(void)
{
	OK(mkdir("d", 0755));
	ERR(link("d", "e"), EPERM);
	EQ(pfs_lstat("d").st_nlink, 2);
}

static void link_errors(void)
{
	pfs_mkfile("a", 0644, NULL, 0);
	ERR(link("missing", "b"), ENOENT);
	ERR(link("a", "missing/b"), ENOENT);
	ERR(link("a/x", "b"), ENOTDIR);
	ERR(link("a", pfs_name(256)), ENAMETOOLONG);
}

static void link_symlink_follow_flag(void)
{
	struct stat st;

	pfs_mkfile("f", 0644, NULL, 0);
	OK(symlink("f", "l"));
	OK(linkat(AT_FDCWD, "l", AT_FDCWD, "hl", 0));
	st = pfs_lstat("hl");
	CHECK(S_ISLNK(st.st_mode));
	EQ(st.st_ino, pfs_lstat("l").st_ino);
	EQ(st.st_nlink, 2);
	OK(linkat(AT_FDCWD, "l", AT_FDCWD, "hf", AT_SYMLINK_FOLLOW));
	st = pfs_lstat("hf");
	CHECK(S_ISREG(st.st_mode));
	EQ(st.st_ino, pfs_lstat("f").st_ino);
	EQ(pfs_lstat("f").st_nlink, 2);
}

static void link_many(void)
{
	char name[32];

	pfs_mkfile("f", 0644, NULL, 0);
	for (int i = 0; i < 100; i++) {
		snprintf(name, sizeof name, "l%03d", i);
		OK(link("f", name));
	}
	EQ(pfs_lstat("f").st_nlink, 101);
	EQ(pfs_lstat("l050").st_nlink, 101);
	for (int i = 0; i < 100; i++) {
		snprintf(name, sizeof name, "l%03d", i);
		OK(unlink(name));
	}
	EQ(pfs_lstat("f").st_nlink, 1);
}

/* ---- symlink / readlink ---- */

static void symlink_basic(void)
{
	char buf[64];
	struct stat st;

	OK(symlink("some/where", "l"));
	EQ(readlink("l", buf, sizeof buf), 10);
	CHECK(memcmp(buf, "some/where", 10) == 0);
	st = pfs_lstat("l");
	CHECK(S_ISLNK(st.st_mode));
	EQ(st.st_size, 10);
	EQ(st.st_nlink, 1);
	ERR(stat("l", &st), ENOENT);
}

static void symlink_long_target(void)
{
	static char target[4096], buf[4200];

	memset(target, 'a', 4095);
	for (int i = 200; i < 4095; i += 200)
		target[i] = '/';
	target[4095] = '\0';
	OK(symlink(target, "l"));
	EQ(readlink("l", buf, sizeof buf), 4095);
	CHECK(memcmp(buf, target, 4095) == 0);
	EQ(pfs_lstat("l").st_size, 4095);
}

static void symlink_target_errors(void)
{
	static char target[4097];

	memset(target, 'a', 4096);
	target[4096] = '\0';
	ERR(symlink(target, "l"), ENAMETOOLONG);
	ERR(symlink("", "l"), ENOENT);
	ERR(lstat("l", &(struct stat){0}), ENOENT);
}

static void symlink_eexist(void)
{
	pfs_mkfile("f", 0644, NULL, 0);
	OK(mkdir("d", 0755));
	OK(symlink("x", "l"));
	ERR(symlink("x", "f"), EEXIST);
	ERR(symlink("x", "d"), EEXIST);
	ERR(symlink("y", "l"), EEXIST);
	ERR(symlink("x", "missing/l"), ENOENT);
}

static void symlink_follow(void)
{
	char buf[8];
	int fd;

	OK(mkdir("d", 0755));
	pfs_mkfile("d/f", 0644, "data", 4);
	OK(symlink("d", "ld"));
	OK(symlink("../d/f", "d/rel"));
	OK(symlink("ld/rel", "chain"));
	EQ(pfs_lstat("d/f").st_ino, ({ struct stat s_; OK(stat("chain", &s_)); s_.st_ino; }));
	fd = (int)OK(open("ld/f", O_RDONLY));
	EQ(read(fd, buf, sizeof buf), 4);
	OK(close(fd));
	CHECK(memcmp(buf, "data", 4) == 0);
}

static void symlink_readlink_errors(void)
{
	char buf[4];

	pfs_mkfile("f", 0644, NULL, 0);
	OK(mkdir("d", 0755));
	OK(symlink("abcdefgh", "l"));
	ERR(readlink("f", buf, sizeof buf), EINVAL);
	ERR(readlink("d", buf, sizeof buf), EINVAL);
	ERR(readlink("missing", buf, sizeof buf), ENOENT);
	EQ(readlink("l", buf, sizeof buf), 4); /* truncated, not an error */
	CHECK(memcmp(buf, "abcd", 4) == 0);
}

/* ---- readdir ---- */

struct listing {
	char **names;
	unsigned char *types;
	ino_t *inos;
	size_t n, cap;
};

static void listing_add(struct listing *l, const char *name, unsigned char type, ino_t ino)
{
	if (l->n == l->cap) {
		l->cap = l->cap ? 2 * l->cap : 64;
		l->names = realloc(l->names, l->cap * sizeof *l->names);
		l->types = realloc(l->types, l->cap);
		l->inos = realloc(l->inos, l->cap * sizeof *l->inos);
		CHECK(l->names && l->types && l->inos);
	}
	l->names[l->n] = strdup(name);
	l->types[l->n] = type;
	l->inos[l->n++] = ino;
}

struct linux_dirent64 {
	ino_t d_ino;
	off_t d_off;
	unsigned short d_reclen;
	unsigned char d_type;
	char d_name[];
};

/* Read all of path with getdents64 and a small buffer (many calls); if
 * unlink_each, unlink every entry right after it was returned. */
static struct listing list_dir(const char *path, size_t bufsize, int unlink_each)
{
	struct listing l = {0};
	char *buf = malloc(bufsize);
	int fd = (int)OK(open(path, O_RDONLY | O_DIRECTORY));
	long n;

	CHECK(buf != NULL);
	while ((n = OK(syscall(SYS_getdents64, fd, buf, bufsize))) > 0) {
		for (long pos = 0; pos < n;) {
			struct linux_dirent64 *d = (struct linux_dirent64 *)(buf + pos);
			listing_add(&l, d->d_name, d->d_type, d->d_ino);
			if (unlink_each && strcmp(d->d_name, ".") && strcmp(d->d_name, ".."))
				OK(unlinkat(fd, d->d_name, 0));
			pos += d->d_reclen;
		}
	}
	OK(close(fd));
	free(buf);
	return l;
}

static int listing_count(const struct listing *l, const char *name)
{
	int count = 0;

	for (size_t i = 0; i < l->n; i++)
		count += strcmp(l->names[i], name) == 0;
	return count;
}

static void readdir_types(void)
{
	struct listing l;

	OK(mkdir("d", 0755));
	l = list_dir("d", 4096, 0);
	EQ(l.n, 2);
	EQ(listing_count(&l, "."), 1);
	EQ(listing_count(&l, ".."), 1);
	pfs_mkfile("d/f", 0644, NULL, 0);
	OK(mkdir("d/s", 0755));
	OK(symlink("f", "d/l"));
	OK(mkfifo("d/p", 0644));
	l = list_dir("d", 4096, 0);
	EQ(l.n, 6);
	for (size_t i = 0; i < l.n; i++) {
		const char *name = l.names[i];
		unsigned char want = !strcmp(name, "f") ? DT_REG : !strcmp(name, "l") ? DT_LNK
				   : !strcmp(name, "p") ? DT_FIFO : DT_DIR;
		EQ(l.types[i], want);
		if (strcmp(name, "..") != 0) {
			char path[16];
			snprintf(path, sizeof path, "d/%s", name);
			EQ(l.inos[i], pfs_lstat(path).st_ino);
		}
	}
}

static char *entry_name(char *buf, char prefix, int i)
{
	/* every fifth name is long, so entries differ in record size */
	if (i % 5 == 0)
		snprintf(buf, 256, "%c%04d-%s", prefix, i, pfs_name(200));
	else
		snprintf(buf, 256, "%c%04d", prefix, i);
	return buf;
}

static void readdir_after_creates_and_deletes(void)
{
	char name[300], path[320];
	struct listing l;
	size_t expected = 2;

	OK(mkdir("d", 0755));
	for (int i = 0; i < 600; i++) {
		snprintf(path, sizeof path, "d/%s", entry_name(name, 'f', i));
		pfs_mkfile(path, 0644, NULL, 0);
	}
	for (int i = 0; i < 600; i += 3) {
		snprintf(path, sizeof path, "d/%s", entry_name(name, 'f', i));
		OK(unlink(path));
	}
	for (int i = 0; i < 150; i++) {
		snprintf(path, sizeof path, "d/%s", entry_name(name, 'g', i));
		OK(mkdir(path, 0755));
	}
	for (int i = 1; i < 600; i += 6) {
		snprintf(path, sizeof path, "d/%s", entry_name(name, 'f', i));
		OK(unlink(path));
	}
	for (size_t bufsize = 512; bufsize <= 32768; bufsize *= 64) {
		l = list_dir("d", bufsize, 0);
		EQ(listing_count(&l, "."), 1);
		EQ(listing_count(&l, ".."), 1);
		expected = 2;
		for (int i = 0; i < 600; i++) {
			int want = i % 3 != 0 && !(i % 6 == 1);
			expected += (size_t)want;
			EQ(listing_count(&l, entry_name(name, 'f', i)), want);
		}
		for (int i = 0; i < 150; i++)
			EQ(listing_count(&l, entry_name(name, 'g', i)), 1);
		EQ(l.n, expected + 150);
	}
}

static void readdir_unlink_while_reading(void)
{
	char name[300], path[320];
	struct listing l;

	OK(mkdir("d", 0755));
	for (int i = 0; i < 500; i++) {
		snprintf(path, sizeof path, "d/%s", entry_name(name, 'f', i));
		pfs_mkfile(path, 0644, NULL, 0);
	}
	/* the "rm -r" pattern: one pass, each entry removed as soon as it is seen */
	l = list_dir("d", 1024, 1);
	for (int i = 0; i < 500; i++)
		EQ(listing_count(&l, entry_name(name, 'f', i)), 1);
	l = list_dir("d", 4096, 0);
	EQ(l.n, 2);
	OK(rmdir("d"));
}

static void readdir_libc_rewind(void)
{
	DIR *dir;
	struct dirent *d;
	int seen = 0;

	OK(mkdir("d", 0755));
	pfs_mkfile("d/a", 0644, NULL, 0);
	dir = opendir("d");
	CHECK(dir != NULL);
	while ((d = readdir(dir)) != NULL)
		seen += strcmp(d->d_name, "a") == 0;
	EQ(seen, 1);
	pfs_mkfile("d/b", 0644, NULL, 0);
	rewinddir(dir);
	seen = 0;
	while ((d = readdir(dir)) != NULL)
		seen += strcmp(d->d_name, "a") == 0 || strcmp(d->d_name, "b") == 0;
	EQ(seen, 2);
	OK(closedir(dir));
}

const struct pfs_case pfs_cases_dir[] = {
	{"mkdir/mode_umask", mkdir_mode_umask},
	{"mkdir/nlink", mkdir_nlink},
	{"mkdir/eexist", mkdir_eexist},
	{"mkdir/path_errors", mkdir_path_errors},
	{"mkdir/updates_parent_times", mkdir_updates_parent_times},
	{"rmdir/basic", rmdir_basic},
	{"rmdir/enotempty", rmdir_enotempty},
	{"rmdir/errors", rmdir_errors},
	{"rmdir/open_dir", rmdir_open_dir},
	{"unlink/basic", unlink_basic},
	{"unlink/errors", unlink_errors},
	{"unlink/open_file_survives", unlink_open_file_survives},
	{"unlink/symlink_not_target", unlink_symlink_not_target},
	{"unlink/hardlink_updates_ctime", unlink_hardlink_updates_ctime},
	{"link/basic", link_basic},
	{"link/updates_ctime", link_updates_ctime},
	{"link/eexist", link_eexist},
	{"link/dir_eperm", link_dir_eperm},
	{"link/errors", link_errors},
	{"link/symlink_follow_flag", link_symlink_follow_flag},
	{"link/many", link_many},
	{"symlink/basic", symlink_basic},
	{"symlink/long_target", symlink_long_target},
	{"symlink/target_errors", symlink_target_errors},
	{"symlink/eexist", symlink_eexist},
	{"symlink/follow", symlink_follow},
	{"symlink/readlink_errors", symlink_readlink_errors},
	{"readdir/types", readdir_types},
	{"readdir/after_creates_and_deletes", readdir_after_creates_and_deletes},
	{"readdir/unlink_while_reading", readdir_unlink_while_reading},
	{"readdir/libc_rewind", readdir_libc_rewind},
	{NULL, NULL},
};
