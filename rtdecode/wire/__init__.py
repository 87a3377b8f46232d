"""The wire protocol: frames encoded and decoded (pure), every message declared once."""

from rtdecode.wire.frames import DTYPES, END_TOPIC, PROTOCOL, VERSION, VOLUME_TOPIC, Message, decode, encode
from rtdecode.wire.inputs import decode_volume, encode_volume
from rtdecode.wire.messages import RESULTS, WireMessage, parse

__all__ = [
    "DTYPES",
    "END_TOPIC",
    "PROTOCOL",
    "RESULTS",
    "VERSION",
    "VOLUME_TOPIC",
    "Message",
    "WireMessage",
    "decode",
    "decode_volume",
    "encode",
    "encode_volume",
    "parse",
]
