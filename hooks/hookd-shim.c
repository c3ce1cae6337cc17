/*
 * hookd-shim: hookd's libvirt qemu hook, installed as /etc/libvirt/hooks/qemu.d/50-hookd.
 *
 * Owns: the exec that libvirt makes for every operation of every guest, with the
 * domain locked. It exits 0 at once for everything but `prepare begin`,
 * `migrate begin` and `restore begin` (and so never fails `reconnect`, which would
 * make libvirt kill the guest); for those three it sends the domain XML to hookd
 * over the hook socket and waits, bounded by one deadline for connect, send and
 * receive, for a one-line allow/deny answer. A deny is the only non-zero exit the
 * daemon can cause; its reason goes to stderr, which libvirt shows the client.
 * When hookd does not answer, on_unreachable (allow | deny) decides and the reason
 * goes to stderr and syslog.
 *
 * Must not: decide anything (policy lives in hookd), write to stdout (migrate and
 * restore hooks are filters; empty stdout means "unchanged", and libvirt's ABI check
 * refuses any serial change there), allocate anything but the XML it read, read
 * more than MAX_XML + 1 bytes, or wait past its deadline.
 *
 * The wire format is hookd/hookpath/shimwire.py's (documented there, one format for both
 * sides). Settings come from "<this file's path>.conf", written by
 * `hookctl install-hook`, since libvirt gives hooks only PATH, HOME and LC_ALL:
 *
 *     socket = /run/hookd/hookd.sock     (absolute, < 108 bytes)
 *     timeout = 5                        (seconds, 0.1 to 300)
 *     on_unreachable = allow             (allow | deny)
 *
 * A missing file means these defaults. A file that cannot be read whole is treated
 * like an unreachable hookd, with the on_unreachable it names if it got that far.
 *
 * C99 + POSIX.1-2008, libc only. Built with -DHOOKD_SHIM_NO_MAIN by the fuzz targets,
 * which call shim_encode_header() and shim_parse_reply() directly.
 */
#define _POSIX_C_SOURCE 200809L

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

/* Limits shared with hookd/hookpath/shimwire.py (tests/hookpath/test_shimwire.py checks they agree). */
#define SHIM_MAGIC "HOOKD1"
#define MAX_XML (32UL * 1024 * 1024)      /* libvirt's own RPC message limit */
#define MAX_FIELD 4096UL                  /* domain name and `extra` */
#define MAX_REASON 4000UL                 /* a deny's one-line reason */
#define MAX_HEADER 128UL                  /* request and reply header lines */
#define REPLY_BUF (MAX_HEADER + MAX_REASON)

/* `hookctl doctor` finds the shim under any name by this text (see --version). */
#define SHIM_IDENT "hookd's libvirt qemu hook"
#define DEFAULT_SOCKET "/run/hookd/hookd.sock"
#define DEFAULT_TIMEOUT_MS 5000L
#define MAX_SETTINGS 4096

struct shim_settings {
    char socket[sizeof(((struct sockaddr_un *)0)->sun_path)];
    long timeout_ms;
    int deny_unreachable;
};

struct shim_reply {
    int deny;
    const char *reason;     /* points into the parsed buffer; not NUL-terminated */
    size_t reason_len;
};

/*
 * The request header: "HOOKD1 <op> <sub> <deadline_ms> <name_len> <extra_len> <xml_len>\n".
 * op and sub are lower-case words of 1 to 16 letters. Returns the header length, or
 * -1 if a field is out of its range or the header would not fit `cap`.
 */
int shim_encode_header(char *buf, size_t cap, const char *op, const char *sub,
                       unsigned long long deadline_ms, size_t name_len,
                       size_t extra_len, size_t xml_len)
{
    const char *words[2];
    size_t w, i;
    int n;

    words[0] = op;
    words[1] = sub;
    for (w = 0; w < 2; w++) {
        for (i = 0; words[w][i] != '\0'; i++) {
            if (i >= 16 || words[w][i] < 'a' || words[w][i] > 'z')
                return -1;
        }
        if (i == 0)
            return -1;
    }
    if (name_len > MAX_FIELD || extra_len > MAX_FIELD || xml_len > MAX_XML + 1)
        return -1;
    n = snprintf(buf, cap, SHIM_MAGIC " %s %s %llu %lu %lu %lu\n", op, sub, deadline_ms,
                 (unsigned long)name_len, (unsigned long)extra_len, (unsigned long)xml_len);
    if (n < 0 || (size_t)n >= cap || (size_t)n > MAX_HEADER)
        return -1;
    return n;
}

/*
 * The reply: "HOOKD1 allow 0\n" or "HOOKD1 deny <reason_len>\n<reason>", reason_len a
 * decimal without leading zeros, at most MAX_REASON. Returns 0 when buf holds the whole
 * reply (bytes after it are ignored), 1 when it is a valid beginning that needs more
 * bytes, -1 when it can never become a valid reply.
 */
int shim_parse_reply(const char *buf, size_t len, struct shim_reply *out)
{
    static const char magic[] = SHIM_MAGIC " ";
    size_t pos = 0, need, digits = 0, reason_len = 0;
    const char *word;
    int deny;

    for (need = 0; magic[need] != '\0'; need++, pos++) {
        if (pos >= len)
            return 1;
        if (buf[pos] != magic[need])
            return -1;
    }
    if (pos >= len)
        return 1;
    if (buf[pos] == 'a') {
        word = "allow ";
        deny = 0;
    } else if (buf[pos] == 'd') {
        word = "deny ";
        deny = 1;
    } else {
        return -1;
    }
    for (need = 0; word[need] != '\0'; need++, pos++) {
        if (pos >= len)
            return 1;
        if (buf[pos] != word[need])
            return -1;
    }
    for (;; pos++) {
        if (pos >= len)
            return 1;
        if (buf[pos] == '\n')
            break;
        if (buf[pos] < '0' || buf[pos] > '9' || digits == 4)
            return -1;
        if (digits == 1 && reason_len == 0)
            return -1;          /* a leading zero */
        reason_len = reason_len * 10 + (size_t)(buf[pos] - '0');
        digits++;
    }
    if (digits == 0 || reason_len > MAX_REASON || (!deny && reason_len != 0))
        return -1;
    pos++;                      /* the newline */
    if (len - pos < reason_len)
        return 1;
    out->deny = deny;
    out->reason = buf + pos;
    out->reason_len = reason_len;
    return 0;
}

#ifndef HOOKD_SHIM_NO_MAIN

static const char *g_name = "?";
static struct shim_settings g_settings;

/* One line on stderr (libvirt puts a failing hook's stderr in the client's error). */
static void say(int to_syslog, const char *fmt, ...)
{
    char line[MAX_REASON + 512];
    va_list ap;
    size_t i;

    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    for (i = 0; line[i] != '\0'; i++) {
        if ((unsigned char)line[i] < 0x20 || line[i] == 0x7f)
            line[i] = ' ';
    }
    fprintf(stderr, "%s\n", line);
    fflush(stderr);
    if (to_syslog) {
        openlog("hookd-hook", LOG_PID, LOG_DAEMON);
        syslog(LOG_WARNING, "%s", line);
        closelog();
    }
}

static int unreachable(const char *reason)
{
    if (g_settings.deny_unreachable) {
        say(1, "hookd: refusing %s: hookd is unreachable at %s (%s) and on_unreachable = deny",
            g_name, g_settings.socket, reason);
        return 1;
    }
    say(1, "hookd: allowing %s unchecked: hookd is unreachable at %s (%s)",
        g_name, g_settings.socket, reason);
    return 0;
}

static long long now_ms(clockid_t clock)
{
    struct timespec ts;

    clock_gettime(clock, &ts);
    return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Milliseconds left until `deadline` (monotonic), at least 0. */
static int left_ms(long long deadline)
{
    long long left = deadline - now_ms(CLOCK_MONOTONIC);

    return left > 0 ? (int)left : 0;
}

static void sleep_ms(long ms)
{
    struct timespec ts;

    ts.tv_sec = ms / 1000;
    ts.tv_nsec = (ms % 1000) * 1000000L;
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static char *trim(char *s)
{
    char *end;

    while (*s == ' ' || *s == '\t')
        s++;
    end = s + strlen(s);
    while (end > s && (end[-1] == ' ' || end[-1] == '\t' || end[-1] == '\r'))
        *--end = '\0';
    return s;
}

/* Returns 0, or -1 with `why` saying which line is wrong. */
static int load_settings(const char *path, char *why, size_t why_cap)
{
    char text[MAX_SETTINGS + 1];
    size_t got = 0;
    ssize_t n;
    int fd, line_no = 0;
    char *line, *next;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        if (errno == ENOENT)
            return 0;
        snprintf(why, why_cap, "cannot read settings %.3000s: %s", path, strerror(errno));
        return -1;
    }
    while (got < sizeof(text)) {
        n = read(fd, text + got, sizeof(text) - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            snprintf(why, why_cap, "cannot read settings %.3000s: %s", path, strerror(errno));
            close(fd);
            return -1;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    close(fd);
    if (got > MAX_SETTINGS) {
        snprintf(why, why_cap, "settings %.3000s are over %d bytes", path, MAX_SETTINGS);
        return -1;
    }
    text[got] = '\0';
    if (strlen(text) != got) {
        snprintf(why, why_cap, "settings %.3000s hold a NUL byte", path);
        return -1;
    }
    for (line = text; line != NULL; line = next) {
        char *eq, *key, *value, *end;

        line_no++;
        next = strchr(line, '\n');
        if (next != NULL)
            *next++ = '\0';
        line = trim(line);
        if (*line == '\0' || *line == '#')
            continue;
        eq = strchr(line, '=');
        if (eq == NULL) {
            snprintf(why, why_cap, "settings %.3000s line %d: expected key = value", path, line_no);
            return -1;
        }
        *eq = '\0';
        key = trim(line);
        value = trim(eq + 1);
        if (strcmp(key, "socket") == 0) {
            if (value[0] != '/' || strlen(value) >= sizeof(g_settings.socket)) {
                snprintf(why, why_cap, "settings %.3000s line %d: socket must be an absolute path "
                         "of at most %lu bytes", path, line_no,
                         (unsigned long)sizeof(g_settings.socket) - 1);
                return -1;
            }
            memcpy(g_settings.socket, value, strlen(value) + 1);
        } else if (strcmp(key, "timeout") == 0) {
            double s;

            errno = 0;
            s = strtod(value, &end);
            if (errno != 0 || end == value || *end != '\0' || !(s >= 0.1 && s <= 300)) {
                snprintf(why, why_cap, "settings %.3000s line %d: timeout must be 0.1 to 300 seconds",
                         path, line_no);
                return -1;
            }
            g_settings.timeout_ms = (long)(s * 1000 + 0.5);
        } else if (strcmp(key, "on_unreachable") == 0) {
            if (strcmp(value, "allow") == 0) {
                g_settings.deny_unreachable = 0;
            } else if (strcmp(value, "deny") == 0) {
                g_settings.deny_unreachable = 1;
            } else {
                snprintf(why, why_cap, "settings %.3000s line %d: on_unreachable must be allow or deny",
                         path, line_no);
                return -1;
            }
        } else {
            snprintf(why, why_cap, "settings %.3000s line %d: unknown key", path, line_no);
            return -1;
        }
    }
    return 0;
}

/* stdin into a buffer of at most MAX_XML + 1 bytes (one past the limit lets hookd,
 * which records every call, say the definition is too large). NULL on a read error. */
static char *read_xml(size_t *len)
{
    size_t cap = 64 * 1024, got = 0;
    char *buf = malloc(cap), *grown;
    ssize_t n;

    if (buf == NULL)
        return NULL;
    for (;;) {
        if (got == cap) {
            if (cap >= MAX_XML + 1)
                break;
            cap = cap * 2 > MAX_XML + 1 ? MAX_XML + 1 : cap * 2;
            grown = realloc(buf, cap);
            if (grown == NULL) {
                free(buf);
                return NULL;
            }
            buf = grown;
        }
        n = read(STDIN_FILENO, buf + got, cap - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            if (errno == EBADF)     /* no stdin at all: an empty document */
                break;
            free(buf);
            return NULL;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    *len = got;
    return buf;
}

/* Wait until fd is ready for `events`: 0 ready, 1 deadline passed, -1 error. */
static int wait_ready(int fd, short events, long long deadline, char *why, size_t why_cap)
{
    for (;;) {
        struct pollfd p = { fd, events, 0 };
        int r = poll(&p, 1, left_ms(deadline));

        if (r > 0)
            return 0;
        if (r == 0)
            return 1;
        if (errno != EINTR) {
            snprintf(why, why_cap, "poll: %s", strerror(errno));
            return -1;
        }
    }
}

/* A full listen backlog makes an AF_UNIX connect fail at once with EAGAIN instead of
 * waiting (a boot storm of guests): retry until the deadline. */
static int connect_until(int fd, long long deadline, char *why, size_t why_cap)
{
    struct sockaddr_un addr;
    long delay = 2;

    memset(&addr, 0, sizeof(addr));
    addr.sun_family = AF_UNIX;
    memcpy(addr.sun_path, g_settings.socket, strlen(g_settings.socket) + 1);
    for (;;) {
        if (connect(fd, (struct sockaddr *)&addr, sizeof(addr)) == 0)
            return 0;
        if (errno == EINTR)
            continue;
        if (errno == EINPROGRESS) {
            int err = 0, r = wait_ready(fd, POLLOUT, deadline, why, why_cap);
            socklen_t err_len = sizeof(err);

            if (r != 0)
                return r;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &err_len);
            if (err == 0)
                return 0;
            errno = err;
        }
        if (errno != EAGAIN) {
            snprintf(why, why_cap, "connect: %s", strerror(errno));
            return -1;
        }
        if (left_ms(deadline) <= delay)
            return 1;
        sleep_ms(delay);
        delay = delay * 2 > 50 ? 50 : delay * 2;
    }
}

/* 0 sent, 1 deadline passed, -1 error (why says which). */
static int send_all(int fd, const char *data, size_t len, long long deadline,
                    char *why, size_t why_cap)
{
    while (len > 0) {
        ssize_t n;
        int r = wait_ready(fd, POLLOUT, deadline, why, why_cap);

        if (r != 0)
            return r;
        n = send(fd, data, len, MSG_NOSIGNAL);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0) {
            snprintf(why, why_cap, "send: %s", strerror(errno));
            return -1;
        }
        data += n;
        len -= (size_t)n;
    }
    return 0;
}

/* 0 with *reply set, 1 deadline passed, -1 error. */
static int receive_reply(int fd, char *buf, long long deadline, struct shim_reply *reply,
                         char *why, size_t why_cap)
{
    size_t got = 0;

    for (;;) {
        ssize_t n;
        int r = wait_ready(fd, POLLIN, deadline, why, why_cap);

        if (r != 0)
            return r;
        n = recv(fd, buf + got, REPLY_BUF - got, 0);
        if (n < 0 && (errno == EINTR || errno == EAGAIN))
            continue;
        if (n < 0) {
            snprintf(why, why_cap, "recv: %s", strerror(errno));
            return -1;
        }
        if (n == 0) {
            snprintf(why, why_cap, "hookd closed the connection without an answer");
            return -1;
        }
        got += (size_t)n;
        switch (shim_parse_reply(buf, got, reply)) {
        case 0:
            return 0;
        case -1:
            snprintf(why, why_cap, "answer is not in hookd's shim format");
            return -1;
        default:
            if (got == REPLY_BUF) {
                snprintf(why, why_cap, "answer is not in hookd's shim format");
                return -1;
            }
        }
    }
}

static int ask(const char *op, const char *sub, const char *extra, long long deadline)
{
    char header[MAX_HEADER + 1], why[256], reply_buf[REPLY_BUF];
    struct shim_reply reply;
    long long wall_deadline;
    size_t xml_len = 0;
    char *xml;
    int fd, r, n;

    xml = read_xml(&xml_len);
    if (xml == NULL)
        return unreachable("cannot read the domain XML from stdin");
    /* hookd records an answer it gives after this shim gave up as `expired`, not as
     * a decision: it needs the deadline on its own (wall) clock. */
    wall_deadline = now_ms(CLOCK_REALTIME) + left_ms(deadline);
    n = shim_encode_header(header, sizeof(header), op, sub, (unsigned long long)wall_deadline,
                           strlen(g_name), strlen(extra), xml_len);
    if (n < 0) {
        free(xml);
        return unreachable("domain name or extra argument too long for hookd's shim format");
    }
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        snprintf(why, sizeof(why), "socket: %s", strerror(errno));
        free(xml);
        return unreachable(why);
    }
    r = connect_until(fd, deadline, why, sizeof(why));
    if (r == 0)
        r = send_all(fd, header, (size_t)n, deadline, why, sizeof(why));
    if (r == 0)
        r = send_all(fd, g_name, strlen(g_name), deadline, why, sizeof(why));
    if (r == 0)
        r = send_all(fd, extra, strlen(extra), deadline, why, sizeof(why));
    if (r == 0)
        r = send_all(fd, xml, xml_len, deadline, why, sizeof(why));
    free(xml);
    if (r == 0)
        r = receive_reply(fd, reply_buf, deadline, &reply, why, sizeof(why));
    close(fd);
    if (r == 1) {
        snprintf(why, sizeof(why), "no answer within %gs", (double)g_settings.timeout_ms / 1000.0);
        return unreachable(why);
    }
    if (r < 0)
        return unreachable(why);
    if (!reply.deny)
        return 0;
    if (reply.reason_len == 0)
        say(0, "hookd: start of %s refused by policy", g_name);
    else
        say(0, "%.*s", (int)reply.reason_len, reply.reason);
    return 1;
}

int main(int argc, char **argv)
{
    char settings_path[4096], why[3400];
    const char *op, *sub;
    long long deadline;

    if (argc == 2 && strcmp(argv[1], "--version") == 0) {
        printf(SHIM_IDENT " (hookd-shim, wire format " SHIM_MAGIC ")\n");
        return 0;
    }
    if (argc < 4)
        return 0;
    op = argv[2];
    sub = argv[3];
    if (strcmp(sub, "begin") != 0 ||
        (strcmp(op, "prepare") != 0 && strcmp(op, "migrate") != 0 && strcmp(op, "restore") != 0))
        return 0;
    deadline = now_ms(CLOCK_MONOTONIC);
    /* stderr is libvirt's pipe; a write after it went away must not kill the shim. */
    signal(SIGPIPE, SIG_IGN);
    g_name = argv[1];
    memcpy(g_settings.socket, DEFAULT_SOCKET, sizeof(DEFAULT_SOCKET));
    g_settings.timeout_ms = DEFAULT_TIMEOUT_MS;
    g_settings.deny_unreachable = 0;
    if ((size_t)snprintf(settings_path, sizeof(settings_path), "%s.conf", argv[0])
            >= sizeof(settings_path))
        return unreachable("the hook's path is too long to find its settings");
    if (load_settings(settings_path, why, sizeof(why)) != 0)
        return unreachable(why);
    deadline += g_settings.timeout_ms;
    return ask(op, sub, argc > 4 ? argv[4] : "-", deadline);
}

#endif /* HOOKD_SHIM_NO_MAIN */
