/*
 * libFuzzer targets for the compiled hook shim's two functions that touch bytes from
 * outside: the reply parser (what comes back over the hook socket) and the request
 * header encoder (what libvirt's domain name and extra argument become). Built by
 * tests/reliability/test_fuzz_shim.py with clang -fsanitize=fuzzer,address,undefined,
 * one binary per target (-DFUZZ_REPLY or -DFUZZ_ENCODE). Besides the sanitizers, each
 * target checks the function's contract and abort()s when it does not hold.
 */
#define HOOKD_SHIM_NO_MAIN
#include "../../hooks/hookd-shim.c"

#include <assert.h>

#define CHECK(cond) do { if (!(cond)) { fprintf(stderr, "contract broken: %s\n", #cond); abort(); } } while (0)

#ifdef FUZZ_REPLY
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct shim_reply reply;
    char *buf;
    size_t i;
    int rc;

    if (size > REPLY_BUF * 2)
        return 0;
    /* An exact-size heap copy: any read past the end is an ASan report. */
    buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    rc = shim_parse_reply(buf, size, &reply);
    CHECK(rc == 0 || rc == 1 || rc == -1);
    if (rc == 0) {
        CHECK(reply.reason >= buf && reply.reason + reply.reason_len <= buf + size);
        CHECK(reply.reason_len <= MAX_REASON);
        CHECK(reply.deny || reply.reason_len == 0);
        CHECK(memcmp(buf, "HOOKD1 ", 7) == 0);
        /* Every proper prefix of a whole reply is "need more", never "invalid". */
        for (i = 0; i < (size_t)(reply.reason - buf) + reply.reason_len; i++) {
            struct shim_reply partial;

            CHECK(shim_parse_reply(buf, i, &partial) == 1);
        }
    }
    if (rc == -1) {
        /* Invalid stays invalid whatever follows. */
        char *longer = malloc(size + 8);

        if (longer != NULL) {
            memcpy(longer, buf, size);
            memcpy(longer + size, "0\nxxxxxx", 8);
            CHECK(shim_parse_reply(longer, size + 8, &reply) == -1);
            free(longer);
        }
    }
    free(buf);
    return 0;
}
#endif

#ifdef FUZZ_ENCODE
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char op[40], sub[40], *buf, check_op[40], check_sub[40];
    unsigned long long deadline = 0, d2;
    unsigned long name_len, extra_len, xml_len, n2, e2, x2;
    size_t cap, i, pos = 0;
    int rc, got;

    if (size < 16)
        return 0;
    /* Layout: cap(1) deadline(8) name_len(2) extra_len(2) xml_len(3) op\0 sub\0 */
    cap = data[pos++];
    for (i = 0; i < 8; i++)
        deadline = deadline << 8 | data[pos++];
    name_len = (unsigned long)data[pos] << 8 | data[pos + 1];
    pos += 2;
    extra_len = (unsigned long)data[pos] << 8 | data[pos + 1];
    pos += 2;
    xml_len = (unsigned long)data[pos] << 16 | (unsigned long)data[pos + 1] << 8 | data[pos + 2];
    xml_len *= 4;               /* reach past MAX_XML + 1 */
    pos += 3;
    for (i = 0; i < sizeof(op) - 1 && pos < size && data[pos] != 0; i++)
        op[i] = (char)data[pos++];
    op[i] = '\0';
    pos++;
    for (i = 0; i < sizeof(sub) - 1 && pos < size && data[pos] != 0; i++)
        sub[i] = (char)data[pos++];
    sub[i] = '\0';

    buf = malloc(cap ? cap : 1);
    if (buf == NULL)
        return 0;
    rc = shim_encode_header(buf, cap, op, sub, deadline, name_len, extra_len, xml_len);
    CHECK(rc >= -1);
    if (rc >= 0) {
        CHECK((size_t)rc < cap && (size_t)rc <= MAX_HEADER && buf[rc] == '\0' && buf[rc - 1] == '\n');
        CHECK(strlen(buf) == (size_t)rc);
        CHECK(name_len <= MAX_FIELD && extra_len <= MAX_FIELD && xml_len <= MAX_XML + 1);
        got = sscanf(buf, "HOOKD1 %39s %39s %llu %lu %lu %lu", check_op, check_sub, &d2, &n2, &e2, &x2);
        CHECK(got == 6 && strcmp(check_op, op) == 0 && strcmp(check_sub, sub) == 0);
        CHECK(d2 == deadline && n2 == name_len && e2 == extra_len && x2 == xml_len);
        for (i = 0; op[i] != '\0'; i++)
            CHECK(op[i] >= 'a' && op[i] <= 'z');
    }
    free(buf);
    return 0;
}
#endif
