// /tmp/zc/zc.c -- probe: loopback receive (copy | TCP_ZEROCOPY_RECEIVE | splice),
// sha256 verify, store (pwrite | O_DIRECT | splice), serve (sendfile).
// Subcommands:
//   zc snd  -p PORT -m send|sendfile|zc [-M mss] [-c chunk] -f FILE
//   zc mid  -p PORT -P PORT2 -r copy|zc|splice [-H 0|1] [-s none|pwrite|odirect]
//           [-S none|sendfile|vmsplice] [-c chunk] [-M mss] [-o OUT] [-e SHA256HEX] [-b rcvbuf] [-L lowat]
//   zc rdr  -P PORT2 [-v SHA256HEX]
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/errqueue.h>
#include <linux/tcp.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <poll.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/sendfile.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef MSG_ZEROCOPY
#define MSG_ZEROCOPY 0x4000000
#endif
#ifndef SO_ZEROCOPY
#define SO_ZEROCOPY 60
#endif
#ifndef SO_EE_ORIGIN_ZEROCOPY
#define SO_EE_ORIGIN_ZEROCOPY 5
#endif
#ifndef SO_EE_CODE_ZEROCOPY_COPIED
#define SO_EE_CODE_ZEROCOPY_COPIED 1
#endif

#define DIE(...) do { fprintf(stderr, __VA_ARGS__); fprintf(stderr, " (errno=%d %s)\n", errno, strerror(errno)); exit(1); } while (0)

static double cpu_now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}
static double wall_now(void) {
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static int port = 0, port2 = 0, mss = 0, rcvbuf = 0, lowat = 0;
static size_t chunk = 1 << 20;
static const char *mode = "send", *rxm = "copy", *storem = "none", *servem = "none";
static const char *file = NULL, *outf = "/tmp/zc/out.bin", *expect = NULL;
static int dohash = 0, copybuf = 0, sndbuf = 0;

static int connect_retry(int p, int set_mss, int zc) {
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(p)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	for (int i = 0; i < 2000; i++) {
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		if (set_mss && setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &set_mss, sizeof(int)))
			DIE("TCP_MAXSEG(%d)", set_mss);
		if (zc) {
			int one = 1;
			if (setsockopt(fd, SOL_SOCKET, SO_ZEROCOPY, &one, sizeof(one))) DIE("SO_ZEROCOPY");
		}
		if (connect(fd, (void *)&a, sizeof(a)) == 0) return fd;
		close(fd);
		usleep(5000);
	}
	DIE("connect %d", p);
}

static int listen_accept(int p, int set_mss, int rb) {
	int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (set_mss && setsockopt(fd, IPPROTO_TCP, TCP_MAXSEG, &set_mss, sizeof(int))) DIE("TCP_MAXSEG listen");
	if (rb && setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rb, sizeof(rb))) DIE("SO_RCVBUF");
	struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(p)};
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (bind(fd, (void *)&a, sizeof(a))) DIE("bind %d", p);
	if (listen(fd, 1)) DIE("listen");
	int c = accept(fd, NULL, NULL);
	if (c < 0) DIE("accept");
	close(fd);
	return c;
}

static void tohex(const unsigned char *d, char *out) {
	for (int i = 0; i < 32; i++) sprintf(out + 2 * i, "%02x", d[i]);
}

/* ---------------- sender ---------------- */
static long zc_completions, zc_copied;
static void drain_errq(int fd) {
	for (;;) {
		char cbuf[128];
		struct msghdr m = {.msg_control = cbuf, .msg_controllen = sizeof(cbuf)};
		if (recvmsg(fd, &m, MSG_ERRQUEUE | MSG_DONTWAIT) < 0) return;
		for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c)) {
			struct sock_extended_err *e = (void *)CMSG_DATA(c);
			if (e->ee_origin != SO_EE_ORIGIN_ZEROCOPY) continue;
			zc_completions += (long)e->ee_data - e->ee_info + 1;
			if (e->ee_code & SO_EE_CODE_ZEROCOPY_COPIED) zc_copied += (long)e->ee_data - e->ee_info + 1;
		}
	}
}

static int do_snd(void) {
	int ffd = open(file, O_RDONLY);
	if (ffd < 0) DIE("open %s", file);
	struct stat st;
	fstat(ffd, &st);
	size_t len = st.st_size;
	int zc = !strcmp(mode, "zc");
	int fd = connect_retry(port, mss, zc);
	double w0 = wall_now();
	if (!strcmp(mode, "sendfile")) {
		off_t off = 0;
		while ((size_t)off < len) {
			ssize_t n = sendfile(fd, ffd, &off, len - off);
			if (n <= 0) DIE("sendfile");
		}
	} else {
		char *p = mmap(NULL, len, PROT_READ, MAP_SHARED | MAP_POPULATE, ffd, 0);
		if (p == MAP_FAILED) DIE("mmap src");
		size_t off = 0;
		long calls = 0;
		while (off < len) {
			size_t n = len - off < chunk ? len - off : chunk;
			ssize_t r = send(fd, p + off, n, zc ? MSG_ZEROCOPY : 0);
			if (r < 0) {
				if (zc && errno == ENOBUFS) {
					struct pollfd pf = {.fd = fd, .events = 0};
					poll(&pf, 1, 10);
					drain_errq(fd);
					continue;
				}
				DIE("send");
			}
			off += r;
			if (zc && (++calls & 15) == 0) drain_errq(fd);
		}
	}
	shutdown(fd, SHUT_WR);
	char b[16];
	while (read(fd, b, sizeof(b)) > 0) ;
	if (zc) drain_errq(fd);
	struct rusage ru;
	getrusage(RUSAGE_SELF, &ru);
	fprintf(stderr, "snd mode=%s mss=%d wall=%.3f cpu=%.3f zc_completions=%ld zc_copied=%ld\n", mode, mss,
		wall_now() - w0, ru.ru_utime.tv_sec + ru.ru_stime.tv_sec + (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) * 1e-6,
		zc_completions, zc_copied);
	return 0;
}

/* ---------------- reader ---------------- */
static int do_rdr(void) {
	int fd = listen_accept(port2, 0, rcvbuf);
	if (lowat && setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat))) DIE("rdr SO_RCVLOWAT");
	size_t bs = chunk, tot = 0;
	char *b = malloc(bs);
	EVP_MD_CTX *ctx = EVP_MD_CTX_new();
	EVP_DigestInit_ex(ctx, EVP_sha256(), NULL);
	for (;;) {
		ssize_t n = recv(fd, b, bs, 0);
		if (n < 0) DIE("rdr recv");
		if (n == 0) break;
		if (expect) EVP_DigestUpdate(ctx, b, n);
		tot += n;
	}
	close(fd);
	if (expect) {
		unsigned char d[32];
		char h[65];
		EVP_DigestFinal_ex(ctx, d, NULL);
		tohex(d, h);
		fprintf(stderr, "rdr bytes=%zu sha_ok=%d\n", tot, !strcmp(h, expect));
	} else
		fprintf(stderr, "rdr bytes=%zu\n", tot);
	return 0;
}

/* ---------------- middle ---------------- */
static EVP_MD_CTX *hctx;
static int ofd = -1, ofd_buf = -1;
static off_t foff;              /* stream offset == file offset */
static double t_rx, t_hash, t_store, t_serve, t_final;
static size_t b_mapped, b_copybuf, b_skip, b_recv, n_getsockopt, n_empty;
static size_t b_direct, b_staged;
static char *stg; static size_t stg_len; static off_t stg_base; static const size_t STG = 8 << 20;

static void stg_flush(int all) {
	size_t w = all ? stg_len : (stg_len & ~(size_t)4095);
	size_t wd = w & ~(size_t)4095;
	if (wd) {
		if (pwrite(ofd, stg, wd, stg_base) != (ssize_t)wd) DIE("pwrite O_DIRECT staged");
	}
	if (w > wd) {
		if (pwrite(ofd_buf, stg + wd, w - wd, stg_base + wd) != (ssize_t)(w - wd)) DIE("pwrite tail");
	}
	memmove(stg, stg + w, stg_len - w);
	stg_len -= w;
	stg_base += w;
}

static void store(const char *p, size_t n, int mapped) {
	(void)mapped;
	if (!strcmp(storem, "pwrite")) {
		size_t done = 0;
		while (done < n) {
			ssize_t r = pwrite(ofd, p + done, n - done, foff + done);
			if (r <= 0) DIE("pwrite");
			done += r;
		}
	} else if (!strcmp(storem, "odirect")) {
		if (stg_len == 0) stg_base = foff;
		if (((uintptr_t)p & 4095) == 0 && (foff & 4095) == 0 && (n & 4095) == 0 && (stg_len & 4095) == 0) {
			if (stg_len) stg_flush(0);
			stg_base = foff + n;
			ssize_t r = pwrite(ofd, p, n, foff);
			if (r != (ssize_t)n) DIE("pwrite O_DIRECT direct n=%zu r=%zd", n, r);
			b_direct += n;
		} else {
			if (stg_len + n > STG) stg_flush(0);
			while (stg_len + n > STG) { /* huge piece: copy in parts */
				size_t k = STG - stg_len;
				memcpy(stg + stg_len, p, k); stg_len += k; p += k; n -= k; b_staged += k; foff += k;
				stg_flush(0);
			}
			memcpy(stg + stg_len, p, n);
			stg_len += n;
			b_staged += n;
			/* note: foff advanced by caller */
		}
	}
}

static void consume(const char *p, size_t n, int mapped) {
	double t0 = cpu_now();
	if (dohash) EVP_DigestUpdate(hctx, p, n);
	double t1 = cpu_now();
	if (strcmp(storem, "none")) {
		off_t save = foff;
		store(p, n, mapped);
		foff = save;
	}
	double t2 = cpu_now();
	t_hash += t1 - t0;
	t_store += t2 - t1;
	foff += n;
}

static void rx_copy(int fd) {
	char *b = aligned_alloc(4096, chunk);
	memset(b, 0, chunk);
	for (;;) {
		double t0 = cpu_now();
		ssize_t n = recv(fd, b, chunk, MSG_WAITALL);
		t_rx += cpu_now() - t0;
		if (n < 0) DIE("recv");
		if (n == 0) break;
		b_recv += n;
		consume(b, n, 0);
	}
}

static void rx_zc(int fd) {
	size_t maplen = chunk;
	void *addr = mmap(NULL, maplen, PROT_READ, MAP_SHARED, fd, 0);
	if (addr == MAP_FAILED) DIE("mmap(socket)");
	char *cb = aligned_alloc(4096, chunk);
	memset(cb, 0, chunk);
	if (lowat && setsockopt(fd, SOL_SOCKET, SO_RCVLOWAT, &lowat, sizeof(lowat))) DIE("SO_RCVLOWAT");
	int first_err_reported = 0;
	for (;;) {
		struct tcp_zerocopy_receive zc;
		memset(&zc, 0, sizeof(zc));
		zc.address = (uint64_t)(uintptr_t)addr;
		zc.length = maplen;
		zc.copybuf_address = (uint64_t)(uintptr_t)cb;
		zc.copybuf_len = copybuf;
		socklen_t zl = sizeof(zc);
		double t0 = cpu_now();
		int res = getsockopt(fd, IPPROTO_TCP, TCP_ZEROCOPY_RECEIVE, &zc, &zl);
		t_rx += cpu_now() - t0;
		n_getsockopt++;
		if (res == -1 && errno == EIO) break; /* kernel: !inq && SOCK_DONE -> -EIO == EOF */
		if (res == -1) {
			if (!first_err_reported++) fprintf(stderr, "getsockopt(TCP_ZEROCOPY_RECEIVE) failed errno=%d %s\n", errno, strerror(errno));
			exit(2);
		}
		if (zc.err) { errno = zc.err; DIE("zc.err"); }
		int got = 0;
		if (zc.copybuf_len > 0) {
			b_copybuf += zc.copybuf_len;
			consume(cb, zc.copybuf_len, 0);
			got = 1;
		}
		if (zc.length) {
			b_mapped += zc.length;
			consume(addr, zc.length, 1);
			got = 1;
		}
		if (zc.recv_skip_hint) {
			size_t want = zc.recv_skip_hint < chunk ? zc.recv_skip_hint : chunk;
			double t1 = cpu_now();
			ssize_t n = recv(fd, cb, want, MSG_DONTWAIT);
			t_rx += cpu_now() - t1;
			if (n < 0 && errno != EAGAIN) DIE("recv skip");
			if (n > 0) { b_skip += n; consume(cb, n, 0); got = 1; }
		}
		if (!got) {
			n_empty++;
			double t1 = cpu_now();
			struct pollfd pf = {.fd = fd, .events = POLLIN};
			poll(&pf, 1, -1);
			/* EOF check */
			char c;
			ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
			t_rx += cpu_now() - t1;
			if (n == 0) break;
		}
	}
	double t0 = cpu_now();
	munmap(addr, maplen);
	t_rx += cpu_now() - t0;
}

static void rx_splice(int fd) {
	int p[2];
	if (pipe2(p, 0)) DIE("pipe");
	int psz = 1 << 20;
	if (fcntl(p[1], F_SETPIPE_SZ, psz) < 0) DIE("F_SETPIPE_SZ");
	size_t want = chunk < (size_t)psz ? chunk : (size_t)psz;
	for (;;) {
		double t0 = cpu_now();
		ssize_t n = splice(fd, NULL, p[1], NULL, want, SPLICE_F_MOVE | SPLICE_F_MORE);
		double t1 = cpu_now();
		t_rx += t1 - t0;
		if (n < 0) DIE("splice sock->pipe");
		if (n == 0) break;
		b_recv += n;
		ssize_t left = n;
		while (left) {
			ssize_t m = splice(p[0], NULL, ofd, &foff, left, SPLICE_F_MOVE);
			if (m <= 0) DIE("splice pipe->file (store=%s)", storem);
			left -= m;
		}
		t_store += cpu_now() - t1;
	}
	close(p[0]);
	close(p[1]);
	if (dohash) {
		double t0 = cpu_now();
		int rfd = open(outf, O_RDONLY);
		char *m = mmap(NULL, foff, PROT_READ, MAP_SHARED | MAP_POPULATE, rfd, 0);
		if (m == MAP_FAILED) DIE("mmap out");
		EVP_DigestUpdate(hctx, m, foff);
		munmap(m, foff);
		close(rfd);
		t_hash += cpu_now() - t0;
	}
}

static void serve(void) {
	if (!strcmp(servem, "none")) return;
	double t0 = cpu_now();
	int s = connect_retry(port2, 0, 0);
	if (sndbuf && setsockopt(s, SOL_SOCKET, SO_SNDBUF, &sndbuf, sizeof(sndbuf))) DIE("SO_SNDBUF");
	int rfd = open(outf, O_RDONLY);
	off_t off = 0, len = foff;
	while (off < len) {
		ssize_t n = sendfile(s, rfd, &off, len - off);
		if (n <= 0) DIE("sendfile serve");
	}
	shutdown(s, SHUT_WR);
	char b[16];
	while (read(s, b, sizeof(b)) > 0) ;
	close(s);
	close(rfd);
	t_serve = cpu_now() - t0;
}

static int do_mid(void) {
	int flags = O_RDWR | O_CREAT;
	if (!strcmp(storem, "odirect")) flags |= O_DIRECT;
	ofd = open(outf, flags, 0644);
	if (ofd < 0) DIE("open out");
	ofd_buf = open(outf, O_RDWR);
	stg = aligned_alloc(4096, STG);
	memset(stg, 0, STG);
	hctx = EVP_MD_CTX_new();
	EVP_DigestInit_ex(hctx, EVP_sha256(), NULL);
	struct rusage r0, r1;
	int fd = -1;
	if (strcmp(rxm, "none")) fd = listen_accept(port, mss, rcvbuf);
	getrusage(RUSAGE_SELF, &r0);
	double c0 = cpu_now(), w0 = wall_now();
	if (!strcmp(rxm, "copy")) rx_copy(fd);
	else if (!strcmp(rxm, "zc")) rx_zc(fd);
	else if (!strcmp(rxm, "splice")) rx_splice(fd);
	else if (!strcmp(rxm, "none")) { struct stat st; fstat(ofd, &st); foff = st.st_size; } /* serve-only */
	else DIE("bad rx");
	if (fd >= 0) close(fd);
	double tf = cpu_now();
	if (stg_len) stg_flush(1);
	int ok = -1;
	char h[65] = "";
	if (dohash) {
		unsigned char d[32];
		EVP_DigestFinal_ex(hctx, d, NULL);
		tohex(d, h);
		ok = expect ? !strcmp(h, expect) : -1;
	}
	if (strcmp(storem, "none") && ftruncate(ofd_buf, foff)) DIE("ftruncate");
	t_final = cpu_now() - tf;
	double w1 = wall_now();
	serve();
	double c1 = cpu_now(), w2 = wall_now();
	getrusage(RUSAGE_SELF, &r1);
	double ut = (r1.ru_utime.tv_sec - r0.ru_utime.tv_sec) + (r1.ru_utime.tv_usec - r0.ru_utime.tv_usec) * 1e-6;
	double st = (r1.ru_stime.tv_sec - r0.ru_stime.tv_sec) + (r1.ru_stime.tv_usec - r0.ru_stime.tv_usec) * 1e-6;
	double gib = foff / 1073741824.0;
	printf("{\"rx\":\"%s\",\"hash\":%d,\"store\":\"%s\",\"serve\":\"%s\",\"mss\":%d,\"chunk\":%zu,\"bytes\":%lld,"
	       "\"cpu_total\":%.4f,\"cpu_rx\":%.4f,\"cpu_hash\":%.4f,\"cpu_store\":%.4f,\"cpu_final\":%.4f,\"cpu_serve\":%.4f,"
	       "\"ru_user\":%.3f,\"ru_sys\":%.3f,\"wall_recv\":%.3f,\"wall_serve\":%.3f,\"minflt\":%ld,\"nvcsw\":%ld,\"nivcsw\":%ld,"
	       "\"b_mapped\":%zu,\"b_copybuf\":%zu,\"b_skip\":%zu,\"b_recv\":%zu,\"n_getsockopt\":%zu,\"n_empty\":%zu,"
	       "\"b_direct\":%zu,\"b_staged\":%zu,\"sha_ok\":%d,\"gib\":%.4f}\n",
	       rxm, dohash, storem, servem, mss, chunk, (long long)foff, (c1 - c0) / gib, t_rx / gib, t_hash / gib,
	       t_store / gib, t_final / gib, t_serve / gib, ut, st, w1 - w0, w2 - w1, r1.ru_minflt - r0.ru_minflt,
	       r1.ru_nvcsw - r0.ru_nvcsw, r1.ru_nivcsw - r0.ru_nivcsw, b_mapped, b_copybuf, b_skip, b_recv, n_getsockopt,
	       n_empty, b_direct, b_staged, ok, gib);
	fflush(stdout);
	return ok == 0 ? 3 : 0;
}

int main(int argc, char **argv) {
	if (argc < 2) { fprintf(stderr, "usage: zc snd|mid|rdr ...\n"); return 1; }
	const char *cmd = argv[1];
	int o;
	optind = 2;
	while ((o = getopt(argc, argv, "p:P:m:M:c:f:r:H:s:S:o:e:v:b:L:C:W:")) != -1) {
		switch (o) {
		case 'p': port = atoi(optarg); break;
		case 'P': port2 = atoi(optarg); break;
		case 'm': mode = optarg; break;
		case 'M': mss = atoi(optarg); break;
		case 'c': chunk = strtoul(optarg, NULL, 0); break;
		case 'f': file = optarg; break;
		case 'r': rxm = optarg; break;
		case 'H': dohash = atoi(optarg); break;
		case 's': storem = optarg; break;
		case 'S': servem = optarg; break;
		case 'o': outf = optarg; break;
		case 'e': case 'v': expect = optarg; break;
		case 'b': rcvbuf = atoi(optarg); break;
		case 'L': lowat = atoi(optarg); break;
		case 'C': copybuf = atoi(optarg); break;
		case 'W': sndbuf = atoi(optarg); break;
		default: return 1;
		}
	}
	if (!strcmp(cmd, "snd")) return do_snd();
	if (!strcmp(cmd, "mid")) return do_mid();
	if (!strcmp(cmd, "rdr")) return do_rdr();
	return 1;
}
