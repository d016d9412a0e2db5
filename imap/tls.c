/* SPDX-License-Identifier: MIT */
/*
 * The byte stream under an IMAP connection: TCP, optionally wrapped in TLS,
 * optionally compressed (COMPRESS=DEFLATE, RFC 4978, inside the TLS).
 * Everything that touches OpenSSL, zlib or a socket lives here.
 *
 * The socket is non-blocking; connect and the TLS handshake wait with
 * poll() under a deadline, so nothing here blocks forever.
 */
#include "imap-private.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <zlib.h>

/* Compressed bytes read or written at a time. */
#define ZBUF (64 * 1024)
/* Plain bytes compressed at a time: their output always fits in ZBUF. */
#define ZCHUNK (16 * 1024)

struct _ImapStream {
	int fd;
	SSL_CTX *ctx;
	SSL *ssl;
	short want; /* poll events the last would-block asked for */
	char *peer; /* "host:port" for messages */
	/* COMPRESS=DEFLATE, once started */
	gboolean deflate;
	z_stream zin, zout;
	guint8 *in; /* compressed bytes read, not yet inflated */
	gsize in_pos, in_len;
	gboolean out_full; /* the last inflate filled the caller's buffer */
	guint8 *out; /* compressed bytes not yet written */
	gsize out_pos, out_len;
};

static gint64 deadline_after(guint timeout_ms)
{
	return g_get_monotonic_time() + (gint64)timeout_ms * 1000;
}

/* Wait for @events on @fd until @deadline. FALSE with an error on timeout. */
static gboolean wait_fd(int fd, short events, gint64 deadline, const char *what,
			GError **error)
{
	for (;;) {
		gint64 left = deadline - g_get_monotonic_time();
		struct pollfd pfd = {.fd = fd, .events = events};
		int rc;

		if (left <= 0) {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_TIMEOUT,
				    "timed out %s", what);
			return FALSE;
		}
		rc = poll(&pfd, 1, (int)MIN(left / 1000 + 1, G_MAXINT));
		if (rc > 0)
			return TRUE;
		if (rc < 0 && errno != EINTR) {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_CONNECT,
				    "poll: %s", g_strerror(errno));
			return FALSE;
		}
	}
}

static int connect_one(const struct addrinfo *ai, gint64 deadline,
		       GError **error)
{
	int fd = socket(ai->ai_family,
			ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			ai->ai_protocol);
	int one = 1;
	int err = 0;
	socklen_t errlen = sizeof(err);

	if (fd < 0) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_CONNECT, "socket: %s",
			    g_strerror(errno));
		return -1;
	}
	if (connect(fd, ai->ai_addr, ai->ai_addrlen) < 0) {
		if (errno != EINPROGRESS) {
			err = errno;
			goto fail;
		}
		if (!wait_fd(fd, POLLOUT, deadline, "connecting", error)) {
			close(fd);
			return -1;
		}
		if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &errlen) < 0)
			err = errno;
		if (err)
			goto fail;
	}
	/* Pipelined commands are small; don't let Nagle hold them back. */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	/* A laptop that sleeps, or a NAT that forgets, leaves a dead peer:
	 * let the kernel notice, within 90 s of silence on a connection no
	 * command uses (the default would be after two hours). Commands have
	 * their own timeout; an IDLE has the keepalive of the engine. */
	setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &(int){60}, sizeof(int));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &(int){10}, sizeof(int));
	setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &(int){3}, sizeof(int));
	return fd;
fail:
	g_set_error(error, IMAP_ERROR, IMAP_ERROR_CONNECT, "%s",
		    g_strerror(err));
	close(fd);
	return -1;
}

ImapStream *imap_stream_connect(const char *host, guint16 port,
				guint timeout_ms, GError **error)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM,
				 .ai_flags = AI_ADDRCONFIG};
	struct addrinfo *res = NULL;
	char service[8];
	gint64 deadline = deadline_after(timeout_ms);
	g_autoptr(GError) last = NULL;
	int rc;
	int fd = -1;

	g_snprintf(service, sizeof(service), "%u", port);
	rc = getaddrinfo(host, service, &hints, &res);
	if (rc != 0) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_CONNECT,
			    "cannot resolve %s: %s", host, gai_strerror(rc));
		return NULL;
	}
	for (struct addrinfo *ai = res; ai && fd < 0; ai = ai->ai_next) {
		g_clear_error(&last);
		fd = connect_one(ai, deadline, &last);
	}
	freeaddrinfo(res);
	if (fd < 0) {
		g_set_error(error, IMAP_ERROR,
			    last ? last->code : IMAP_ERROR_CONNECT,
			    "cannot connect to %s port %u: %s", host, port,
			    last ? last->message : "no address");
		return NULL;
	}

	ImapStream *s = g_new0(ImapStream, 1);

	s->fd = fd;
	s->peer = g_strdup_printf("%s:%u", host, port);
	return s;
}

void imap_stream_free(ImapStream *s)
{
	if (!s)
		return;
	if (s->ssl) {
		/* No close_notify round trip: we are closing anyway. */
		SSL_set_quiet_shutdown(s->ssl, 1);
		SSL_free(s->ssl);
	}
	if (s->ctx)
		SSL_CTX_free(s->ctx);
	if (s->fd >= 0)
		close(s->fd);
	if (s->deflate) {
		inflateEnd(&s->zin);
		deflateEnd(&s->zout);
	}
	g_free(s->in);
	g_free(s->out);
	g_free(s->peer);
	g_free(s);
}

int imap_stream_fd(const ImapStream *s)
{
	return s->fd;
}

gboolean imap_stream_is_tls(const ImapStream *s)
{
	return s->ssl != NULL;
}

short imap_stream_poll_events(const ImapStream *s)
{
	return (s->want ? s->want : POLLIN) |
	       (s->out_pos < s->out_len ? POLLOUT : 0);
}

static char *ssl_error_string(void)
{
	unsigned long e = ERR_get_error();
	char buf[256];

	if (!e)
		return g_strdup("unknown TLS error");
	ERR_error_string_n(e, buf, sizeof(buf));
	ERR_clear_error();
	return g_strdup(buf);
}

static gboolean is_ip_literal(const char *host)
{
	struct in6_addr a6;
	struct in_addr a4;

	return inet_pton(AF_INET, host, &a4) == 1 ||
	       inet_pton(AF_INET6, host, &a6) == 1;
}

/* Refuse anything older than TLS 1.2; the certificate chain and the host
 * name (or IP) are verified by OpenSSL during the handshake, so no
 * application byte - credentials included - can be sent before. */
gboolean imap_stream_start_tls(ImapStream *s, const char *host,
			       const char *cafile, guint timeout_ms,
			       GError **error)
{
	gint64 deadline = deadline_after(timeout_ms);
	g_autofree char *why = NULL;

	s->ctx = SSL_CTX_new(TLS_client_method());
	if (!s->ctx)
		goto tls_error;
	SSL_CTX_set_min_proto_version(s->ctx, TLS1_2_VERSION);
	SSL_CTX_set_verify(s->ctx, SSL_VERIFY_PEER, NULL);
	SSL_CTX_set_mode(s->ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
					 SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
	/* Bodies arrive as a stream of 16 KiB records: read many at once
	 * (one read() per 64 KiB instead of two per record). What is read
	 * ahead counts as buffered (imap_stream_has_buffered()). */
	SSL_CTX_set_read_ahead(s->ctx, 1);
	SSL_CTX_set_default_read_buffer_len(s->ctx, 64 * 1024);
	if (cafile) {
		/* Like curl's --cacert: this file replaces the system store. */
		if (SSL_CTX_load_verify_locations(s->ctx, cafile, NULL) != 1) {
			why = ssl_error_string();
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_TLS,
				    "cannot load CA file %s: %s", cafile, why);
			return FALSE;
		}
	} else if (SSL_CTX_set_default_verify_paths(s->ctx) != 1) {
		goto tls_error;
	}

	s->ssl = SSL_new(s->ctx);
	if (!s->ssl || SSL_set_fd(s->ssl, s->fd) != 1)
		goto tls_error;
	if (is_ip_literal(host)) {
		X509_VERIFY_PARAM *param = SSL_get0_param(s->ssl);

		if (X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1)
			goto tls_error;
	} else {
		if (SSL_set_tlsext_host_name(s->ssl, host) != 1 ||
		    SSL_set1_host(s->ssl, host) != 1)
			goto tls_error;
		/* "*.example.org" matches one label, never partial ones. */
		SSL_set_hostflags(s->ssl, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
	}

	for (;;) {
		int rc = SSL_connect(s->ssl);
		int err;

		if (rc == 1)
			break;
		err = SSL_get_error(s->ssl, rc);
		if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
			if (!wait_fd(s->fd,
				     err == SSL_ERROR_WANT_READ ? POLLIN
								: POLLOUT,
				     deadline, "in the TLS handshake", error))
				return FALSE;
			continue;
		}
		long vr = SSL_get_verify_result(s->ssl);

		if (vr != X509_V_OK) {
			ERR_clear_error();
			g_set_error(
				error, IMAP_ERROR, IMAP_ERROR_TLS,
				"certificate of %s not trusted: %s%s", host,
				X509_verify_cert_error_string(vr),
				vr == X509_V_ERR_DEPTH_ZERO_SELF_SIGNED_CERT ||
						vr == X509_V_ERR_UNABLE_TO_GET_ISSUER_CERT_LOCALLY ||
						vr == X509_V_ERR_SELF_SIGNED_CERT_IN_CHAIN
					? " (use -o cafile=FILE to trust a "
					  "private CA)"
					: "");
			return FALSE;
		}
		if (err == SSL_ERROR_SYSCALL || err == SSL_ERROR_ZERO_RETURN) {
			/* Cut, not refused: the network, not the peer's
			 * identity (the caller may retry or go offline). */
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_DISCONNECTED,
				    "TLS handshake with %s failed: connection "
				    "closed",
				    s->peer);
			ERR_clear_error();
			return FALSE;
		}
		goto tls_error;
	}
	return TRUE;

tls_error:
	why = ssl_error_string();
	g_set_error(error, IMAP_ERROR, IMAP_ERROR_TLS, "TLS with %s failed: %s",
		    s->peer, why);
	return FALSE;
}

/* Map an OpenSSL result to ours, remembering what poll() must wait for. */
static ImapIoResult ssl_result(ImapStream *s, int rc, gsize *n_out,
			       GError **error)
{
	int err = SSL_get_error(s->ssl, rc);

	switch (err) {
	case SSL_ERROR_NONE:
		*n_out = (gsize)rc;
		s->want = 0;
		return IMAP_IO_OK;
	case SSL_ERROR_WANT_READ:
		s->want = POLLIN;
		return IMAP_IO_WOULD_BLOCK;
	case SSL_ERROR_WANT_WRITE:
		s->want = POLLOUT;
		return IMAP_IO_WOULD_BLOCK;
	case SSL_ERROR_ZERO_RETURN:
		return IMAP_IO_EOF;
	case SSL_ERROR_SYSCALL:
		if (ERR_peek_error() == 0) {
			ERR_clear_error();
			if (errno == 0 || errno == EAGAIN) {
				/* EOF without close_notify: a cut, but EOF. */
				return IMAP_IO_EOF;
			}
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_DISCONNECTED,
				    "%s: %s", s->peer, g_strerror(errno));
			return IMAP_IO_ERROR;
		}
		/* fall through */
	default: {
		g_autofree char *why = ssl_error_string();

		g_set_error(error, IMAP_ERROR, IMAP_ERROR_DISCONNECTED,
			    "TLS error from %s: %s", s->peer, why);
		return IMAP_IO_ERROR;
	}
	}
}

static ImapIoResult raw_read(ImapStream *s, void *buf, gsize len, gsize *n_out,
			     GError **error)
{
	*n_out = 0;
	if (s->ssl) {
		ImapIoResult r;

		errno = 0;
		r = ssl_result(s,
			       SSL_read(s->ssl, buf, (int)MIN(len, G_MAXINT)),
			       n_out, error);
		/* SSL_read() returns one record (Dovecot sends 4 KB ones):
		 * the records already received come too, so that the parser
		 * and the body files get bigger pieces. A partial record
		 * (or an alert) ends it; the next read tells. */
		while (r == IMAP_IO_OK && *n_out < len &&
		       SSL_has_pending(s->ssl)) {
			size_t more = 0;

			if (SSL_read_ex(s->ssl, (char *)buf + *n_out,
					len - *n_out, &more) <= 0)
				break;
			*n_out += more;
		}
		return r;
	}
	for (;;) {
		ssize_t n = recv(s->fd, buf, len, 0);

		if (n > 0) {
			*n_out = (gsize)n;
			s->want = 0;
			return IMAP_IO_OK;
		}
		if (n == 0)
			return IMAP_IO_EOF;
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			s->want = POLLIN;
			return IMAP_IO_WOULD_BLOCK;
		}
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_DISCONNECTED,
			    "%s: %s", s->peer, g_strerror(errno));
		return IMAP_IO_ERROR;
	}
}

static ImapIoResult raw_write(ImapStream *s, const void *buf, gsize len,
			      gsize *n_out, GError **error)
{
	*n_out = 0;
	if (s->ssl) {
		errno = 0;
		return ssl_result(
			s, SSL_write(s->ssl, buf, (int)MIN(len, G_MAXINT)),
			n_out, error);
	}
	for (;;) {
		ssize_t n = send(s->fd, buf, len, MSG_NOSIGNAL);

		if (n >= 0) {
			*n_out = (gsize)n;
			s->want = 0;
			return IMAP_IO_OK;
		}
		if (errno == EINTR)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			s->want = POLLOUT;
			return IMAP_IO_WOULD_BLOCK;
		}
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_DISCONNECTED,
			    "%s: %s", s->peer, g_strerror(errno));
		return IMAP_IO_ERROR;
	}
}

/* ---- COMPRESS=DEFLATE ---- */

gboolean imap_stream_start_deflate(ImapStream *s, GError **error)
{
	g_return_val_if_fail(!s->deflate, FALSE);
	/* Raw deflate (no zlib header), as RFC 4978 says. */
	if (inflateInit2(&s->zin, -15) != Z_OK) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_INVALID,
			    "cannot start decompressing");
		return FALSE;
	}
	if (deflateInit2(&s->zout, Z_DEFAULT_COMPRESSION, Z_DEFLATED, -15, 8,
			 Z_DEFAULT_STRATEGY) != Z_OK) {
		inflateEnd(&s->zin);
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_INVALID,
			    "cannot start compressing");
		return FALSE;
	}
	s->in = g_malloc(ZBUF);
	s->out = g_malloc(ZBUF);
	s->deflate = TRUE;
	return TRUE;
}

ImapIoResult imap_stream_read(ImapStream *s, void *buf, gsize len, gsize *n_out,
			      GError **error)
{
	if (!s->deflate)
		return raw_read(s, buf, len, n_out, error);
	*n_out = 0;
	for (;;) {
		ImapIoResult r;
		int rc;

		s->zin.next_in = s->in + s->in_pos;
		s->zin.avail_in = (uInt)(s->in_len - s->in_pos);
		s->zin.next_out = buf;
		s->zin.avail_out = (uInt)MIN(len, G_MAXUINT32);
		rc = inflate(&s->zin, Z_SYNC_FLUSH);
		s->in_pos = s->in_len - s->zin.avail_in;
		*n_out = MIN(len, G_MAXUINT32) - s->zin.avail_out;
		s->out_full = s->zin.avail_out == 0;
		if (rc == Z_STREAM_END || (rc != Z_OK && rc != Z_BUF_ERROR)) {
			g_set_error(error, IMAP_ERROR, IMAP_ERROR_DISCONNECTED,
				    "%s: bad compressed data (%s)", s->peer,
				    rc == Z_STREAM_END ? "the stream ended"
				    : s->zin.msg       ? s->zin.msg
						       : "inflate failed");
			return IMAP_IO_ERROR;
		}
		if (*n_out > 0)
			return IMAP_IO_OK;
		/* All input used, nothing out yet: more from the wire. */
		s->in_pos = s->in_len = 0;
		r = raw_read(s, s->in, ZBUF, &s->in_len, error);
		if (r != IMAP_IO_OK)
			return r;
	}
}

/* Write what was compressed and not yet written. */
ImapIoResult imap_stream_flush(ImapStream *s, GError **error)
{
	while (s->out_pos < s->out_len) {
		gsize n = 0;
		ImapIoResult r = raw_write(s, s->out + s->out_pos,
					   s->out_len - s->out_pos, &n, error);

		if (r != IMAP_IO_OK)
			return r;
		s->out_pos += n;
	}
	s->out_pos = s->out_len = 0;
	return IMAP_IO_OK;
}

gboolean imap_stream_wants_flush(const ImapStream *s)
{
	return s->out_pos < s->out_len;
}

/* Compressed, @n_out counts the plain bytes taken; what could not be
 * written yet waits for imap_stream_flush() (poll for POLLOUT). */
ImapIoResult imap_stream_write(ImapStream *s, const void *buf, gsize len,
			       gsize *n_out, GError **error)
{
	ImapIoResult r;
	gsize chunk = MIN(len, ZCHUNK);

	if (!s->deflate)
		return raw_write(s, buf, len, n_out, error);
	*n_out = 0;
	r = imap_stream_flush(s, error);
	if (r != IMAP_IO_OK)
		return r;
	s->zout.next_in = (Bytef *)buf;
	s->zout.avail_in = (uInt)chunk;
	s->zout.next_out = s->out;
	s->zout.avail_out = ZBUF;
	/* Sync flush: the server must be able to act on every command
	 * without waiting for more. */
	if (deflate(&s->zout, Z_SYNC_FLUSH) != Z_OK || s->zout.avail_in) {
		g_set_error(error, IMAP_ERROR, IMAP_ERROR_DISCONNECTED,
			    "%s: compressing failed", s->peer);
		return IMAP_IO_ERROR;
	}
	s->out_len = ZBUF - s->zout.avail_out;
	*n_out = chunk;
	r = imap_stream_flush(s, error);
	return r == IMAP_IO_ERROR ? r : IMAP_IO_OK;
}

gboolean imap_stream_has_buffered(const ImapStream *s)
{
	if (s->deflate && (s->in_pos < s->in_len || s->out_full))
		return TRUE;
	return s->ssl && SSL_has_pending(s->ssl);
}

/* For strict STARTTLS: has the server sent anything we did not ask for? */
gboolean imap_stream_plaintext_waiting(const ImapStream *s)
{
	char c;
	ssize_t n = recv(s->fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);

	return n > 0;
}
