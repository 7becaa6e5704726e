/*
 * vmtool: tiny static helper for the vhostfs test guest.
 *
 * busybox has no getfattr and its stat cannot print everything the tests
 * compare, so this one multi-call binary fills the gaps:
 *
 *   vmtool xattrs PATH      one line per xattr: NAME=HEXVALUE (lgetxattr, no follow)
 *   vmtool lstat PATH       the manifest record of PATH alone (no sha256)
 *   vmtool manifest ROOT    walk ROOT (no symlink follow) and print one record per
 *                           entry, in the format tests/support/tree.py parses
 *   vmtool drain TTY        wait until TTY's transmit buffer is empty (tcdrain), so
 *                           /init can power off without truncating the result port
 *   vmtool now              CLOCK_MONOTONIC in seconds (busybox date has no %N), for
 *                           hack/bench to time guest work
 *   vmtool randread FILE COUNT SEED
 *                           COUNT preads of 4 KiB at page-aligned offsets drawn from a
 *                           xorshift64 stream seeded with SEED (the same offsets for every
 *                           daemon); prints "reads=N bytes=B seconds=S" timed inside
 *
 * Record format (one line, fields separated by TAB, path first):
 *   PATH  type=T mode=OOOO uid=N gid=N ino=N mtime=S.NNNNNNNNN
 *         [size=N] [nlink=N] [rdev=MAJ:MIN] [target=ESC] [xattrs=NAME:HEX,...]
 *         [sha256=HEX | sha256s=HEX]
 * PATH, symlink targets and xattr names are escaped: bytes outside 0x21..0x7e,
 * plus '\\', ':', ',' and '=' become \xHH, so any byte string round-trips and
 * a record is always exactly one line.  Regular files larger than
 * SAMPLE_THRESHOLD are hashed over sampled windows (sha256s) so a multi-GiB
 * sparse file stays cheap to check under TCG; tree.py implements the same rule.
 *
 * Kept dependency free (own SHA-256) so it links statically with plain glibc.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/xattr.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#define SAMPLE_THRESHOLD (64ULL << 20)
#define SAMPLE_STRIDE (1ULL << 30)
#define SAMPLE_LEN (1ULL << 20)

/* ---- SHA-256 (FIPS 180-4) ------------------------------------------------ */

struct sha256 {
	uint32_t h[8];
	uint64_t len;
	unsigned char buf[64];
	size_t fill;
};

static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
	0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
	0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
	0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
	0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
	0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
	0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
	0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static uint32_t ror(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha_block(struct sha256 *s, const unsigned char *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, h;
	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ror(w[i - 15], 7) ^ ror(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ror(w[i - 2], 17) ^ ror(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = s->h[0]; b = s->h[1]; c = s->h[2]; d = s->h[3];
	e = s->h[4]; f = s->h[5]; g = s->h[6]; h = s->h[7];
	for (int i = 0; i < 64; i++) {
		uint32_t t1 = h + (ror(e, 6) ^ ror(e, 11) ^ ror(e, 25)) +
			      ((e & f) ^ (~e & g)) + K[i] + w[i];
		uint32_t t2 = (ror(a, 2) ^ ror(a, 13) ^ ror(a, 22)) +
			      ((a & b) ^ (a & c) ^ (b & c));
		h = g; g = f; f = e; e = d + t1;
		d = c; c = b; b = a; a = t1 + t2;
	}
	s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d;
	s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

static void sha_init(struct sha256 *s)
{
	static const uint32_t iv[8] = {
		0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
		0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
	};
	memcpy(s->h, iv, sizeof iv);
	s->len = 0;
	s->fill = 0;
}

static void sha_update(struct sha256 *s, const unsigned char *p, size_t n)
{
	s->len += n;
	while (n > 0) {
		size_t take = 64 - s->fill < n ? 64 - s->fill : n;
		memcpy(s->buf + s->fill, p, take);
		s->fill += take;
		p += take;
		n -= take;
		if (s->fill == 64) {
			sha_block(s, s->buf);
			s->fill = 0;
		}
	}
}

static void sha_final(struct sha256 *s, char hex[65])
{
	uint64_t bits = s->len * 8;
	unsigned char pad = 0x80, zero = 0, lenbuf[8];
	sha_update(s, &pad, 1);
	while (s->fill != 56)
		sha_update(s, &zero, 1);
	for (int i = 0; i < 8; i++)
		lenbuf[i] = (unsigned char)(bits >> (56 - 8 * i));
	sha_update(s, lenbuf, 8);
	for (int i = 0; i < 8; i++)
		sprintf(hex + 8 * i, "%08x", s->h[i]);
}

/* ---- output helpers ------------------------------------------------------ */

static int failures;

static void warn_errno(const char *what, const char *path)
{
	fprintf(stderr, "vmtool: %s %s: %s\n", what, path, strerror(errno));
	failures++;
}

static void put_escaped(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		unsigned char c = p[i];
		if (c <= 0x20 || c >= 0x7f || c == '\\' || c == ':' || c == ',' || c == '=')
			printf("\\x%02x", c);
		else
			putchar(c);
	}
}

static void put_hex(const unsigned char *p, size_t n)
{
	for (size_t i = 0; i < n; i++)
		printf("%02x", p[i]);
}

static int cmp_str(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

/*
 * Calls fn(name, value, value_len) for each xattr of path in name order.
 * Returns -1 (errno set) if listing fails for a reason other than "this
 * filesystem/daemon has no xattr support", which counts as no xattrs.
 */
typedef void (*xattr_fn)(const char *name, const unsigned char *val, size_t len, int first);

static int each_xattr(const char *path, xattr_fn fn)
{
	ssize_t n = llistxattr(path, NULL, 0);
	if (n < 0)
		return (errno == ENOTSUP || errno == ENOSYS) ? 0 : -1;
	if (n == 0)
		return 0;
	char *names = malloc((size_t)n);
	n = llistxattr(path, names, (size_t)n);
	if (n < 0) {
		free(names);
		return -1;
	}
	size_t count = 0;
	for (ssize_t i = 0; i < n; i += (ssize_t)strlen(names + i) + 1)
		count++;
	char **sorted = calloc(count, sizeof *sorted);
	count = 0;
	for (ssize_t i = 0; i < n; i += (ssize_t)strlen(names + i) + 1)
		sorted[count++] = names + i;
	qsort(sorted, count, sizeof *sorted, cmp_str);
	int rc = 0;
	for (size_t i = 0; i < count; i++) {
		ssize_t vlen = lgetxattr(path, sorted[i], NULL, 0);
		unsigned char *val = malloc(vlen > 0 ? (size_t)vlen : 1);
		if (vlen >= 0)
			vlen = lgetxattr(path, sorted[i], val, vlen > 0 ? (size_t)vlen : 0);
		if (vlen < 0) {
			rc = -1;
			free(val);
			break;
		}
		fn(sorted[i], val, (size_t)vlen, i == 0);
		free(val);
	}
	free(sorted);
	free(names);
	return rc;
}

static void print_xattr_line(const char *name, const unsigned char *val, size_t len, int first)
{
	(void)first;
	fputs(name, stdout);
	putchar('=');
	put_hex(val, len);
	putchar('\n');
}

static void print_xattr_field(const char *name, const unsigned char *val, size_t len, int first)
{
	fputs(first ? "\txattrs=" : ",", stdout);
	put_escaped((const unsigned char *)name, strlen(name));
	putchar(':');
	put_hex(val, len);
}

/* ---- hashing -------------------------------------------------------------- */

static int hash_range(int fd, struct sha256 *s, uint64_t off, uint64_t len)
{
	static unsigned char buf[1 << 16];
	while (len > 0) {
		size_t want = len < sizeof buf ? (size_t)len : sizeof buf;
		ssize_t got = pread(fd, buf, want, (off_t)off);
		if (got < 0)
			return -1;
		if (got == 0) {
			errno = EIO; /* file shorter than its st_size: report, never loop */
			return -1;
		}
		sha_update(s, buf, (size_t)got);
		off += (uint64_t)got;
		len -= (uint64_t)got;
	}
	return 0;
}

/* Must match tree.py's sampled_ranges(). */
static int hash_file(const char *path, uint64_t size, char hex[65], int *sampled)
{
	int fd = open(path, O_RDONLY | O_NOFOLLOW);
	if (fd < 0)
		return -1;
	struct sha256 s;
	sha_init(&s);
	int rc = 0;
	*sampled = size > SAMPLE_THRESHOLD;
	if (!*sampled) {
		rc = hash_range(fd, &s, 0, size);
	} else {
		for (uint64_t off = 0; off < size && rc == 0; off += SAMPLE_STRIDE) {
			uint64_t len = size - off < SAMPLE_LEN ? size - off : SAMPLE_LEN;
			rc = hash_range(fd, &s, off, len);
		}
		if (rc == 0)
			rc = hash_range(fd, &s, size - SAMPLE_LEN, SAMPLE_LEN);
	}
	int saved = errno;
	close(fd);
	errno = saved;
	if (rc == 0)
		sha_final(&s, hex);
	return rc;
}

/* ---- records -------------------------------------------------------------- */

static char type_char(mode_t m)
{
	switch (m & S_IFMT) {
	case S_IFREG: return 'f';
	case S_IFDIR: return 'd';
	case S_IFLNK: return 'l';
	case S_IFCHR: return 'c';
	case S_IFBLK: return 'b';
	case S_IFIFO: return 'p';
	case S_IFSOCK: return 's';
	default: return '?';
	}
}

/* Prints the record of path; rel is the name printed (relative to the root). */
static void print_record(const char *path, const char *rel, int with_hash)
{
	struct stat st;
	if (lstat(path, &st) < 0) {
		warn_errno("lstat", path);
		return;
	}
	put_escaped((const unsigned char *)rel, strlen(rel));
	printf("\ttype=%c\tmode=%04o\tuid=%u\tgid=%u\tino=%llu\tmtime=%lld.%09ld",
	       type_char(st.st_mode), (unsigned)(st.st_mode & 07777), (unsigned)st.st_uid,
	       (unsigned)st.st_gid, (unsigned long long)st.st_ino, (long long)st.st_mtim.tv_sec,
	       (long)st.st_mtim.tv_nsec);
	if (S_ISREG(st.st_mode) || S_ISLNK(st.st_mode))
		printf("\tsize=%lld", (long long)st.st_size);
	if (!S_ISDIR(st.st_mode))
		printf("\tnlink=%lu", (unsigned long)st.st_nlink);
	if (S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode))
		printf("\trdev=%u:%u", major(st.st_rdev), minor(st.st_rdev));
	if (S_ISLNK(st.st_mode)) {
		char target[8192];
		ssize_t n = readlink(path, target, sizeof target);
		if (n < 0)
			warn_errno("readlink", path);
		else {
			fputs("\ttarget=", stdout);
			put_escaped((const unsigned char *)target, (size_t)n);
		}
	}
	if (each_xattr(path, print_xattr_field) < 0)
		warn_errno("xattrs", path);
	if (with_hash && S_ISREG(st.st_mode)) {
		char hex[65];
		int sampled;
		if (hash_file(path, (uint64_t)st.st_size, hex, &sampled) < 0)
			warn_errno("hash", path);
		else
			printf("\t%s=%s", sampled ? "sha256s" : "sha256", hex);
	}
	putchar('\n');
}

static void walk(char *path, size_t root_len)
{
	const char *rel = path[root_len] ? path + root_len + 1 : ".";
	print_record(path, rel, 1);
	struct stat st;
	if (lstat(path, &st) < 0 || !S_ISDIR(st.st_mode))
		return;
	DIR *d = opendir(path);
	if (!d) {
		warn_errno("opendir", path);
		return;
	}
	size_t len = strlen(path);
	struct dirent *e;
	errno = 0;
	while ((e = readdir(d)) != NULL) {
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, ".."))
			continue;
		size_t nlen = strlen(e->d_name);
		if (len + 1 + nlen >= PATH_MAX) {
			fprintf(stderr, "vmtool: path too long under %s\n", path);
			failures++;
			continue;
		}
		path[len] = '/';
		memcpy(path + len + 1, e->d_name, nlen + 1);
		walk(path, root_len);
		path[len] = '\0';
		errno = 0;
	}
	if (errno)
		warn_errno("readdir", path);
	closedir(d);
}

/* ---- benchmark helpers ---------------------------------------------------- */

#define RANDREAD_BLOCK 4096

static double monotonic_seconds(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Marsaglia xorshift64: cheap, and reproducible across runs so both daemons
 * see the same offsets; the seed must not be 0 (a fixed point). */
static uint64_t xorshift64(uint64_t *state)
{
	uint64_t x = *state;
	x ^= x << 13;
	x ^= x >> 7;
	x ^= x << 17;
	return *state = x;
}

static int randread(const char *path, const char *count_arg, const char *seed_arg)
{
	char *end;
	unsigned long long count = strtoull(count_arg, &end, 10);
	if (*end || !*count_arg)
		return 2;
	uint64_t state = strtoull(seed_arg, &end, 10);
	if (*end || !*seed_arg)
		return 2;
	state = state ? state : 0x9e3779b97f4a7c15ULL;
	int fd = open(path, O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0) {
		warn_errno("randread", path);
		return 1;
	}
	uint64_t blocks = (uint64_t)st.st_size / RANDREAD_BLOCK;
	if (blocks == 0) {
		fprintf(stderr, "vmtool: randread %s: smaller than one block\n", path);
		close(fd);
		return 1;
	}
	static unsigned char buf[RANDREAD_BLOCK];
	unsigned long long bytes = 0;
	double start = monotonic_seconds();
	for (unsigned long long i = 0; i < count; i++) {
		off_t off = (off_t)(xorshift64(&state) % blocks) * RANDREAD_BLOCK;
		ssize_t got = pread(fd, buf, sizeof buf, off);
		if (got != (ssize_t)sizeof buf) {
			/* a short read means a broken daemon: fail instead of timing it */
			if (got >= 0)
				errno = EIO;
			warn_errno("randread", path);
			close(fd);
			return 1;
		}
		bytes += (unsigned long long)got;
	}
	double seconds = monotonic_seconds() - start;
	close(fd);
	printf("reads=%llu bytes=%llu seconds=%.9f\n", count, bytes, seconds);
	return 0;
}

int main(int argc, char **argv)
{
	if (argc == 2 && !strcmp(argv[1], "now")) {
		printf("%.9f\n", monotonic_seconds());
		return fflush(stdout) != 0;
	}
	if (argc == 5 && !strcmp(argv[1], "randread")) {
		int rc = randread(argv[2], argv[3], argv[4]);
		if (rc == 2)
			fprintf(stderr, "usage: vmtool randread FILE COUNT SEED\n");
		return fflush(stdout) != 0 ? 1 : rc;
	}
	if (argc != 3) {
		fprintf(stderr, "usage: vmtool xattrs|lstat|manifest|drain PATH | now | "
			"randread FILE COUNT SEED\n");
		return 2;
	}
	const char *cmd = argv[1], *arg = argv[2];
	if (!strcmp(cmd, "xattrs")) {
		if (each_xattr(arg, print_xattr_line) < 0)
			warn_errno("xattrs", arg);
	} else if (!strcmp(cmd, "drain")) {
		int fd = open(arg, O_WRONLY | O_NOCTTY);
		if (fd < 0 || tcdrain(fd) < 0)
			warn_errno("drain", arg);
		if (fd >= 0)
			close(fd);
	} else if (!strcmp(cmd, "lstat")) {
		print_record(arg, arg, 0);
	} else if (!strcmp(cmd, "manifest")) {
		static char path[PATH_MAX];
		size_t n = strlen(arg);
		while (n > 1 && arg[n - 1] == '/')
			n--;
		if (n >= PATH_MAX)
			return 2;
		memcpy(path, arg, n);
		path[n] = '\0';
		walk(path, n);
	} else {
		fprintf(stderr, "vmtool: unknown command %s\n", cmd);
		return 2;
	}
	if (fflush(stdout) != 0)
		return 1;
	return failures ? 1 : 0;
}
