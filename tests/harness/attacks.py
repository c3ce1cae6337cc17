"""XML attacks (entities, DTDs, XInclude, network) that must never be resolved: shared by the
policy property tests and the hostile-protocol tests.
"""

from __future__ import annotations

ATTACKS = {
    "external entity (file)": b"""<?xml version="1.0"?>
<!DOCTYPE domain [<!ENTITY xxe SYSTEM "file://SECRET">]>
<domain type='kvm'><name>&xxe;</name><uuid>1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff</uuid></domain>""",
    "parameter entity + external DTD": b"""<!DOCTYPE domain [<!ENTITY % p SYSTEM "file://SECRET"> %p;]>
<domain type='kvm'><uuid>1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff</uuid></domain>""",
    "external DTD over the network": b"""<!DOCTYPE domain SYSTEM "http://127.0.0.1:9/evil.dtd">
<domain type='kvm'><uuid>1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff</uuid></domain>""",
    "billion laughs": b"<!DOCTYPE lolz [<!ENTITY lol 'lol'>" + b"".join(
        b"<!ENTITY lol%d '%s'>" % (i, (b"&lol%d;" % (i - 1) if i > 1 else b"&lol;") * 10) for i in range(1, 10))
    + b"]><domain><name>&lol9;</name><uuid>1b0b8a5e-2c1d-4d7e-9f00-aabbccddeeff</uuid></domain>",
    "DOCTYPE after a comment and BOM": b"\xef\xbb\xbf<!-- x --><!DOCTYPE domain [<!ENTITY a 'b'>]><domain/>",
    "DOCTYPE in lower case": b"<!doctype domain [<!ENTITY a SYSTEM 'file://SECRET'>]><domain>&a;</domain>",
}


def attack_docs(secret_path: str):
    return {k: v.replace(b"SECRET", secret_path.encode()) for k, v in ATTACKS.items()}
