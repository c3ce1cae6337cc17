"""Reading untrusted domain XML safely, and writing it back.

Owns the hardened lxml parser (no DTD, no entities, no network, no huge trees), the
DOCTYPE refusal, the UTF-8 and size checks, and serialisation that keeps the
document's own XML declaration. It knows nothing about domains, Nova or serials.

Domain XML reaches hookd from libvirt hooks, from libvirt clients through the proxy
and from operators' files; a tenant controls parts of it (the instance name), so a
document is checked before libxml2 sees it.
"""

from __future__ import annotations

import re

from lxml import etree

from hookd.errors import XmlError

#: libvirt's own RPC message limit (VIR_NET_MESSAGE_MAX) bounds any domain XML.
MAX_XML_BYTES = 32 * 1024 * 1024

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    dtd_validation=False,
    huge_tree=False,
    remove_blank_text=False,
    remove_comments=False,
    remove_pis=False,
    strip_cdata=False,
    collect_ids=False,
)

_XML_DECL = re.compile(rb"<\?xml\s[^?]*\?>")
_DECL_ENCODING = re.compile(rb"""encoding\s*=\s*["']([A-Za-z0-9._-]+)["']""")
_UTF8_NAMES = frozenset({"utf-8", "utf8", "us-ascii", "ascii"})
_BOM = b"\xef\xbb\xbf"


def _root_start(data: bytes) -> int:
    """Offset of the root element's "<", skipping the prolog; -1 if a DOCTYPE comes first.

    Entities can only be declared in a DOCTYPE, so refusing it up front rules out
    XXE and entity expansion without relying on the parser's own limits. A
    "<!DOCTYPE" inside a comment or CDATA further down is text, not a doctype.
    """
    i, n = (3 if data.startswith(_BOM) else 0), len(data)
    while i < n:
        if data[i] in b" \t\r\n":
            i += 1
        elif data.startswith(b"<?", i):
            end = data.find(b"?>", i + 2)
            i = n if end < 0 else end + 2
        elif data.startswith(b"<!--", i):
            end = data.find(b"-->", i + 4)
            i = n if end < 0 else end + 3
        elif data[i:i + 9].upper() == b"<!DOCTYPE":
            return -1
        else:
            return i
    return n


def _root_end(data: bytes) -> int:
    """Offset just past the root element's last ">", skipping the epilog backwards.

    Only valid on a document that parsed: the epilog is then whitespace, comments
    (which cannot contain "<!--") and processing instructions. Returns -1 when the
    epilog is not that simple (a PI holding "<?"), so the caller can fall back.
    """
    i = len(data)
    while i > 0:
        if data[i - 1] in b" \t\r\n":
            i -= 1
        elif data.endswith(b"-->", 0, i):
            i = data.rfind(b"<!--", 0, i - 3)
            if i < 0:
                return -1
        elif data.endswith(b"?>", 0, i):
            start = data.rfind(b"<?", 0, i - 2)
            if start < 0 or data.find(b"<?", start + 2, i) >= 0:
                return -1
            i = start
        else:
            return i if data[i - 1] == ord(">") else -1
    return -1


def parse_xml(data: bytes, *, what: str = "XML") -> "etree._Element":
    """Parse bytes into an element tree, refusing anything hookd will not read."""
    if not isinstance(data, (bytes, bytearray)):
        raise TypeError("parse_xml takes bytes")
    if len(data) > MAX_XML_BYTES:
        raise XmlError(f"{what} is {len(data)} bytes, over the {MAX_XML_BYTES}-byte limit")
    if not data.strip():
        raise XmlError(f"{what} is empty")
    head = data[:200]
    decl = _XML_DECL.match(head.lstrip(_BOM))
    if decl is not None:
        enc = _DECL_ENCODING.search(decl.group(0))
        if enc is not None and enc.group(1).decode().lower() not in _UTF8_NAMES:
            raise XmlError(f"{what} declares encoding {enc.group(1).decode()!r}; only UTF-8 is accepted")
    try:
        bytes(data).decode("utf-8")
    except UnicodeDecodeError as err:
        raise XmlError(f"{what} is not valid UTF-8 (byte {err.start})") from err
    nul = data.find(b"\0")
    if nul >= 0:
        # Not an XML character; libxml2 takes a NUL after the root element for the end
        # of the input and silently ignores whatever follows it.
        raise XmlError(f"{what} contains a NUL byte (offset {nul})")
    if _root_start(data) < 0:
        raise XmlError(f"{what} has a DOCTYPE; DTDs and entities are refused")
    try:
        root = etree.fromstring(bytes(data), _PARSER)
    except etree.XMLSyntaxError as err:
        raise XmlError(f"{what} is not well-formed: {_one_line(err)}") from err
    if root.getroottree().docinfo.doctype:
        raise XmlError(f"{what} has a DOCTYPE; DTDs and entities are refused")
    return root


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def serialize(root: "etree._Element", original: bytes) -> bytes:
    """Serialise the document of `root`, keeping everything outside it as written.

    libxml2 keeps no whitespace outside the root element and lxml writes its own
    XML declaration, so the prolog and epilog are taken verbatim from `original`
    and only the root element is re-serialised.
    """
    element = etree.tostring(root, encoding="UTF-8", xml_declaration=False, with_tail=False)
    start, end = _root_start(original), _root_end(original)
    if start < 0 or end < start:
        return etree.tostring(root.getroottree(), encoding="UTF-8", xml_declaration=True)
    return original[:start] + element + original[end:]
