/*
 * posixfs groups open, rw, lseek, truncate: open(2)/creat(2) flags and errors,
 * read/write/pread/pwrite, lseek incl. SEEK_DATA/SEEK_HOLE, truncate/ftruncate.
 */
#include "posixfs.h"

#include <stdlib.h>
#include <string.h>

#define MIB (1024 * 1024)

/* ---- open ---- */

static void open_creat_mode_umask(void)
{
	umask(022);
	OK(close((int)OK(open("a", O_CREAT | O_WRONLY, 0777))));
	EQ_MODE(pfs_lstat("a").st_mode, S_IFREG | 0755);
	umask(077);
	OK(close((int)OK(creat("b", 0777))));
	EQ_MODE(pfs_lstat("b").st_mode, S_IFREG | 0700);
	umask(0);
	OK(close((int)OK(open("c", O_CREAT | O_EXCL | O_RDWR, 0666))));
	EQ_MODE(pfs_lstat("c").st_mode, S_IFREG | 0666);
	OK(close((int)OK(open("d", O_CREAT | O_WRONLY, 0))));
	EQ_MODE(pfs_lstat("d").st_mode, S_IFREG);
}

static void open_creat_owner_and_size(void)
{
	struct stat st;

	OK(close((int)OK(open("a", O_CREAT | O_WRONLY, 0644))));
	st = pfs_lstat("a");
	EQ(st.st_uid, 0);
	EQ(st.st_gid, 0);
	EQ(st.st_size, 0);
	EQ(st.st_nlink, 1);
}

static void open_creat_existing_keeps(void)
{
	char buf[8];
	int fd;

	pfs_mkfile("a", 0600, "content", 7);
	fd = (int)OK(open("a", O_CREAT | O_RDWR, 0777));
	EQ(read(fd, buf, sizeof buf), 7);
	CHECK(memcmp(buf, "content", 7) == 0);
	OK(close(fd));
	EQ_MODE(pfs_lstat("a").st_mode, S_IFREG | 0600);
}

static void open_excl_exists(void)
{
	pfs_mkfile("a", 0644, NULL, 0);
	OK(mkdir("d", 0755));
	OK(symlink("missing", "l"));
	ERR(open("a", O_CREAT | O_EXCL | O_WRONLY, 0644), EEXIST);
	ERR(open("d", O_CREAT | O_EXCL | O_RDONLY, 0644), EEXIST);
	ERR(open("l", O_CREAT | O_EXCL | O_WRONLY, 0644), EEXIST);
	ERR(lstat("missing", &(struct stat){0}), ENOENT);
}

static void open_creat_through_dangling_symlink(void)
{
	OK(symlink("target", "l"));
	OK(close((int)OK(open("l", O_CREAT | O_WRONLY, 0640))));
	EQ_MODE(pfs_lstat("target").st_mode, S_IFREG | 0640);
	CHECK(S_ISLNK(pfs_lstat("l").st_mode));
}

static void open_trunc(void)
{
	static unsigned char buf[10000];
	struct stat before, after;
	int fd;

	pfs_mkfile("a", 0644, buf, sizeof buf);
	before = pfs_lstat("a");
	pfs_tick(before.st_ctim);
	fd = (int)OK(open("a", O_TRUNC | O_WRONLY));
	OK(close(fd));
	after = pfs_lstat("a");
	EQ(after.st_size, 0);
	LATER(after.st_mtim, before.st_mtim);
	LATER(after.st_ctim, before.st_ctim);
}

static void open_directory_flag(void)
{
	struct stat st;
	int fd;

	pfs_mkfile("f", 0644, NULL, 0);
	OK(mkdir("d", 0755));
	OK(symlink("d", "ld"));
	ERR(open("f", O_RDONLY | O_DIRECTORY), ENOTDIR);
	fd = (int)OK(open("d", O_RDONLY | O_DIRECTORY));
	OK(fstat(fd, &st));
	CHECK(S_ISDIR(st.st_mode));
	OK(close(fd));
	OK(close((int)OK(open("ld", O_RDONLY | O_DIRECTORY))));
	/* Linux checks the type before O_NOFOLLOW: a symlink is "not a directory" */
	ERR(open("ld", O_RDONLY | O_DIRECTORY | O_NOFOLLOW), ENOTDIR);
}

static void open_nofollow(void)
{
	struct stat st;
	int fd;

	pfs_mkfile("f", 0644, NULL, 0);
	OK(symlink("f", "l"));
	OK(mkdir("d", 0755));
	OK(symlink("d", "ld"));
	pfs_mkfile("d/g", 0644, NULL, 0);
	ERR(open("l", O_RDONLY | O_NOFOLLOW), ELOOP);
	ERR(open("l", O_WRONLY | O_CREAT | O_NOFOLLOW, 0644), ELOOP);
	fd = (int)OK(open("l", O_PATH | O_NOFOLLOW));
	OK(fstat(fd, &st));
	CHECK(S_ISLNK(st.st_mode));
	OK(close(fd));
	/* only the last component is not followed */
	OK(close((int)OK(open("ld/g", O_RDONLY | O_NOFOLLOW))));
}

static void open_enoent(void)
{
	ERR(open("missing", O_RDONLY), ENOENT);
	ERR(open("missing/f", O_CREAT | O_WRONLY, 0644), ENOENT);
	ERR(open("", O_RDONLY), ENOENT);
	OK(symlink("missing", "l"));
	ERR(open("l", O_RDONLY), ENOENT);
}

static void open_enotdir(void)
{
	pfs_mkfile("f", 0644, NULL, 0);
	ERR(open("f/x", O_RDONLY), ENOTDIR);
	ERR(open("f/x", O_CREAT | O_WRONLY, 0644), ENOTDIR);
	ERR(open("f/", O_RDONLY), ENOTDIR);
}

static void open_eisdir(void)
{
	OK(mkdir("d", 0755));
	ERR(open("d", O_WRONLY), EISDIR);
	ERR(open("d", O_RDWR), EISDIR);
	ERR(open("d", O_CREAT | O_WRONLY, 0644), EISDIR);
	ERR(open("d", O_RDONLY | O_TRUNC), EISDIR);
}

static void open_enametoolong(void)
{
	char path[5000];

	OK(close((int)OK(open(pfs_name(255), O_CREAT | O_WRONLY, 0644))));
	EQ(pfs_lstat(pfs_name(255)).st_size, 0);
	ERR(open(pfs_name(256), O_CREAT | O_WRONLY, 0644), ENAMETOOLONG);
	ERR(lstat(pfs_name(256), &(struct stat){0}), ENAMETOOLONG);
	memset(path, 'p', sizeof path - 1);
	for (size_t i = 100; i < sizeof path - 1; i += 100)
		path[i] = '/';
	path[sizeof path - 1] = '\0';
	ERR(open(path, O_RDONLY), ENAMETOOLONG);
}

static void open_eloop(void)
{
	OK(symlink("b", "a"));
	OK(symlink("a", "b"));
	ERR(open("a", O_RDONLY), ELOOP);
	ERR(open("a", O_CREAT | O_WRONLY, 0644), ELOOP);
	ERR(stat("a", &(struct stat){0}), ELOOP);
}

static void open_access_mode_ebadf(void)
{
	char c = 'x';
	int fd;

	pfs_mkfile("f", 0644, "abc", 3);
	fd = (int)OK(open("f", O_RDONLY));
	ERR(write(fd, &c, 1), EBADF);
	OK(close(fd));
	fd = (int)OK(open("f", O_WRONLY));
	ERR(read(fd, &c, 1), EBADF);
	OK(close(fd));
	fd = (int)OK(open("f", O_PATH));
	ERR(read(fd, &c, 1), EBADF);
	OK(close(fd));
}

static void open_append(void)
{
	char buf[16];
	int fd;

	pfs_mkfile("f", 0644, "abc", 3);
	fd = (int)OK(open("f", O_WRONLY | O_APPEND));
	OK(lseek(fd, 0, SEEK_SET));
	EQ(write(fd, "de", 2), 2);
	EQ(lseek(fd, 0, SEEK_CUR), 5);
	OK(close(fd));
	fd = (int)OK(open("f", O_RDONLY));
	EQ(read(fd, buf, sizeof buf), 5);
	CHECK(memcmp(buf, "abcde", 5) == 0);
	OK(close(fd));
}

/* ---- read/write ---- */

static void rw_roundtrip_1m(void)
{
	unsigned char *data = malloc(MIB), *back = malloc(MIB);
	size_t off = 0;
	struct stat st;
	int fd;

	CHECK(data && back);
	pfs_fill(data, MIB, 1);
	fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));
	while (off < MIB) {
		size_t n = MIB - off < 7777 ? MIB - off : 7777;
		EQ(write(fd, data + off, n), n);
		off += n;
	}
	OK(fstat(fd, &st));
	EQ(st.st_size, MIB);
	OK(close(fd));
	fd = (int)OK(open("f", O_RDONLY));
	for (off = 0; off < MIB; off += 4096)
		EQ(read(fd, back + off, 4096), 4096);
	EQ(read(fd, back, 1), 0);
	CHECK(memcmp(data, back, MIB) == 0);
	OK(close(fd));
	free(data);
	free(back);
}

static void rw_pread_pwrite_keep_offset(void)
{
	char buf[8];
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));

	EQ(write(fd, "0123456789", 10), 10);
	OK(lseek(fd, 2, SEEK_SET));
	EQ(pwrite(fd, "ab", 2, 5), 2);
	EQ(lseek(fd, 0, SEEK_CUR), 2);
	EQ(pread(fd, buf, 4, 4), 4);
	CHECK(memcmp(buf, "4ab7", 4) == 0);
	EQ(lseek(fd, 0, SEEK_CUR), 2);
	EQ(read(fd, buf, 3), 3);
	CHECK(memcmp(buf, "234", 3) == 0);
	OK(close(fd));
}

static void rw_write_past_eof_hole(void)
{
	static unsigned char buf[100000];
	struct stat st;
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));

	EQ(pwrite(fd, "z", 1, 100000), 1);
	OK(fstat(fd, &st));
	EQ(st.st_size, 100001);
	memset(buf, 0xff, sizeof buf);
	pfs_read_exact(fd, 0, buf, sizeof buf);
	CHECK(pfs_is_zero(buf, sizeof buf));
	OK(close(fd));
}

static void rw_read_at_eof(void)
{
	char buf[8];
	int fd;

	pfs_mkfile("f", 0644, "abc", 3);
	fd = (int)OK(open("f", O_RDONLY));
	EQ(read(fd, buf, 8), 3);
	EQ(read(fd, buf, 8), 0);
	EQ(pread(fd, buf, 8, 3), 0);
	EQ(pread(fd, buf, 8, 1 << 20), 0);
	EQ(pread(fd, buf, 8, 1), 2);
	OK(close(fd));
}

static void rw_unaligned_overwrite(void)
{
	static unsigned char want[3 * 4096], patch[4098], got[3 * 4096];
	int fd;

	pfs_fill(want, sizeof want, 2);
	pfs_fill(patch, sizeof patch, 3);
	pfs_mkfile("f", 0644, want, sizeof want);
	fd = (int)OK(open("f", O_RDWR));
	EQ(pwrite(fd, patch, sizeof patch, 4095), sizeof patch);
	memcpy(want + 4095, patch, sizeof patch);
	pfs_read_exact(fd, 0, got, sizeof got);
	CHECK(memcmp(want, got, sizeof got) == 0);
	OK(close(fd));
}

static void rw_two_fds_coherent(void)
{
	char buf[8];
	int w = (int)OK(open("f", O_CREAT | O_WRONLY, 0644));
	int r = (int)OK(open("f", O_RDONLY));

	EQ(write(w, "hello", 5), 5);
	EQ(read(r, buf, sizeof buf), 5);
	CHECK(memcmp(buf, "hello", 5) == 0);
	EQ(pwrite(w, "J", 1, 0), 1);
	EQ(pread(r, buf, 1, 0), 1);
	EQ(buf[0], 'J');
	OK(close(w));
	OK(close(r));
}

/* st_blocks accounts for data once it is on the file system (du relies on it). */
static void rw_blocks_after_fsync(void)
{
	static unsigned char buf[256 << 10];
	struct stat st;
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));

	OK(fstat(fd, &st)); /* a cached "empty file" view must not survive the write */
	EQ(st.st_blocks, 0);
	pfs_fill(buf, sizeof buf, 9);
	EQ(write(fd, buf, sizeof buf), sizeof buf);
	OK(fsync(fd));
	OK(fstat(fd, &st));
	CHECK(st.st_blocks >= (blkcnt_t)(sizeof buf / 512));
	OK(close(fd));
}

/* ---- lseek ---- */

static void lseek_whence(void)
{
	int fd;

	pfs_mkfile("f", 0644, "0123456789", 10);
	fd = (int)OK(open("f", O_RDONLY));
	EQ(lseek(fd, 3, SEEK_SET), 3);
	EQ(lseek(fd, 2, SEEK_CUR), 5);
	EQ(lseek(fd, -1, SEEK_END), 9);
	EQ(lseek(fd, 100, SEEK_END), 110);
	ERR(lseek(fd, -11, SEEK_END), EINVAL);
	ERR(lseek(fd, -1, SEEK_SET), EINVAL);
	ERR(lseek(fd, 0, 42), EINVAL);
	OK(close(fd));
}

/* data [0,64K), hole [64K,1M), data [1M,1M+64K) */
static int make_sparse(void)
{
	static unsigned char buf[65536];
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));

	pfs_fill(buf, sizeof buf, 4);
	EQ(pwrite(fd, buf, sizeof buf, 0), sizeof buf);
	EQ(pwrite(fd, buf, sizeof buf, MIB), sizeof buf);
	OK(fsync(fd));
	return fd;
}

static void lseek_data_hole_enxio(void)
{
	int fd = make_sparse();

	ERR(lseek(fd, MIB + 65536, SEEK_DATA), ENXIO);
	ERR(lseek(fd, MIB + 65536, SEEK_HOLE), ENXIO);
	ERR(lseek(fd, 4 * MIB, SEEK_DATA), ENXIO);
	OK(close(fd));
}

/* What every file system must answer (treating all of a file as data is allowed). */
static void lseek_data_hole_consistent(void)
{
	int fd = make_sparse();
	off_t hole = OK(lseek(fd, 0, SEEK_HOLE));

	CHECK(hole == 65536 || hole == MIB + 65536);
	EQ(lseek(fd, 0, SEEK_DATA), 0);
	EQ(lseek(fd, 100, SEEK_DATA), 100);
	EQ(lseek(fd, MIB + 10, SEEK_DATA), MIB + 10);
	EQ(lseek(fd, MIB, SEEK_HOLE), MIB + 65536);
	OK(close(fd));
}

/* A passthrough to a hole-aware file system must report the holes. */
static void lseek_data_hole_detects(void)
{
	int fd = make_sparse(), empty;

	EQ(lseek(fd, 0, SEEK_HOLE), 65536);
	EQ(lseek(fd, 65536, SEEK_DATA), MIB);
	EQ(lseek(fd, 70000, SEEK_HOLE), 70000);
	OK(close(fd));
	empty = (int)OK(open("g", O_CREAT | O_RDWR, 0644));
	OK(ftruncate(empty, MIB));
	ERR(lseek(empty, 0, SEEK_DATA), ENXIO);
	EQ(lseek(empty, 0, SEEK_HOLE), 0);
	OK(close(empty));
}

/* ---- truncate ---- */

static void truncate_grow_zeroes(void)
{
	static unsigned char buf[10000];
	int fd;

	pfs_mkfile("f", 0644, "abc", 3);
	OK(truncate("f", 10000));
	EQ(pfs_lstat("f").st_size, 10000);
	fd = (int)OK(open("f", O_RDONLY));
	pfs_read_exact(fd, 0, buf, sizeof buf);
	CHECK(memcmp(buf, "abc", 3) == 0);
	CHECK(pfs_is_zero(buf + 3, sizeof buf - 3));
	OK(close(fd));
}

static void truncate_shrink_then_regrow(void)
{
	static unsigned char data[10000], buf[200];
	int fd;

	pfs_fill(data, sizeof data, 5);
	pfs_mkfile("f", 0644, data, sizeof data);
	OK(truncate("f", 100));
	EQ(pfs_lstat("f").st_size, 100);
	OK(truncate("f", 200));
	fd = (int)OK(open("f", O_RDONLY));
	pfs_read_exact(fd, 0, buf, sizeof buf);
	CHECK(memcmp(buf, data, 100) == 0);
	CHECK(pfs_is_zero(buf + 100, 100)); /* cut data must not come back */
	OK(close(fd));
}

static void truncate_ftruncate(void)
{
	struct stat st;
	int fd = (int)OK(open("f", O_CREAT | O_RDWR, 0644));

	EQ(write(fd, "0123456789", 10), 10);
	OK(ftruncate(fd, 4));
	OK(fstat(fd, &st));
	EQ(st.st_size, 4);
	OK(ftruncate(fd, 8192));
	OK(fstat(fd, &st));
	EQ(st.st_size, 8192);
	EQ(lseek(fd, 0, SEEK_CUR), 10); /* the offset is not moved */
	OK(close(fd));
	fd = (int)OK(open("f", O_RDONLY));
	ERR(ftruncate(fd, 0), EINVAL);
	OK(close(fd));
	EQ(pfs_lstat("f").st_size, 8192);
}

static void truncate_sparse_large(void)
{
	unsigned char buf[4096];
	struct stat st;
	int fd;

	pfs_mkfile("f", 0644, NULL, 0);
	OK(truncate("f", 1LL << 30));
	st = pfs_lstat("f");
	EQ(st.st_size, 1LL << 30);
	CHECK(st.st_blocks <= 64);
	fd = (int)OK(open("f", O_RDONLY));
	memset(buf, 1, sizeof buf);
	pfs_read_exact(fd, (1LL << 30) - 4096, buf, sizeof buf);
	CHECK(pfs_is_zero(buf, sizeof buf));
	OK(close(fd));
}

static void truncate_updates_times(void)
{
	struct stat before, after;

	pfs_mkfile("f", 0644, "abc", 3);
	before = pfs_lstat("f");
	pfs_tick(before.st_ctim);
	OK(truncate("f", 1));
	after = pfs_lstat("f");
	LATER(after.st_mtim, before.st_mtim);
	LATER(after.st_ctim, before.st_ctim);
}

static void truncate_errors(void)
{
	OK(mkdir("d", 0755));
	pfs_mkfile("f", 0644, NULL, 0);
	ERR(truncate("d", 0), EISDIR);
	ERR(truncate("f", -1), EINVAL);
	ERR(truncate("missing", 0), ENOENT);
	ERR(truncate("f/x", 0), ENOTDIR);
}

const struct pfs_case pfs_cases_open[] = {
	{"open/creat_mode_umask", open_creat_mode_umask},
	{"open/creat_owner_and_size", open_creat_owner_and_size},
	{"open/creat_existing_keeps", open_creat_existing_keeps},
	{"open/excl_exists", open_excl_exists},
	{"open/creat_through_dangling_symlink", open_creat_through_dangling_symlink},
	{"open/trunc", open_trunc},
	{"open/directory_flag", open_directory_flag},
	{"open/nofollow", open_nofollow},
	{"open/enoent", open_enoent},
	{"open/enotdir", open_enotdir},
	{"open/eisdir", open_eisdir},
	{"open/enametoolong", open_enametoolong},
	{"open/eloop", open_eloop},
	{"open/access_mode_ebadf", open_access_mode_ebadf},
	{"open/append", open_append},
	{"rw/roundtrip_1m", rw_roundtrip_1m},
	{"rw/pread_pwrite_keep_offset", rw_pread_pwrite_keep_offset},
	{"rw/write_past_eof_hole", rw_write_past_eof_hole},
	{"rw/read_at_eof", rw_read_at_eof},
	{"rw/unaligned_overwrite", rw_unaligned_overwrite},
	{"rw/two_fds_coherent", rw_two_fds_coherent},
	{"rw/blocks_after_fsync", rw_blocks_after_fsync},
	{"lseek/whence", lseek_whence},
	{"lseek/data_hole_enxio", lseek_data_hole_enxio},
	{"lseek/data_hole_consistent", lseek_data_hole_consistent},
	{"lseek/data_hole_detects", lseek_data_hole_detects},
	{"truncate/grow_zeroes", truncate_grow_zeroes},
	{"truncate/shrink_then_regrow", truncate_shrink_then_regrow},
	{"truncate/ftruncate", truncate_ftruncate},
	{"truncate/sparse_large", truncate_sparse_large},
	{"truncate/updates_times", truncate_updates_times},
	{"truncate/errors", truncate_errors},
	{NULL, NULL},
};
