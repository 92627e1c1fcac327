#!/usr/bin/env python3
"""Writes the seed corpus of every harness into tests/fuzz/corpus/<harness>/ (small, hand-picked
inputs the fuzzer mutates from). Re-run after changing a harness's input format; crash reproducers
that ci/fuzz adds (named crash-*/repro-*) are kept. Needs python3-cryptography (real envelopes under
the harnesses' fixed test keys, see fixed_key_engine.h)."""
import hashlib, hmac, os, struct, sys
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

root = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")


def write(harness, name, data):
    d = os.path.join(root, harness)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)


def varint(n):
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        out += bytes([b | (0x80 if n else 0)])
        if not n:
            return out


def field(num, value):  # length-delimited protobuf field
    value = value.encode() if isinstance(value, str) else value
    return varint(num << 3 | 2) + varint(len(value)) + value


def header(version):
    return b"TH\x01" + struct.pack(">Q", version)


def fixed_key(version):
    return bytes([version * 0x11 & 0xFF]) * 32


def envelope(version, plaintext, iv=b"\x07" * 12):
    h = header(version)
    return h + iv + AESGCM(fixed_key(version)).encrypt(iv, plaintext, h)


def key_id(version):
    fp = hmac.new(fixed_key(version), b"trousseau-hsm software backend fingerprint", hashlib.sha256).hexdigest()
    h = hashlib.sha256()
    for f in [b"trousseau-hsm key_id v1", b"software", b"kek", str(version).encode(), fp.encode()]:
        h.update(struct.pack(">Q", len(f)) + f)
    return "kek-v%d-%s" % (version, h.hexdigest()[:32])


seed = b"0123456789abcdef0123456789abcdef"

# envelope parser
write("envelope_fuzz", "real_v3", envelope(3, seed))
write("envelope_fuzz", "header_only", header(1))
write("envelope_fuzz", "version0", header(0) + b"x" * 28)
write("envelope_fuzz", "bad_magic", b"XX\x01" + header(1)[3:] + b"x" * 28)
write("envelope_fuzz", "format2", b"TH\x02" + header(1)[3:] + b"x" * 28)
write("envelope_fuzz", "max_version", header(2**64 - 1) + b"y")

# PKCS#11 URI parser
m = "module-path=/usr/lib/softhsm/libsofthsm2.so"
write("pkcs11_uri_fuzz", "softhsm", "pkcs11:token=k8s-kms;object=kek?%s&pin-source=file:/etc/trousseau-hsm/pin" % m)
write("pkcs11_uri_fuzz", "serial_type", "pkcs11:token=a%20b;serial=0123;object=kek;type=secret-key?" + m)
write("pkcs11_uri_fuzz", "pin_value", "pkcs11:token=t;object=kek?%s&pin-value=1234" % m)
write("pkcs11_uri_fuzz", "id", "pkcs11:token=t;object=kek;id=%01?" + m)
write("pkcs11_uri_fuzz", "relative_module", "pkcs11:object=kek?module-path=libsofthsm2.so")
write("pkcs11_uri_fuzz", "file_url_pin", "pkcs11:object=k;slot-id=3?%s&pin-source=file:///run/pin" % m)

# key_id / key ring (FuzzedDataProvider input: structure is consumed from both ends)
write("key_id_fuzz", "ring_and_id", b"\x03pkcs11\x03kek\x02\x01\x01fp1\x01\x03fp3" + key_id(3).encode())
write("key_id_fuzz", "duplicate", b"\x02tpm2\x01k\x03\x01\x02a\x01\x02b\x01\x01c")
write("key_id_fuzz", "lookup_only", key_id(1))
write("key_id_fuzz", "zero", b"\x00\x00\x00\x01\x00\x00")

# TPM key directory (FuzzedDataProvider: name choices and contents)
write("tpm_key_dir_fuzz", "aes_version", b"\x01\x00" + b"A" * 40 + b"\x01\x01" + b"B" * 40 + b"\x01\x02" + b"C" * 40
      + b"\x01\x03" + b"D" * 40 + b"\x01\x01\x01\x01")
write("tpm_key_dir_fuzz", "rsa_version", b"\x01\x04" + b"\x00\x10" + b"R" * 16 + b"\x01\x05" + b"S" * 30 + b"\x05\x01")
write("tpm_key_dir_fuzz", "junk_names", b"\x00vx.aes.pub\x00junk\x00.hidden\x00" + b"\xff" * 8)
write("tpm_key_dir_fuzz", "empty", b"")

# YAML config file
write("config_fuzz", "pkcs11", "pkcs11-uri: pkcs11:token=k8s-kms;object=kek?module-path=/usr/lib/softhsm/libsofthsm2.so\n"
      "listen: unix:///run/trousseau-hsm/kms.sock\nhsm-sessions: 8\nhealth-cache: 5s\nlog-format: json\n")
write("config_fuzz", "tpm", "tpm-key-dir: /var/lib/trousseau-hsm/tpm\ntpm-tcti: swtpm:path=/run/swtpm/sock\n"
      "tpm-timeout: 500ms\nkey-refresh-interval: 0\nsocket-mode: '0660'\nno-session-key-copies: true\n")
write("config_fuzz", "unknown_key", "pkcs11-uri: x\npin: 1234\n")
write("config_fuzz", "not_a_map", "- a\n- b\n")
write("config_fuzz", "nested", "pkcs11-uri: {a: [1, 2]}\nlog-level: debug\n")
write("config_fuzz", "both_backends", "pkcs11-uri: p\ntpm-key-dir: /d\nshutdown-grace: 1h\n")

# KMS v2 handlers: call byte + protobuf request
write("kms_v2_fuzz", "status", b"\x00")
write("kms_v2_fuzz", "encrypt_seed", b"\x01" + field(1, seed) + field(2, "uid-1"))
write("kms_v2_fuzz", "decrypt_real", b"\x02" + field(1, envelope(3, seed)) + field(2, "uid-2") + field(3, key_id(3)))
write("kms_v2_fuzz", "decrypt_old_version", b"\x02" + field(1, envelope(1, b"old seed")) + field(3, key_id(1)))
write("kms_v2_fuzz", "decrypt_wrong_key_id", b"\x02" + field(1, envelope(2, seed)) + field(3, key_id(3)))
write("kms_v2_fuzz", "decrypt_annotations", b"\x02" + field(1, envelope(3, seed)) + field(3, key_id(3))
      + field(4, field(1, "a.example.com") + field(2, b"v")))
write("kms_v2_fuzz", "tamper", b"\x03" + field(1, seed) + field(2, b"\x20\x01\x80"))

# KMS v1beta1 handlers
write("kms_v1beta1_fuzz", "version", b"\x00" + field(1, "v1beta1"))
write("kms_v1beta1_fuzz", "version_other", b"\x00" + field(1, "v2"))
write("kms_v1beta1_fuzz", "encrypt", b"\x01" + field(1, "v1beta1") + field(2, seed))
write("kms_v1beta1_fuzz", "decrypt_real", b"\x02" + field(1, "v1beta1") + field(2, envelope(2, seed)))
write("kms_v1beta1_fuzz", "decrypt_unknown_version", b"\x02" + field(2, header(7) + b"z" * 40))
write("kms_v1beta1_fuzz", "tamper", b"\x03" + field(1, b"\x0b\xff") + field(2, seed))
