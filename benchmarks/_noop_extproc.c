/* A do-nothing ext_proc server in C: the floor of ANY processor inside Envoy.

       cc -O2 -o _noop_extproc_c benchmarks/_noop_extproc.c && ./_noop_extproc_c PORT

   benchmarks/_noop_extproc.py --transport native is the floor of a Python processor
   (dualpool's HTTP/2 server on uvloop). This is the same exchange with no Python at
   all: what is left over Envoy alone is Envoy's own ext_proc work (three filters, gRPC
   framing, the route cache cleared and picked again) plus the hand-offs between two
   processes. benchmarks/extproc_overhead.py builds and runs it; not a product.

   The exchange, message for message as _noop_extproc.py's NativeNoop (same bytes out):
     a stream's first message says whether it is the observer's (observability_mode):
       observer   never answered; it is complete at the response's end of stream
       otherwise  request headers without end of stream: held (no answer yet);
                  request body chunks while held: counted; at the body's end, one DATA
                  frame with the headers' answer (x-dualpool-pool: short, clear the
                  route cache) and one CONTINUE per chunk, then our trailers
                  anything else: a CONTINUE of the same kind (response_body's for kinds
                  without one), and request headers with end of stream complete it
   A complete stream ends with trailers (grpc-status 0) in the same write as its last
   answer; one never answered ends trailers-only, held for the next write (or 10 ms),
   as dualpool's server does, so the end does not wake Envoy on its own.

   HTTP/2, server side, cleartext with prior knowledge (what Envoy's gRPC cluster
   speaks): preface, SETTINGS (+ ACK), PING ACK, WINDOW_UPDATE both ways, HEADERS and
   CONTINUATION (header blocks are skipped undecoded: every stream on this port is the
   one Process call, and HPACK state only matters to a decoder), DATA carrying gRPC
   length-prefixed protobuf messages (split over frames or several per frame),
   RST_STREAM, GOAWAY. One thread, one poll loop, any number of connections and streams:
   Envoy drives everything, so this is the least a processor can cost it.

   C11 + POSIX, libc only (no nghttp2, gRPC or protobuf library). */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

enum { DATA, HEADERS, PRIORITY, RST_STREAM, SETTINGS, PUSH_PROMISE, PING, GOAWAY,
       WINDOW_UPDATE, CONTINUATION };                                  /* RFC 9113 6 */
enum { F_END_STREAM = 0x1, F_ACK = 0x1, F_END_HEADERS = 0x4, F_PADDED = 0x8 };
enum { E_PROTOCOL = 0x1, E_INTERNAL = 0x2, E_FRAME_SIZE = 0x6 };
#define MAX_WINDOW 0x7fffffffu
#define RECV_MAX_FRAME (1u << 20) /* we announce it: a big body takes few frames */
#define GRANT_EVERY (1u << 24)    /* received bytes granted back in batches */
#define LAZY_END_S 0.010          /* a held trailers-only end waits at most this */

static const char PREFACE[] = "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/* HPACK blocks, the same bytes dualpool's server sends, none touching the dynamic
   table: `:status 200` (static index 8), `content-type: application/grpc` (literal
   without indexing, name = static index 31, no Huffman); trailers `grpc-status: 0`
   (literal without indexing, new name). */
static const char RESPONSE_HEADERS[] = "\x88\x0f\x10\x10" "application/grpc";
static const char TRAILERS_OK[] = "\x00\x0bgrpc-status\x01" "0";
#define LIT(s) (const unsigned char *)(s), sizeof(s) - 1

/* ProcessingResponse messages (envoy/service/ext_proc/v3/external_processor.proto),
   serialized. The headers' answer, as _noop_extproc.py's _ROUTE:
   request_headers(1){response(1){header_mutation(3){set_headers(1){
     header(1){key(1) "x-dualpool-pool", raw_value(3) "short"},
     append_action(3) OVERWRITE_IF_EXISTS_OR_ADD(2)}}, clear_route_cache(5) true}} */
static const char ROUTE[] = "\x0a\x24\x0a\x22\x12\x1e\x0a\x1c\x0a\x18\x0a\x0f"
                            "x-dualpool-pool\x1a\x05short\x18\x02\x28\x01";
/* CONTINUE = an empty sub-message in the arm answering the request's arm. Request
   arms (ProcessingRequest): request_headers 2, response_headers 3, request_body 4,
   response_body 5; answers (ProcessingResponse): 1, 2, 3, 4. */
static const unsigned char CONT_REQ_HEADERS[] = {0x0a, 0}, CONT_RESP_HEADERS[] = {0x12, 0},
                           CONT_REQ_BODY[] = {0x1a, 0}, CONT_RESP_BODY[] = {0x22, 0};

typedef struct { unsigned char *p; size_t len, cap; } Buf;

static void reserve(Buf *b, size_t more) {
    if (b->len + more <= b->cap) return;
    size_t cap = b->cap ? b->cap : 256;
    while (cap < b->len + more) cap *= 2;
    if (!(b->p = realloc(b->p, cap))) { perror("realloc"); exit(1); }
    b->cap = cap;
}
static void put(Buf *b, const void *d, size_t n) {
    reserve(b, n);
    memcpy(b->p + b->len, d, n);
    b->len += n;
}
static void drop(Buf *b, size_t n) { /* the first n bytes are consumed */
    memmove(b->p, b->p + n, b->len - n);
    b->len -= n;
}
static uint32_t be32(const unsigned char *p) {
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}
static void frame(Buf *out, int type, int flags, uint32_t sid, const void *payload, size_t n) {
    unsigned char h[9] = {n >> 16, n >> 8, n, type, flags, sid >> 24, sid >> 16, sid >> 8, sid};
    put(out, h, 9);
    if (n) put(out, payload, n);
}
static void frame_u32(Buf *out, int type, uint32_t sid, uint32_t v) {
    unsigned char b[4] = {v >> 24, v >> 16, v >> 8, v};
    frame(out, type, 0, sid, b, 4);
}
static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

typedef struct {
    uint32_t sid;
    Buf in;          /* a gRPC message not whole yet */
    Buf pending;     /* our DATA payload waiting for Envoy's send windows */
    int64_t window;  /* what we may still send on the stream */
    uint64_t consumed;
    unsigned chunks; /* request body chunks held for the headers' answer */
    bool started, observe, held, complete, ended, headers_sent;
} Stream;

typedef struct {
    int fd;
    Buf in, out, lazy; /* lazy: held trailers-only ends of unanswered streams */
    double lazy_at;    /* when they go out alone (0: none held) */
    Stream **st;       /* open streams; few at a time (2-3 per request), so a list */
    size_t nst, cap;
    uint32_t last_sid, in_headers; /* in_headers: a header block continues on it */
    int64_t conn_window, peer_window;
    uint32_t peer_max_frame, consumed;
    bool preface_ok, dead;
} Conn;

static Stream *find(Conn *c, uint32_t sid) {
    for (size_t i = 0; i < c->nst; i++)
        if (c->st[i]->sid == sid) return c->st[i];
    return NULL;
}
static void forget(Conn *c, Stream *s) { /* out of the list and freed */
    for (size_t i = 0; i < c->nst; i++)
        if (c->st[i] == s) { c->st[i] = c->st[--c->nst]; break; }
    free(s->in.p);
    free(s->pending.p);
    free(s);
}

static void goaway(Conn *c, uint32_t code) {
    unsigned char b[8] = {c->last_sid >> 24, c->last_sid >> 16, c->last_sid >> 8, c->last_sid,
                          code >> 24, code >> 16, code >> 8, code};
    frame(&c->out, GOAWAY, 0, 0, b, 8);
    fprintf(stderr, "_noop_extproc_c: connection ended, HTTP/2 error %u\n", code);
    c->dead = true; /* closed once the GOAWAY is written (best effort) */
}

/* Our DATA out as the windows allow; a stream ended (by Envoy or because nothing is
   left to answer) and fully sent gets its trailers and is forgotten. */
static void flush(Conn *c, Stream *s) {
    while (s->pending.len) {
        int64_t room = c->conn_window < s->window ? c->conn_window : s->window;
        if (room > c->peer_max_frame) room = c->peer_max_frame;
        if (room <= 0) return;
        size_t n = s->pending.len < (size_t)room ? s->pending.len : (size_t)room;
        frame(&c->out, DATA, 0, s->sid, s->pending.p, n);
        drop(&s->pending, n);
        c->conn_window -= n;
        s->window -= n;
    }
    if (!s->ended) return;
    if (s->headers_sent) {
        frame(&c->out, HEADERS, F_END_HEADERS | F_END_STREAM, s->sid, LIT(TRAILERS_OK));
    } else {
        /* Nothing answered (the observer's): written now it would wake Envoy just as
           Envoy forwards the answer; with the next write it costs no wake-up. */
        unsigned char only[sizeof RESPONSE_HEADERS + sizeof TRAILERS_OK];
        size_t n = sizeof RESPONSE_HEADERS - 1;
        memcpy(only, RESPONSE_HEADERS, n);
        memcpy(only + n, TRAILERS_OK, sizeof TRAILERS_OK - 1);
        frame(&c->lazy, HEADERS, F_END_HEADERS | F_END_STREAM, s->sid, only,
              n + sizeof TRAILERS_OK - 1);
        if (!c->lazy_at) c->lazy_at = now() + LAZY_END_S;
    }
    forget(c, s);
}

static void end_stream(Conn *c, Stream *s) { s->ended = true; flush(c, s); }

/* gRPC messages (uncompressed flag + 4-byte length + message) onto the stream, after
   the response headers on its first answer. */
static void send_msgs(Conn *c, Stream *s, const unsigned char *first, size_t n1,
                      const unsigned char *each, size_t n2, unsigned times) {
    if (!s->headers_sent) {
        s->headers_sent = true;
        frame(&c->out, HEADERS, F_END_HEADERS, s->sid, LIT(RESPONSE_HEADERS));
    }
    unsigned char pre[5] = {0, 0, 0, 0, 0}; /* every answer here is under 256 bytes */
    pre[4] = (unsigned char)n1;
    put(&s->pending, pre, 5);
    put(&s->pending, first, n1);
    pre[4] = (unsigned char)n2;
    for (unsigned i = 0; i < times; i++) {
        put(&s->pending, pre, 5);
        put(&s->pending, each, n2);
    }
    flush(c, s); /* one DATA frame for every answer to the message */
}

/* Protobuf, just enough: a varint at *p (false if truncated). */
static bool varint(const unsigned char **p, const unsigned char *end, uint64_t *v) {
    *v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        unsigned char b = *(*p)++;
        *v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) return true;
    }
    return false;
}
/* Walk a message's top-level fields: calls back for varints and length-delimited
   ones, skips 64- and 32-bit ones; false if malformed (groups included). */
typedef void (*on_field)(void *ctx, uint32_t field, uint64_t v, const unsigned char *p);
static bool walk(const unsigned char *p, const unsigned char *end, on_field cb, void *ctx) {
    while (p < end) {
        uint64_t tag, v;
        if (!varint(&p, end, &tag)) return false;
        switch (tag & 7) {
        case 0: if (!varint(&p, end, &v)) return false; cb(ctx, tag >> 3, v, NULL); break;
        case 1: if (end - p < 8) return false; p += 8; break;
        case 2:
            if (!varint(&p, end, &v) || v > (uint64_t)(end - p)) return false;
            cb(ctx, tag >> 3, v, p);
            p += v;
            break;
        case 5: if (end - p < 4) return false; p += 4; break;
        default: return false;
        }
    }
    return true;
}
typedef struct { uint32_t kind, eos_field; bool eos, observe, bad; } Req;
static void sub_field(void *ctx, uint32_t field, uint64_t v, const unsigned char *p) {
    Req *r = ctx;
    if (!p && field == r->eos_field) r->eos = v != 0;
}
static void req_field(void *ctx, uint32_t field, uint64_t v, const unsigned char *p) {
    Req *r = ctx;
    if (!p) {
        if (field == 10) r->observe = v != 0; /* observability_mode */
    } else if (field >= 2 && field <= 7) {    /* the oneof `request`: last one wins */
        r->kind = field;
        r->eos = false;
        /* end_of_stream: HttpHeaders field 3 (arms 2, 3), HttpBody field 2 (4, 5);
           trailers (6, 7) have none */
        r->eos_field = field <= 3 ? 3 : field <= 5 ? 2 : 0;
        if (r->eos_field && !walk(p, p + v, sub_field, r)) r->bad = true;
    }
}

/* One ProcessingRequest in: NativeNoop.answer's logic, with the same answers. */
static bool answer(Conn *c, Stream *s, const unsigned char *m, size_t n) {
    Req r = {0};
    if (!walk(m, m + n, req_field, &r) || r.bad) return false;
    if (!s->started) { s->started = true; s->observe = r.observe; }
    if (s->observe) {
        if (r.kind == 5 || r.kind == 3) s->complete = r.eos;
        return true;
    }
    if (r.kind == 2 && !r.eos) { s->held = true; return true; }
    if (r.kind == 4 && s->held) {
        s->chunks++;
        if (!r.eos) return true;
        s->held = false;
        s->complete = true;
        send_msgs(c, s, LIT(ROUTE), CONT_REQ_BODY, sizeof CONT_REQ_BODY, s->chunks);
        return true;
    }
    if (r.kind == 2) s->complete = true;
    const unsigned char *a = r.kind == 2 ? CONT_REQ_HEADERS : r.kind == 3 ? CONT_RESP_HEADERS
                           : r.kind == 4 ? CONT_REQ_BODY : CONT_RESP_BODY;
    send_msgs(c, s, a, 2, NULL, 0, 0);
    return true;
}

static void on_data(Conn *c, int flags, uint32_t sid, const unsigned char *p, size_t n) {
    /* Flow control counts the whole payload, padding included. The connection's window
       is granted back in batches; a stream's starts at 2^31-1, granted back likewise
       should one ever read that much (Envoy buffers at most 8 MiB per request). */
    if ((c->consumed += n) >= GRANT_EVERY) {
        frame_u32(&c->out, WINDOW_UPDATE, 0, c->consumed);
        c->consumed = 0;
    }
    Stream *s = find(c, sid);
    if (!s || s->ended) return; /* a stream reset or finished: late data dropped */
    if ((s->consumed += n) >= GRANT_EVERY) {
        frame_u32(&c->out, WINDOW_UPDATE, sid, s->consumed);
        s->consumed = 0;
    }
    if (flags & F_PADDED) {
        if (n < 1 || p[0] >= n) { goaway(c, E_PROTOCOL); return; }
        n -= 1 + p[0];
        p++;
    }
    put(&s->in, p, n);
    size_t pos = 0;
    while (s->in.len - pos >= 5) {
        const unsigned char *b = s->in.p + pos;
        if (b[0]) { goaway(c, E_PROTOCOL); return; } /* compressed: never configured */
        uint32_t len = be32(b + 1);
        if (s->in.len - pos - 5 < len) break;
        pos += 5 + len;
        if (!answer(c, s, b + 5, len)) { /* not a ProcessingRequest: reset the stream */
            frame_u32(&c->out, RST_STREAM, sid, E_INTERNAL);
            forget(c, s);
            return;
        }
        if (s->complete) { /* nothing more to answer: what else comes is dropped */
            s->in.len = 0;
            end_stream(c, s);
            return;
        }
    }
    drop(&s->in, pos);
    if (flags & F_END_STREAM) end_stream(c, s);
}

static void on_headers(Conn *c, int flags, uint32_t sid) {
    if (!(flags & F_END_HEADERS)) c->in_headers = sid; /* CONTINUATION frames follow */
    Stream *s = find(c, sid);
    if (s) { /* trailers (ext_proc sends none) */
        if (flags & F_END_STREAM) end_stream(c, s);
        return;
    }
    if (sid % 2 == 0) { goaway(c, E_PROTOCOL); return; }
    if (sid <= c->last_sid) return; /* a stream already closed here */
    c->last_sid = sid;
    s = calloc(1, sizeof *s);
    if (!s) { perror("calloc"); exit(1); }
    s->sid = sid;
    s->window = c->peer_window;
    if (c->nst == c->cap) {
        c->cap = c->cap ? 2 * c->cap : 16;
        if (!(c->st = realloc(c->st, c->cap * sizeof *c->st))) { perror("realloc"); exit(1); }
    }
    c->st[c->nst++] = s;
    if (flags & F_END_STREAM) end_stream(c, s);
}

static void on_frame(Conn *c, int type, int flags, uint32_t sid, const unsigned char *p,
                     size_t n) {
    if (c->in_headers && type != CONTINUATION) { goaway(c, E_PROTOCOL); return; }
    switch (type) {
    case DATA: on_data(c, flags, sid, p, n); break;
    case HEADERS: on_headers(c, flags, sid); break;
    case CONTINUATION:
        if (c->in_headers != sid) { goaway(c, E_PROTOCOL); return; }
        if (flags & F_END_HEADERS) c->in_headers = 0;
        break;
    case RST_STREAM: {
        Stream *s = find(c, sid);
        if (s) forget(c, s);
        break;
    }
    case SETTINGS:
        if (flags & F_ACK) break;
        if (n % 6) { goaway(c, E_FRAME_SIZE); return; }
        for (size_t i = 0; i < n; i += 6) {
            uint32_t key = (uint32_t)p[i] << 8 | p[i + 1], v = be32(p + i + 2);
            if (key == 0x4) { /* INITIAL_WINDOW_SIZE: open streams move by the change */
                for (size_t j = 0; j < c->nst; j++) c->st[j]->window += (int64_t)v - c->peer_window;
                c->peer_window = v;
            } else if (key == 0x5) { /* MAX_FRAME_SIZE */
                c->peer_max_frame = v;
            }
        }
        frame(&c->out, SETTINGS, F_ACK, 0, NULL, 0);
        for (size_t j = c->nst; j-- > 0;) flush(c, c->st[j]); /* windows may have grown */
        break;
    case PING:
        if (!(flags & F_ACK) && n == 8) frame(&c->out, PING, F_ACK, 0, p, 8);
        break;
    case WINDOW_UPDATE: {
        if (n != 4) { goaway(c, E_FRAME_SIZE); return; }
        uint32_t inc = be32(p) & MAX_WINDOW;
        if (sid == 0) {
            c->conn_window += inc;
            /* backwards: flush may forget a stream, moving the last one into its slot */
            for (size_t j = c->nst; j-- > 0;) flush(c, c->st[j]);
        } else {
            Stream *s = find(c, sid);
            if (s) { s->window += inc; flush(c, s); }
        }
        break;
    }
    case GOAWAY: break; /* Envoy opens no new streams; it closes when its own end */
    case PUSH_PROMISE: goaway(c, E_PROTOCOL); break;
    default: break;     /* PRIORITY and unknown types are ignored (RFC 9113 5.5) */
    }
}

/* Everything for one read goes out in one write, the held stream ends with it. */
static void write_out(Conn *c) {
    if (c->out.len && c->lazy.len) {
        put(&c->out, c->lazy.p, c->lazy.len);
        c->lazy.len = 0;
        c->lazy_at = 0;
    }
    while (c->out.len) {
        ssize_t k = send(c->fd, c->out.p, c->out.len, MSG_NOSIGNAL);
        if (k < 0) {
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) c->dead = true;
            return; /* the rest when poll says the socket is writable */
        }
        drop(&c->out, (size_t)k);
    }
}

static void on_readable(Conn *c) {
    reserve(&c->in, 1 << 18);
    ssize_t k = recv(c->fd, c->in.p + c->in.len, c->in.cap - c->in.len, 0);
    if (k <= 0) {
        if (k == 0 || (errno != EAGAIN && errno != EINTR)) c->dead = true;
        return;
    }
    c->in.len += (size_t)k;
    size_t pos = 0;
    if (!c->preface_ok) {
        if (c->in.len < sizeof PREFACE - 1) return;
        if (memcmp(c->in.p, PREFACE, sizeof PREFACE - 1)) { goaway(c, E_PROTOCOL); return; }
        c->preface_ok = true;
        pos = sizeof PREFACE - 1;
    }
    while (c->in.len - pos >= 9 && !c->dead) {
        const unsigned char *h = c->in.p + pos;
        size_t n = (size_t)h[0] << 16 | (size_t)h[1] << 8 | h[2];
        if (n > RECV_MAX_FRAME) { goaway(c, E_FRAME_SIZE); return; }
        if (c->in.len - pos - 9 < n) break;
        pos += 9 + n;
        on_frame(c, h[3], h[4], be32(h + 5) & MAX_WINDOW, h + 9, n);
    }
    drop(&c->in, pos);
}

static Conn *accept_conn(int lfd) {
    int fd = accept(lfd, NULL, NULL);
    if (fd < 0) return NULL;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one); /* as asyncio/uvloop do */
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    Conn *c = calloc(1, sizeof *c);
    if (!c) { perror("calloc"); exit(1); }
    c->fd = fd;
    c->conn_window = c->peer_window = 65535; /* RFC defaults until Envoy's SETTINGS */
    c->peer_max_frame = 16384;
    /* Ours, as dualpool's server: many streams, windows as large as they go, 1 MiB
       frames; and the connection window opened to match. */
    unsigned char s[18] = {0, 3, 0, 1, 0, 0, 0, 4, 0x7f, 0xff, 0xff, 0xff, 0, 5, 0, 0x10, 0, 0};
    frame(&c->out, SETTINGS, 0, 0, s, sizeof s);
    frame_u32(&c->out, WINDOW_UPDATE, 0, MAX_WINDOW - 65535);
    write_out(c);
    return c;
}

static void close_conn(Conn *c) {
    write_out(c); /* a GOAWAY, best effort */
    close(c->fd);
    while (c->nst) forget(c, c->st[c->nst - 1]);
    free(c->st);
    free(c->in.p);
    free(c->out.p);
    free(c->lazy.p);
    free(c);
}

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s PORT\n", argv[0]); return 2; }
    signal(SIGPIPE, SIG_IGN);
    int lfd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t alen = sizeof a;
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 128) ||
        getsockname(lfd, (struct sockaddr *)&a, &alen)) {
        perror("_noop_extproc_c: listen");
        return 1;
    }
    fcntl(lfd, F_SETFL, fcntl(lfd, F_GETFL) | O_NONBLOCK);
    printf("{\"grpc_port\": %d}\n", ntohs(a.sin_port)); /* PORT 0: the one chosen */
    fflush(stdout);

    Conn **conns = NULL;
    struct pollfd *pfd = NULL;
    size_t nc = 0, cap = 0;
    for (;;) {
        if (cap < nc + 1) {
            cap = 2 * (nc + 1);
            conns = realloc(conns, cap * sizeof *conns);
            pfd = realloc(pfd, (cap + 1) * sizeof *pfd);
            if (!conns || !pfd) { perror("realloc"); return 1; }
        }
        pfd[0] = (struct pollfd){.fd = lfd, .events = POLLIN};
        double t = now(), wake = 0;
        for (size_t i = 0; i < nc; i++) {
            pfd[i + 1] = (struct pollfd){.fd = conns[i]->fd,
                                         .events = POLLIN | (conns[i]->out.len ? POLLOUT : 0)};
            if (conns[i]->lazy_at && (!wake || conns[i]->lazy_at < wake)) wake = conns[i]->lazy_at;
        }
        int timeout = wake ? (wake <= t ? 0 : (int)((wake - t) * 1000) + 1) : -1;
        if (poll(pfd, nc + 1, timeout) < 0 && errno != EINTR) { perror("poll"); return 1; }
        size_t was = nc;
        if (pfd[0].revents & POLLIN) {
            Conn *c;
            while (nc < cap && (c = accept_conn(lfd))) conns[nc++] = c;
        }
        t = now();
        for (size_t i = 0; i < was; i++) {
            Conn *c = conns[i];
            if (pfd[i + 1].revents & (POLLIN | POLLHUP | POLLERR)) on_readable(c);
            if (c->lazy_at && c->lazy_at <= t && !c->out.len) { /* held ends go out alone */
                put(&c->out, c->lazy.p, c->lazy.len);
                c->lazy.len = 0;
                c->lazy_at = 0;
            }
            write_out(c);
        }
        for (size_t i = nc; i-- > 0;)
            if (conns[i]->dead) { close_conn(conns[i]); conns[i] = conns[--nc]; }
    }
}
