"""The wire protocol: frames encoded and decoded (pure), every message declared once."""

from rtdecode.wire.frames import (
    DTYPES,
    END_TOPIC,
    PROTOCOL,
    VERSION,
    VOLUME_TOPIC,
    Message,
    decode,
    decode_volume,
    encode,
    encode_volume,
    volume_header,
)

__all__ = [
    "DTYPES",
    "END_TOPIC",
    "PROTOCOL",
    "VERSION",
    "VOLUME_TOPIC",
    "Message",
    "decode",
    "decode_volume",
    "encode",
    "encode_volume",
    "volume_header",
]
