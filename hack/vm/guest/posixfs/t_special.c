/*
 * posixfs groups mknod, xattr, fallocate, sync, tmpfile, statfs.
 */
#include "posixfs.h"

#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/statfs.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/un.h>
#include <sys/xattr.h>

/* ---- mknod ---- */

static void mknod_fifo(void)
{
	char c;
	int r, w;

	OK(mkfifo("p", 0640));
	EQ_MODE(pfs_lstat("p").st_mode, S_IFIFO | 0640);
	ERR(open("p", O_WRONLY | O_NONBLOCK), ENXIO); /* no reader yet */
	r = (int)OK(open("p", O_RDONLY | O_NONBLOCK));
	w = (int)OK(open("p", O_WRONLY | O_NONBLOCK));
	EQ(write(w, "q", 1), 1);
	EQ(read(r, &c, 1), 1);
	EQ(c, 'q');
	OK(close(w));
	OK(close(r));
	EQ(pfs_lstat("p").st_size, 0);
}

static void mknod_char_device(void)
{
	struct stat st;
	int fd;

	OK(mknod("null", S_IFCHR | 0644, makedev(1, 3)));
	st = pfs_lstat("null");
	EQ_MODE(st.st_mode, S_IFCHR | 0644);
	EQ(major(st.st_rdev), 1);
	EQ(minor(st.st_rdev), 3);
	/* opening the node reaches the guest's driver, not the file system */
	fd = (int)OK(open("null", O_WRONLY));
	EQ(write(fd, "discarded", 9), 9);
	OK(close(fd));
	EQ(pfs_lstat("null").st_size, 0);
}

static void mknod_block_device(void)
{
	struct stat st;

	OK(mknod("loop", S_IFBLK | 0600, makedev(7, 200)));
	st = pfs_lstat("loop");
	EQ_MODE(st.st_mode, S_IFBLK | 0600);
	EQ(major(st.st_rdev), 7);
	EQ(minor(st.st_rdev), 200);
	OK(mknod("big", S_IFCHR | 0600, makedev(300, 70000)));
	st = pfs_lstat("big");
	EQ(major(st.st_rdev), 300);
	EQ(minor(st.st_rdev), 70000);
}

static void mknod_whiteout(void)
{
	struct stat st;

	OK(mknod("wh", S_IFCHR | 0, makedev(0, 0)));
	st = pfs_lstat("wh");
	EQ_MODE(st.st_mode, S_IFCHR);
	EQ(st.st_rdev, 0);
	OK(unlink("wh"));
}

static void mknod_socket_bind(void)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX, .sun_path = "sock"};
	int srv = (int)OK(socket(AF_UNIX, SOCK_STREAM, 0));
	int cli = (int)OK(socket(AF_UNIX, SOCK_STREAM, 0));
	int acc;
	char c;

	OK(bind(srv, (struct sockaddr *)&sun, sizeof sun));
	CHECK(S_ISSOCK(pfs_lstat("sock").st_mode));
	OK(listen(srv, 1));
	OK(connect(cli, (struct sockaddr *)&sun, sizeof sun));
	acc = (int)OK(accept(srv, NULL, NULL));
	EQ(write(cli, "s", 1), 1);
	EQ(read(acc, &c, 1), 1);
	EQ(c, 's');
	OK(close(acc));
	OK(close(cli));
	OK(close(srv));
	ERR(bind((int)OK(socket(AF_UNIX, SOCK_STREAM, 0)), (struct sockaddr *)&sun, sizeof sun),
	    EADDRINUSE);
	OK(unlink("sock"));
}

static void mknod_regular_and_errors(void)
{
	OK(mknod("r", S_IFREG | 0600, 0));
	EQ_MODE(pfs_lstat("r").st_mode, S_IFREG | 0600);
	OK(mknod("r0", 0600, 0)); /* type 0 means a regular file */
	EQ_MODE(pfs_lstat("r0").st_mode, S_IFREG | 0600);
	ERR(mknod("r", S_IFIFO | 0600, 0), EEXIST);
	ERR(mknod("d", S_IFDIR | 0755, 0), EPERM);
	ERR(mknod("x", 0170000 | 0600, 0), EINVAL);
	ERR(mknod("missing/x", S_IFIFO | 0600, 0), ENOENT);
}

/* ---- xattr ---- */

static void xattr_user_roundtrip(void)
{
	static const char value[] = "bin\0ary\377";
	char buf[64];

	pfs_mkfile("f", 0644, NULL, 0);
	OK(setxattr("f", "user.a", value, sizeof value, 0));
	EQ(getxattr("f", "user.a", NULL, 0), sizeof value);
	EQ(getxattr("f", "user.a", buf, sizeof buf), sizeof value);
	CHECK(memcmp(buf, value, sizeof value) == 0);
	OK(mkdir("d", 0755));
	OK(setxattr("d", "user.dir", "v", 1, 0));
	EQ(getxattr("d", "user.dir", buf, sizeof buf), 1);
}

static void xattr_trusted_roundtrip(void)
{
	char buf[16];

	pfs_mkfile("f", 0644, NULL, 0);
	OK(setxattr("f", "trusted.t", "tv", 2, 0));
	EQ(getxattr("f", "trusted.t", buf, sizeof buf), 2);
	CHECK(memcmp(buf, "tv", 2) == 0);
}

/* What the guest's overlayfs stores on an upper dir on this share. */
static void xattr_overlay_opaque(void)
{
	char buf[256];
	ssize_t n;

	OK(mkdir("d", 0755));
	OK(setxattr("d", "trusted.overlay.opaque", "y", 1, 0));
	EQ(getxattr("d", "trusted.overlay.opaque", buf, sizeof buf), 1);
	EQ(buf[0], 'y');
	n = OK(listxattr("d", buf, sizeof buf));
	CHECK(memmem(buf, (size_t)n, "trusted.overlay.opaque", sizeof "trusted.overlay.opaque"));
	OK(mknod("wh", S_IFCHR, 0));
	OK(lsetxattr("wh", "trusted.overlay.origin", "o", 1, 0));
	EQ(lgetxattr("wh", "trusted.overlay.origin", buf, sizeof buf), 1);
}

static void xattr_enodata(void)
{
	char buf[8];

	pfs_mkfile("f", 0644, NULL, 0);
	ERR(getxattr("f", "user.missing", buf, sizeof buf), ENODATA);
	ERR(removexattr("f", "user.missing"), ENODATA);
	ERR(getxattr("f", "trusted.missing", buf, sizeof buf), ENODATA);
	ERR(getxattr("missing", "user.x", buf, sizeof buf), ENOENT);
}

static void xattr_erange(void)
{
	char buf[4];

	pfs_mkfile("f", 0644, NULL, 0);
	OK(setxattr("f", "user.long", "0123456789", 10, 0));
	ERR(getxattr("f", "user.long", buf, sizeof buf), ERANGE);
	ERR(listxattr("f", buf, sizeof buf), ERANGE);
	EQ(listxattr("f", NULL, 0), sizeof "user.long");
}

static void xattr_create_replace(void)
{
	char buf[8];

	pfs_mkfile("f", 0644, NULL, 0);
	ERR(setxattr("f", "user.x", "1", 1, XATTR_REPLACE), ENODATA);
	OK(setxattr("f", "user.x", "1", 1, XATTR_CREATE));
	ERR(setxattr("f", "user.x", "2", 1, XATTR_CREATE), EEXIST);
	OK(setxattr("f", "user.x", "33", 2, XATTR_REPLACE));
	EQ(getxattr("f", "user.x", buf, sizeof buf), 2);
	CHECK(memcmp(buf, "33", 2) == 0);
	OK(setxattr("f", "user.x", "4", 1, 0));
	EQ(getxattr("f", "user.x", buf, sizeof buf), 1);
}

/* names of the user.* and trusted.* attributes, NUL-separated, sorted */
static size_t xattr_names(const char *path, char *out, size_t cap)
{
	char buf[1024], *names[32];
	size_t count = 0, len = 0;
	ssize_t n = OK(llistxattr(path, buf, sizeof buf));

	for (char *p = buf; p < buf + n; p += strlen(p) + 1)
		if ((!strncmp(p, "user.", 5) || !strncmp(p, "trusted.", 8)) && count < 32)
			names[count++] = p;
	for (size_t i = 0; i < count; i++)
		for (size_t j = i + 1; j < count; j++)
			if (strcmp(names[j], names[i]) < 0) {
				char *t = names[i];
				names[i] = names[j];
				names[j] = t;
			}
	for (size_t i = 0; i < count && len + strlen(names[i]) + 1 <= cap; i++) {
		memcpy(out + len, names[i], strlen(names[i]) + 1);
		len += strlen(names[i]) + 1;
	}
	return len;
}

static void xattr_list_and_remove(void)
{
	static const char want[] = "trusted.c\0user.a\0user.b";
	static const char after[] = "trusted.c\0user.b";
	char names[256];

	pfs_mkfile("f", 0644, NULL, 0);
	EQ(xattr_names("f", names, sizeof names), 0);
	OK(setxattr("f", "user.b", "", 0, 0));
	OK(setxattr("f", "user.a", "1", 1, 0));
	OK(setxattr("f", "trusted.c", "2", 1, 0));
	EQ(xattr_names("f", names, sizeof names), sizeof want);
	CHECK(memcmp(names, want, sizeof want) == 0);
	OK(removexattr("f", "user.a"));
	ERR(getxattr("f", "user.a", NULL, 0), ENODATA);
	EQ(xattr_names("f", names, sizeof names), sizeof after);
	CHECK(memcmp(names, after, sizeof after) == 0);
	EQ(getxattr("f", "user.b", names, sizeof names), 0); /* empty value */
}

static void xattr_large_value(void)
{
	static unsigned char value[3000], back[4000];

	pfs_fill(value, sizeof value, 7);
	pfs_mkfile("f", 0644, NULL, 0);
	OK(setxattr("f", "user.big", value, sizeof value, 0));
	EQ(getxattr("f", "user.big", back, sizeof back), sizeof value);
	CHECK(memcmp(value, back, sizeof value) == 0);
}

static void xattr_symlink(void)
{
	char buf[8];

	pfs_mkfile("f", 0644, NULL, 0);
	OK(symlink("f", "l"));
	ERR(lsetxattr("l", "user.x", "1", 1, 0), EPERM); /* user.* only on files and dirs */
	OK(lsetxattr("l", "trusted.x", "1", 1, 0));
	EQ(lgetxattr("l", "trusted.x", buf, sizeof buf), 1);
	ERR(getxattr("l", "trusted.x", buf, sizeof buf), ENODATA); /* follows to f */
	OK(setxattr("l", "user.y", "2", 1, 0));
	EQ(lgetxattr("f", "user.y", buf, sizeof buf), 1);
}

static void xattr_name_errors(void)
{
	static char big[65537];
	char name[300];

	pfs_mkfile("f", 0644, NULL, 0);
	snprintf(name, sizeof name, "user.%s", pfs_name(251));
	ERR(setxattr("f", name, "1", 1, 0), ERANGE);
	ERR(setxattr("f", "", "1", 1, 0), ERANGE);
	ERR(setxattr("f", "bogus.x", "1", 1, 0), EOPNOTSUPP);
	ERR(setxattr("f", "user.x", big, sizeof big, 0), E2BIG);
}

static void xattr_fd_calls(void)
{
	char buf[32];
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));

	OK(fsetxattr(fd, "user.fd", "v", 1, 0));
	EQ(fgetxattr(fd, "user.fd", buf, sizeof buf), 1);
	EQ(flistxattr(fd, buf, sizeof buf), sizeof "user.fd");
	OK(fremovexattr(fd, "user.fd"));
	ERR(fgetxattr(fd, "user.fd", buf, sizeof buf), ENODATA);
	OK(close(fd));
}

static void xattr_updates_ctime(void)
{
	struct stat before, after;

	pfs_mkfile("f", 0644, NULL, 0);
	before = pfs_lstat("f");
	pfs_tick(before.st_ctim);
	OK(setxattr("f", "user.t", "1", 1, 0));
	after = pfs_lstat("f");
	LATER(after.st_ctim, before.st_ctim);
	SAME_TIME(after.st_mtim, before.st_mtim);
}

/* ---- fallocate ---- */

static void fallocate_extend(void)
{
	static unsigned char buf[1 << 20];
	struct stat st;
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));

	OK(fallocate(fd, 0, 0, sizeof buf));
	OK(fstat(fd, &st));
	EQ(st.st_size, sizeof buf);
	CHECK(st.st_blocks >= (blkcnt_t)(sizeof buf / 512));
	memset(buf, 1, sizeof buf);
	pfs_read_exact(fd, 0, buf, sizeof buf);
	CHECK(pfs_is_zero(buf, sizeof buf));
	OK(close(fd));
}

static void fallocate_keep_size(void)
{
	struct stat st;
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));

	EQ(write(fd, "abcd", 4), 4);
	OK(fallocate(fd, FALLOC_FL_KEEP_SIZE, 0, 1 << 20));
	OK(fstat(fd, &st));
	EQ(st.st_size, 4);
	CHECK(st.st_blocks >= (1 << 20) / 512);
	OK(close(fd));
}

static void fallocate_punch_hole(void)
{
	static unsigned char data[256 << 10], back[256 << 10];
	struct stat before, after;
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));

	pfs_fill(data, sizeof data, 8);
	EQ(write(fd, data, sizeof data), sizeof data);
	OK(fsync(fd));
	OK(fstat(fd, &before));
	OK(fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 64 << 10, 64 << 10));
	OK(fstat(fd, &after));
	EQ(after.st_size, sizeof data);
	if (!(after.st_blocks <= before.st_blocks - (64 << 10) / 512))
		pfs_fail(PFS_LOC, "st_blocks", "expected at most %lld, got %lld",
			 (long long)before.st_blocks - (64 << 10) / 512, (long long)after.st_blocks);
	memset(data + (64 << 10), 0, 64 << 10);
	pfs_read_exact(fd, 0, back, sizeof back);
	CHECK(memcmp(data, back, sizeof data) == 0);
	OK(close(fd));
}

static void fallocate_errors(void)
{
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));

	ERR(fallocate(fd, FALLOC_FL_PUNCH_HOLE, 0, 4096), EOPNOTSUPP);
	ERR(fallocate(fd, 0, 0, 0), EINVAL);
	ERR(fallocate(fd, 0, -1, 4096), EINVAL);
	OK(close(fd));
	fd = (int)OK(open("f", O_RDONLY));
	ERR(fallocate(fd, 0, 0, 4096), EBADF);
	OK(close(fd));
}

/* ---- sync ---- */

static void sync_file_and_dir(void)
{
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644)), dir;

	EQ(write(fd, "x", 1), 1);
	OK(fsync(fd));
	OK(fdatasync(fd));
	OK(syncfs(fd));
	OK(close(fd));
	fd = (int)OK(open("f", O_RDONLY));
	OK(fsync(fd));
	OK(close(fd));
	dir = (int)OK(open(".", O_RDONLY | O_DIRECTORY));
	OK(fsync(dir));
	OK(fdatasync(dir));
	OK(syncfs(dir));
	OK(close(dir));
	sync();
}

/* ---- O_TMPFILE ---- */

static void tmpfile_linkat(void)
{
	char buf[8];
	struct stat st;
	int fd = (int)OK(open(".", O_TMPFILE | O_RDWR, 0600));

	OK(fstat(fd, &st));
	CHECK(S_ISREG(st.st_mode));
	EQ_MODE(st.st_mode & 07777, 0600);
	EQ(st.st_nlink, 0);
	EQ(write(fd, "tmp", 3), 3);
	OK(linkat(fd, "", AT_FDCWD, "named", AT_EMPTY_PATH));
	OK(fstat(fd, &st));
	EQ(st.st_nlink, 1);
	EQ(pfs_lstat("named").st_ino, st.st_ino);
	OK(close(fd));
	fd = (int)OK(open("named", O_RDONLY));
	EQ(read(fd, buf, sizeof buf), 3);
	OK(close(fd));
}

static void tmpfile_excl_and_listing(void)
{
	char buf[4096];
	int fd = (int)OK(open(".", O_TMPFILE | O_RDWR | O_EXCL, 0600)), dir;

	ERR(linkat(fd, "", AT_FDCWD, "named", AT_EMPTY_PATH), ENOENT);
	dir = (int)OK(open(".", O_RDONLY | O_DIRECTORY));
	/* only "." and ".." */
	EQ(syscall(SYS_getdents64, dir, buf, sizeof buf), 2 * 24);
	OK(close(dir));
	OK(close(fd));
	ERR(open(".", O_TMPFILE | O_RDONLY, 0600), EINVAL);
}

/* ---- statfs ---- */

static void statfs_basic(void)
{
	struct statfs a, b;
	int fd;

	OK(statfs(".", &a));
	CHECK(a.f_bsize > 0);
	CHECK(a.f_blocks > 0);
	CHECK(a.f_bfree <= a.f_blocks);
	CHECK(a.f_bavail <= a.f_bfree);
	CHECK(a.f_ffree <= a.f_files);
	EQ(a.f_namelen, 255);
	fd = (int)OK(open(".", O_RDONLY | O_DIRECTORY));
	OK(fstatfs(fd, &b));
	OK(close(fd));
	EQ(b.f_type, a.f_type);
	EQ(b.f_blocks, a.f_blocks);
	EQ(b.f_bsize, a.f_bsize);
	ERR(statfs("missing", &a), ENOENT);
}

const struct pfs_case pfs_cases_special[] = {
	{"mknod/fifo", mknod_fifo},
	{"mknod/char_device", mknod_char_device},
	{"mknod/block_device", mknod_block_device},
	{"mknod/whiteout", mknod_whiteout},
	{"mknod/socket_bind", mknod_socket_bind},
	{"mknod/regular_and_errors", mknod_regular_and_errors},
	{"xattr/user_roundtrip", xattr_user_roundtrip},
	{"xattr/trusted_roundtrip", xattr_trusted_roundtrip},
	{"xattr/overlay_opaque", xattr_overlay_opaque},
	{"xattr/enodata", xattr_enodata},
	{"xattr/erange", xattr_erange},
	{"xattr/create_replace", xattr_create_replace},
	{"xattr/list_and_remove", xattr_list_and_remove},
	{"xattr/large_value", xattr_large_value},
	{"xattr/symlink", xattr_symlink},
	{"xattr/name_errors", xattr_name_errors},
	{"xattr/fd_calls", xattr_fd_calls},
	{"xattr/updates_ctime", xattr_updates_ctime},
	{"fallocate/extend", fallocate_extend},
	{"fallocate/keep_size", fallocate_keep_size},
	{"fallocate/punch_hole", fallocate_punch_hole},
	{"fallocate/errors", fallocate_errors},
	{"sync/file_and_dir", sync_file_and_dir},
	{"tmpfile/linkat", tmpfile_linkat},
	{"tmpfile/excl_and_listing", tmpfile_excl_and_listing},
	{"statfs/basic", statfs_basic},
	{NULL, NULL},
};
