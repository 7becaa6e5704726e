/*
 * posixfs group perm: what unprivileged uids may do (pfs_as runs the checks
 * in a child with UID_A/UID_B and no supplementary groups): ownership of new
 * files, search/read/write permission, the sticky bit, setuid/setgid clearing
 * on write, truncate and chmod, and owner-only operations.
 */
#include "posixfs.h"

#include <string.h>
#include <sys/sysmacros.h>
#include <sys/xattr.h>

static void as_a(void (*fn)(void *)) { pfs_as(UID_A, GID_A, fn, NULL); }
static void as_b(void (*fn)(void *)) { pfs_as(UID_B, GID_B, fn, NULL); }

/* ---- ownership of new objects ---- */

static void create_owner_body(void *arg)
{
	static const char *const names[] = {"d/f", "d/s", "d/l", "d/p"};
	(void)arg;
	pfs_mkfile("d/f", 0644, NULL, 0);
	OK(mkdir("d/s", 0755));
	OK(symlink("f", "d/l"));
	OK(mkfifo("d/p", 0644));
	for (size_t i = 0; i < 4; i++) {
		struct stat st = pfs_lstat(names[i]);
		EQ(st.st_uid, UID_A);
		EQ(st.st_gid, GID_A);
	}
}

static void perm_create_owner(void)
{
	OK(mkdir("d", 0777));
	OK(chmod("d", 0777));
	as_a(create_owner_body);
	EQ(pfs_lstat("d/f").st_uid, UID_A);
}

static void perm_setgid_dir_inherit(void)
{
	struct stat st;

	OK(mkdir("d", 0755));
	OK(chown("d", 0, 4000));
	OK(chmod("d", 02775));
	pfs_mkfile("d/f", 0644, NULL, 0);
	OK(mkdir("d/s", 0755));
	st = pfs_lstat("d/f");
	EQ(st.st_gid, 4000);
	st = pfs_lstat("d/s");
	EQ(st.st_gid, 4000);
	EQ_MODE(st.st_mode, S_IFDIR | 02755);
}

/* ---- search / read / write permission ---- */

static void dir_0700_body(void *arg)
{
	(void)arg;
	ERR(lstat("d/f", &(struct stat){0}), EACCES);
	ERR(open("d/f", O_RDONLY), EACCES);
	ERR(open("d", O_RDONLY | O_DIRECTORY), EACCES);
	ERR(open("d/g", O_CREAT | O_WRONLY, 0644), EACCES);
	ERR(unlink("d/f"), EACCES);
	CHECK(S_ISDIR(pfs_lstat("d").st_mode));
}

static void perm_dir_0700(void)
{
	OK(mkdir("d", 0700));
	pfs_mkfile("d/f", 0644, NULL, 0);
	as_a(dir_0700_body);
}

static void dir_search_only_body(void *arg)
{
	(void)arg;
	ERR(open("x", O_RDONLY | O_DIRECTORY), EACCES); /* 0711: no listing */
	CHECK(S_ISREG(pfs_lstat("x/f").st_mode));      /* ... but lookup works */
	OK(close((int)OK(open("r", O_RDONLY | O_DIRECTORY)))); /* 0744: listing */
	ERR(lstat("r/f", &(struct stat){0}), EACCES);  /* ... but no lookup */
	ERR(open("x/new", O_CREAT | O_WRONLY, 0644), EACCES); /* no write */
}

static void perm_dir_search_vs_read(void)
{
	OK(mkdir("x", 0711));
	OK(mkdir("r", 0744));
	pfs_mkfile("x/f", 0644, NULL, 0);
	pfs_mkfile("r/f", 0644, NULL, 0);
	as_a(dir_search_only_body);
}

static void file_modes_body(void *arg)
{
	(void)arg;
	OK(close((int)OK(open("r644", O_RDONLY))));
	ERR(open("r644", O_WRONLY), EACCES);
	ERR(open("r600", O_RDONLY), EACCES);
	ERR(truncate("r644", 0), EACCES);
	/* the owner class decides for the owner, even if "others" may more */
	ERR(open("a066", O_RDONLY), EACCES);
	OK(close((int)OK(open("a606", O_RDWR))));
	/* group class for a member of the file's group */
	ERR(open("g0604", O_RDONLY), EACCES);
}

static void perm_file_modes(void)
{
	pfs_mkfile("r644", 0644, NULL, 0);
	pfs_mkfile("r600", 0600, NULL, 0);
	pfs_mkfile("a066", 0066, NULL, 0);
	OK(chmod("a066", 0066));
	OK(chown("a066", UID_A, GID_A));
	pfs_mkfile("a606", 0606, NULL, 0);
	OK(chown("a606", UID_A, GID_A));
	pfs_mkfile("g0604", 0604, NULL, 0);
	OK(chown("g0604", 0, GID_A));
	as_a(file_modes_body);
}

static void root_overrides_body(void *arg)
{
	(void)arg;
	ERR(open("f", O_RDONLY), EACCES);
}

static void perm_root_overrides(void)
{
	pfs_mkfile("f", 0, "x", 1);
	OK(chmod("f", 0));
	OK(chown("f", UID_A, GID_A));
	OK(close((int)OK(open("f", O_RDWR)))); /* CAP_DAC_OVERRIDE */
	OK(mkdir("d", 0));
	pfs_mkfile("d/g", 0644, NULL, 0);
	as_a(root_overrides_body);
}

/* ---- sticky directories ---- */

static void sticky_b_body(void *arg)
{
	(void)arg;
	ERR(unlink("t/a"), EPERM);
	ERR(rename("t/a", "t/x"), EPERM);
	ERR(rename("t/b", "t/a"), EPERM); /* may not replace A's file either */
	ERR(rmdir("t/adir"), EPERM);
	OK(unlink("t/b"));
}

static void sticky_a_body(void *arg)
{
	(void)arg;
	OK(rename("t/a", "t/a2"));
	OK(unlink("t/a2"));
	OK(rmdir("t/adir"));
}

static void sticky_owner_body(void *arg)
{
	(void)arg;
	OK(unlink("u/a")); /* the sticky directory's owner may */
}

static void perm_sticky_dir(void)
{
	OK(mkdir("t", 01777));
	OK(chmod("t", 01777));
	pfs_mkfile("t/a", 0666, NULL, 0);
	OK(chown("t/a", UID_A, GID_A));
	OK(mkdir("t/adir", 0777));
	OK(chown("t/adir", UID_A, GID_A));
	pfs_mkfile("t/b", 0666, NULL, 0);
	OK(chown("t/b", UID_B, GID_B));
	as_b(sticky_b_body);
	as_a(sticky_a_body);
	OK(mkdir("u", 01777));
	OK(chmod("u", 01777));
	OK(chown("u", UID_B, GID_B));
	pfs_mkfile("u/a", 0666, NULL, 0);
	OK(chown("u/a", UID_A, GID_A));
	as_b(sticky_owner_body);
}

/* ---- owner-only operations ---- */

static void nonowner_body(void *arg)
{
	struct timespec ts[2] = {{1, 0}, {2, 0}};
	(void)arg;
	ERR(chmod("a", 0777), EPERM);
	ERR(chown("a", UID_B, GID_B), EPERM);
	ERR(utimensat(AT_FDCWD, "a", ts, 0), EPERM);
	OK(utimensat(AT_FDCWD, "a", NULL, 0)); /* "now" needs only write permission */
	ERR(utimensat(AT_FDCWD, "ro", NULL, 0), EACCES);
}

static void owner_body(void *arg)
{
	(void)arg;
	OK(chmod("a", 0600));
	ERR(chown("a", UID_B, (gid_t)-1), EPERM);
	ERR(chown("a", (uid_t)-1, GID_B), EPERM); /* not a member of GID_B */
	OK(chown("a", (uid_t)-1, GID_A));
	OK(chown("a", UID_A, (gid_t)-1));
	ERR(mknod("dev", S_IFCHR | 0600, makedev(1, 3)), EPERM);
	OK(mkfifo("fifo", 0600));
}

static void perm_owner_only_ops(void)
{
	OK(chmod(".", 0777));
	pfs_mkfile("a", 0666, NULL, 0);
	OK(chmod("a", 0666));
	OK(chown("a", UID_A, 0));
	pfs_mkfile("ro", 0644, NULL, 0);
	as_b(nonowner_body);
	as_a(owner_body);
	EQ_MODE(pfs_lstat("a").st_mode, S_IFREG | 0600);
	EQ(pfs_lstat("a").st_gid, GID_A);
}

static void chmod_sgid_body(void *arg)
{
	(void)arg;
	OK(chmod("f", 02755)); /* not in the file's group: S_ISGID silently dropped */
	EQ_MODE(pfs_lstat("f").st_mode, S_IFREG | 0755);
	OK(chmod("g", 02755));
	EQ_MODE(pfs_lstat("g").st_mode, S_IFREG | 02755);
}

static void perm_chmod_clears_sgid(void)
{
	pfs_mkfile("f", 0644, NULL, 0);
	OK(chown("f", UID_A, 0));
	pfs_mkfile("g", 0644, NULL, 0);
	OK(chown("g", UID_A, GID_A));
	as_a(chmod_sgid_body);
}

/* ---- setuid/setgid cleared by unprivileged writes ---- */

static void write_body(void *arg)
{
	int fd = (int)OK(open((const char *)arg, O_WRONLY));

	EQ(write(fd, "x", 1), 1);
	OK(close(fd));
}

static void truncate_body(void *arg)
{
	int fd = (int)OK(open((const char *)arg, O_WRONLY));

	OK(ftruncate(fd, 100));
	OK(close(fd));
}

static void setid_file(const char *name, mode_t mode, uid_t owner)
{
	pfs_mkfile(name, 0644, "data", 4);
	OK(chown(name, owner, owner));
	OK(chmod(name, mode));
}

static void perm_write_clears_setid(void)
{
	setid_file("root", 06777, 0);
	pfs_as(UID_A, GID_A, write_body, (void *)"root");
	EQ_MODE(pfs_lstat("root").st_mode, S_IFREG | 0777);
	setid_file("own", 04755, UID_A); /* even the owner's write clears it */
	pfs_as(UID_A, GID_A, write_body, (void *)"own");
	EQ_MODE(pfs_lstat("own").st_mode, S_IFREG | 0755);
}

static void perm_truncate_clears_setid(void)
{
	setid_file("root", 06777, 0);
	pfs_as(UID_A, GID_A, truncate_body, (void *)"root");
	EQ_MODE(pfs_lstat("root").st_mode, S_IFREG | 0777);
	EQ(pfs_lstat("root").st_size, 100);
}

static void perm_root_write_keeps_setid(void)
{
	setid_file("f", 06755, UID_A);
	write_body((void *)"f"); /* CAP_FSETID */
	EQ_MODE(pfs_lstat("f").st_mode, S_IFREG | 06755);
}

/* ---- xattrs need the matching permission or privilege ---- */

static void xattr_body(void *arg)
{
	char buf[256];
	ssize_t n;
	(void)arg;
	ERR(setxattr("ro", "user.x", "1", 1, 0), EACCES);
	ERR(getxattr("noread", "user.x", buf, sizeof buf), EACCES);
	EQ(getxattr("ro", "user.x", buf, sizeof buf), 1);
	ERR(setxattr("rw", "trusted.x", "1", 1, 0), EPERM);
	ERR(getxattr("ro", "trusted.t", buf, sizeof buf), ENODATA);
	n = OK(listxattr("ro", buf, sizeof buf));
	CHECK(memmem(buf, (size_t)n, "user.x", 7) != NULL);
	CHECK(memmem(buf, (size_t)n, "trusted.", 8) == NULL); /* hidden from the unprivileged */
}

static void perm_xattr_access(void)
{
	pfs_mkfile("ro", 0644, NULL, 0);
	OK(setxattr("ro", "user.x", "1", 1, 0));
	OK(setxattr("ro", "trusted.t", "1", 1, 0));
	pfs_mkfile("noread", 0600, NULL, 0);
	OK(setxattr("noread", "user.x", "1", 1, 0));
	pfs_mkfile("rw", 0666, NULL, 0);
	OK(chmod("rw", 0666));
	as_a(xattr_body);
}

const struct pfs_case pfs_cases_perm[] = {
	{"perm/create_owner", perm_create_owner},
	{"perm/setgid_dir_inherit", perm_setgid_dir_inherit},
	{"perm/dir_0700", perm_dir_0700},
	{"perm/dir_search_vs_read", perm_dir_search_vs_read},
	{"perm/file_modes", perm_file_modes},
	{"perm/root_overrides", perm_root_overrides},
	{"perm/sticky_dir", perm_sticky_dir},
	{"perm/owner_only_ops", perm_owner_only_ops},
	{"perm/chmod_clears_sgid", perm_chmod_clears_sgid},
	{"perm/write_clears_setid", perm_write_clears_setid},
	{"perm/truncate_clears_setid", perm_truncate_clears_setid},
	{"perm/root_write_keeps_setid", perm_root_write_keeps_setid},
	{"perm/xattr_access", perm_xattr_access},
	{NULL, NULL},
};
