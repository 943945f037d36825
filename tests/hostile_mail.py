"""Hostile (and a few clean) messages with attachments, built in code: no binary blob.

Each public function returns a whole message (CRLF line endings, as the filter receives it).
tests/data/banned_cases.toml names them and says what the content check must decide;
tests/unit/test_banned.py runs them. The executables are a minimal PE header and padding
(enough for libmagic, runs nowhere); the encrypted zip is ZipCrypto written by hand (zipfile
cannot write one); the bombs are deflate streams of zeros built by repeating one
independently compressed block, so that a 1 GiB member costs a second, not a minute.
"""

from __future__ import annotations

import base64
import functools
import gzip
import io
import struct
import tarfile
import zipfile
import zlib
from collections.abc import Callable

_DATE = (2024, 1, 2, 3, 4, 6)
GENERATORS: dict[str, Callable[[], bytes]] = {}


def case(function: Callable[[], bytes]) -> Callable[[], bytes]:
    GENERATORS[function.__name__] = function
    return function


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


def pe_file(size: int = 4096) -> bytes:
    """A minimal PE32 image: DOS header, PE signature, COFF and optional header stubs."""
    dos = bytearray(0x80)
    dos[0:2] = b"MZ"
    dos[0x3C:0x40] = struct.pack("<I", 0x80)  # e_lfanew: where the PE header starts
    coff = struct.pack("<4sHHIIIHH", b"PE\0\0", 0x14C, 1, 0, 0, 0, 0xE0, 0x0102)
    optional = struct.pack("<HBB", 0x10B, 14, 0) + bytes(0xE0 - 4)
    image = bytes(dos) + coff + optional
    return image + bytes(max(0, size - len(image)))


def zip_of(members: dict[str, bytes], deflate: bool = True) -> bytes:
    buffer = io.BytesIO()
    method = zipfile.ZIP_DEFLATED if deflate else zipfile.ZIP_STORED
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(zipfile.ZipInfo(name, _DATE), data)
    return buffer.getvalue()


def tar_gz_of(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            archive.addfile(info, io.BytesIO(data))
    return gzip.compress(buffer.getvalue(), mtime=0)


def message(parts: list[bytes], subject: str = "test") -> bytes:
    """A multipart/mixed message with a text body and the given (already built) parts."""
    boundary = b"=_hostile_boundary_1"
    head = (b"From: sender@example.net\r\nTo: rcpt@example.org\r\nSubject: " + subject.encode()
            + b"\r\nDate: Tue, 02 Jan 2024 03:04:05 +0000\r\nMessage-ID: <hostile@example.net>"
            b"\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\""
            + boundary + b"\"\r\n\r\nThis is a multi-part message in MIME format.\r\n")
    body = text_part(b"Please see the attachment.\r\n")
    out = [head]
    for part in [body, *parts]:
        out.append(b"--" + boundary + b"\r\n" + part + b"\r\n")
    out.append(b"--" + boundary + b"--\r\n")
    return b"".join(out)


def text_part(text: bytes) -> bytes:
    return b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + text


def attachment(data: bytes, ctype: str, disposition: str) -> bytes:
    """A base64 part; `disposition` is the Content-Disposition value, written as given."""
    encoded = base64.encodebytes(data).replace(b"\n", b"\r\n")
    return (f"Content-Type: {ctype}\r\nContent-Disposition: {disposition}\r\n"
            "Content-Transfer-Encoding: base64\r\n\r\n").encode() + encoded.rstrip(b"\r\n")


def named(data: bytes, name: str, ctype: str = "application/octet-stream") -> bytes:
    return attachment(data, f'{ctype}; name="{name}"', f'attachment; filename="{name}"')


# --------------------------------------------------------------------------------------------
# ZipCrypto (PKWARE APPNOTE 6.3.x §6.1), for a password-protected zip
# --------------------------------------------------------------------------------------------


def _crc_update(crc: int, byte: int) -> int:
    # zlib.crc32 inverts before and after; the ZipCrypto key schedule wants the raw update
    return ~zlib.crc32(bytes((byte,)), ~crc & 0xFFFFFFFF) & 0xFFFFFFFF


def _zipcrypto(plain: bytes, password: bytes, check_byte: int) -> bytes:
    keys = [0x12345678, 0x23456789, 0x34567890]

    def update(byte: int) -> None:
        keys[0] = _crc_update(keys[0], byte)
        keys[1] = ((keys[1] + (keys[0] & 0xFF)) * 134775813 + 1) & 0xFFFFFFFF
        keys[2] = _crc_update(keys[2], keys[1] >> 24)

    for byte in password:
        update(byte)
    out = bytearray()
    for byte in bytes(11) + bytes((check_byte,)) + plain:  # 12-byte encryption header
        temp = (keys[2] | 2) & 0xFFFF
        out.append(byte ^ (((temp * (temp ^ 1)) >> 8) & 0xFF))
        update(byte)
    return bytes(out)


def encrypted_zip(members: dict[str, bytes], password: bytes = b"invoice2024") -> bytes:
    """A zip whose members are stored and ZipCrypto-encrypted (names stay readable)."""
    local, central = bytearray(), bytearray()
    for name, data in members.items():
        crc = zlib.crc32(data)
        sealed = _zipcrypto(data, password, crc >> 24)
        raw_name = name.encode()
        fields = struct.pack("<HHHHHIIIHH", 20, 1, 0, 0x6000, 0x5822, crc, len(sealed),
                             len(data), len(raw_name), 0)
        offset = len(local)
        local += b"PK\x03\x04" + fields + raw_name + sealed
        central += (b"PK\x01\x02" + struct.pack("<H", 20) + fields + struct.pack(
            "<HHHII", 0, 0, 0, 0, offset) + raw_name)
    end = struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, len(members), len(members),
                      len(central), len(local), 0)
    return bytes(local + central + end)


# --------------------------------------------------------------------------------------------
# Bombs: zeros, deflated once per MiB and repeated
# --------------------------------------------------------------------------------------------

_MIB = 1 << 20


@functools.cache
def _zeros_deflated(mebibytes: int) -> tuple[bytes, int]:
    """A raw deflate stream of `mebibytes` MiB of zeros, and its CRC-32.

    After a full flush a deflate compressor starts afresh, so every MiB compresses to the
    same bytes, and the stream is that piece repeated plus a final empty block."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    zeros = bytes(_MIB)
    piece = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream = piece * mebibytes + zlib.compressobj(9, zlib.DEFLATED, -15).flush()
    crc = 0
    for _ in range(mebibytes):
        crc = zlib.crc32(zeros, crc)
    return stream, crc


@functools.cache
def zip_bomb_archive(mebibytes: int = 1100, name: str = "data.bin") -> bytes:
    stream, crc = _zeros_deflated(mebibytes)
    size = mebibytes * _MIB
    raw_name = name.encode()
    fields = struct.pack("<HHHHHIIIHH", 20, 0, 8, 0x6000, 0x5822, crc, len(stream), size,
                         len(raw_name), 0)
    local = b"PK\x03\x04" + fields + raw_name + stream
    central = (b"PK\x01\x02" + struct.pack("<H", 20) + fields
               + struct.pack("<HHHII", 0, 0, 0, 0, 0) + raw_name)
    return local + central + struct.pack("<4sHHHHIIH", b"PK\x05\x06", 0, 0, 1, 1,
                                         len(central), len(local), 0)


@functools.cache
def gzip_bomb_archive(mebibytes: int = 1100) -> bytes:
    """A lone .gz: a log line, then zeros. (Zeros alone would read as an empty tar.)"""
    line = b"2024-01-02 backup started\n"
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    stream = compressor.compress(line) + compressor.flush(zlib.Z_FULL_FLUSH)
    stream += _zeros_deflated(mebibytes)[0]
    crc = zlib.crc32(line)
    for _ in range(mebibytes):
        crc = zlib.crc32(bytes(_MIB), crc)
    size = len(line) + mebibytes * _MIB
    header = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x02\x03"
    return header + stream + struct.pack("<II", crc, size & 0xFFFFFFFF)


# --------------------------------------------------------------------------------------------
# The cases
# --------------------------------------------------------------------------------------------


@case
def exe_in_zip_in_zip() -> bytes:
    inner = zip_of({"evil.exe": pe_file()})
    outer = zip_of({"readme.txt": b"see inside\r\n", "inner.zip": inner})
    return message([named(outer, "invoice.zip", "application/zip")])


@case
def double_extension() -> bytes:
    return message([named(pe_file(), "invoice.pdf.exe")])


@case
def double_extension_text() -> bytes:
    """invoice.pdf.exe whose bytes are text: the name alone bans it."""
    return message([named(b"not really a program\r\n", "invoice.pdf.exe", "text/plain")])


@case
def rfc2231_banned_name() -> bytes:
    return message([attachment(b"harmless text\r\n", "application/octet-stream",
                               "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9%2Eexe")])


@case
def rfc2231_continuation() -> bytes:
    return message([attachment(b"harmless text\r\n", "application/octet-stream",
                               "attachment;\r\n filename*0*=UTF-8''quarterly%20report;\r\n"
                               " filename*1*=%2Epdf;\r\n filename*2=\".scr\"")])


@case
def rfc2047_banned_name() -> bytes:
    encoded = "=?UTF-8?B?" + base64.b64encode("Rechnung März.pdf.exe".encode()).decode() + "?="
    return message([attachment(b"harmless text\r\n", f'application/octet-stream; name="{encoded}"',
                               "attachment")])


@case
def encrypted_zip_harmless() -> bytes:
    archive = encrypted_zip({"statement.pdf": b"%PDF-1.4\n%%EOF\n"})
    return message([named(archive, "statement.zip", "application/zip")])


@case
def encrypted_zip_exe() -> bytes:
    archive = encrypted_zip({"statement.exe": pe_file()})
    return message([named(archive, "statement.zip", "application/zip")])


@case
def zip_bomb() -> bytes:
    return message([named(zip_bomb_archive(), "bomb.zip", "application/zip")])


@case
def gzip_bomb() -> bytes:
    return message([named(gzip_bomb_archive(), "backup.log.gz", "application/gzip")])


@case
def ten_thousand_parts() -> bytes:
    return message([text_part(b"part %d\r\n" % n) for n in range(10_000)])


@case
def sixty_levels() -> bytes:
    inner = text_part(b"the bottom\r\n")
    for level in range(60):
        boundary = f"level{level}".encode()
        inner = (b'Content-Type: multipart/mixed; boundary="' + boundary + b'"\r\n\r\n--'
                 + boundary + b"\r\n" + inner + b"\r\n--" + boundary + b"--")
    return message([inner])


@case
def broken_base64() -> bytes:
    good = named(b"%PDF-1.4\n" + bytes(range(256)) * 4, "scan.pdf", "application/pdf")
    return message([good.replace(b"\r\n\r\n", b"\r\n\r\n!!not*base64!!\r\n", 1)])


@case
def pe_named_txt() -> bytes:
    return message([named(pe_file(), "report.txt", "text/plain")])


@case
def truncated_zip() -> bytes:
    archive = zip_of({"photo.jpg": b"\xff\xd8\xff\xe0" + bytes(range(256)) * 64})
    return message([named(archive[: len(archive) // 2], "photos.zip", "application/zip")])


@case
def clean_pdf() -> bytes:
    pdf = b"%PDF-1.4\n1 0 obj\n<< /Type /Catalog >>\nendobj\ntrailer\n<< /Root 1 0 R >>\n%%EOF\n"
    return message([named(pdf + bytes(range(256)) * 8, "report.pdf", "application/pdf")])


@case
def clean_docx() -> bytes:
    document = zip_of({
        "[Content_Types].xml": b'<?xml version="1.0"?><Types/>',
        "_rels/.rels": b'<?xml version="1.0"?><Relationships/>',
        "word/document.xml": b'<?xml version="1.0"?><w:document/>',
    })
    ctype = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
    return message([named(document, "letter.docx", ctype)])


@case
def clean_tar_gz() -> bytes:
    archive = tar_gz_of({"notes/a.txt": b"first\n", "notes/b.txt": b"second\n"})
    return message([named(archive, "notes.tar.gz", "application/gzip")])


@case
def clean_plain() -> bytes:
    return (b"From: sender@example.net\r\nTo: rcpt@example.org\r\nSubject: hello\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n\r\n" + b"Hello, world.\r\n" * 600)


def plain_10k() -> bytes:
    """The benchmark's plain message: 10 KB of text, no attachment."""
    head = b"From: sender@example.net\r\nTo: rcpt@example.org\r\nSubject: hello\r\n\r\n"
    return head + (b"Hello, world. This is a plain letter.\r\n" * 300)[: 10_240 - len(head)]


def zip_100k() -> bytes:
    """The benchmark's attachment message: about 100 KB with a zip of a few documents."""
    members = {f"doc{n}.txt": (b"Quarterly figures, line %d.\n" % n) * 300 for n in range(4)}
    members["scan.pdf"] = b"%PDF-1.4\n" + bytes(range(256)) * 250
    return message([named(zip_of(members), "documents.zip", "application/zip")])
