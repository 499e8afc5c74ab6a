"""A catalogue of malformed segment messages, each with the reason the worker must give.
Shared by the unit tests of the codec and the live dead-letter test."""
import base64
import json
import time

import numpy as np

from stream.schema import encode_frames, encode_segment

WIDTHS = {"audio": 5, "visual": 20}
MAX_FRAMES = 12


def valid(stream="s", segment="s/1", text="the movie was great", t=None, frames=4, widths=WIDTHS) -> dict:
    rng = np.random.default_rng(abs(hash(segment)) % 2**32)
    return {"v": 1, "stream_id": stream, "segment_id": segment, "event_time": t or time.time() - 5, "text": text,
            "audio": encode_frames(rng.normal(size=(frames, widths["audio"]))),
            "visual": encode_frames(rng.normal(size=(frames, widths["visual"])))}


def valid_bytes(**kw) -> bytes:
    m = valid(**kw)
    return json.dumps(m).encode()


def _with(tag, **changes):
    m = valid(segment=f"bad/{tag}")
    for k, v in changes.items():
        if v is _DROP:
            m.pop(k)
        else:
            m[k] = v
    return json.dumps(m).encode()


_DROP = object()


def _frames(shape, data=None):
    return {"shape": list(shape), "f32": data if data is not None else
            base64.b64encode(np.zeros(shape, "<f4").tobytes()).decode()}


def catalogue(max_frames: int = MAX_FRAMES) -> list[tuple[str, bytes, str]]:
    """(name, message bytes, expected reason) for a model that takes at most max_frames frames."""
    nan = np.zeros((3, 5), "<f4")
    nan[1, 2] = np.nan
    inf = np.zeros((3, 20), "<f4")
    inf[0, 0] = np.inf
    return [
        ("not utf-8", b"\xff\xfe\x00garbage", "undecodable"),
        ("not json", b"{this is not json", "undecodable"),
        ("empty", b"", "undecodable"),
        ("json NaN constant", valid_bytes(segment="bad/nanconst").replace(b'"event_time": ', b'"event_time": NaN, "x": '),
         "undecodable"),
        ("array", b"[1, 2, 3]", "not_an_object"),
        ("string", b'"segment"', "not_an_object"),
        ("missing stream_id", _with("ms", stream_id=_DROP), "missing_field"),
        ("missing text", _with("mx", text=_DROP), "missing_field"),
        ("extra field", _with("ef", colour="blue"), "extra_field"),
        ("version 2", _with("v2", v=2), "bad_version"),
        ("stream_id number", _with("sn", stream_id=42), "wrong_type"),
        ("stream_id empty", _with("se", stream_id=""), "bad_id"),
        ("stream_id with spaces", _with("ss", stream_id="my stream"), "bad_id"),
        ("stream_id too long", _with("sl", stream_id="x" * 129), "bad_id"),
        ("segment_id null", _with("sgn", segment_id=None), "wrong_type"),
        ("event_time string", _with("ets", event_time="yesterday"), "wrong_type"),
        ("event_time bool", _with("etb", event_time=True), "wrong_type"),
        ("event_time in ms", _with("etm", event_time=time.time() * 1000), "bad_timestamp"),
        ("event_time zero", _with("etz", event_time=0), "bad_timestamp"),
        ("event_time future", _with("etf", event_time=time.time() + 86400), "bad_timestamp"),
        ("text number", _with("tn", text=7), "wrong_type"),
        ("text too long", _with("tl", text="a" * 2001), "text_too_long"),
        ("text with NUL", _with("tz", text="a\x00b"), "bad_text"),
        ("audio list", _with("al", audio=[[0.0] * 5]), "wrong_type"),
        ("audio missing f32", _with("am", audio={"shape": [1, 5]}), "bad_frames"),
        ("audio 3-d shape", _with("a3", audio=_frames((1, 1, 5))), "bad_shape"),
        ("audio shape strings", _with("as", audio={"shape": ["1", "5"], "f32": ""}), "bad_shape"),
        ("audio wrong width", _with("aw", audio=_frames((3, 6))), "wrong_width"),
        ("visual wrong width", _with("vw", visual=_frames((3, 19))), "wrong_width"),
        ("too many frames", _with("tm", audio=_frames((max_frames + 1, 5))), "too_many_frames"),
        ("negative frames", _with("nf", visual={"shape": [-1, 20], "f32": ""}), "bad_shape"),
        ("bad base64", _with("b64", audio={"shape": [1, 5], "f32": "***not base64***"}), "bad_base64"),
        ("size mismatch", _with("sm", audio=_frames((3, 5), base64.b64encode(b"\0" * 8).decode())), "size_mismatch"),
        ("f32 not a string", _with("fn", audio={"shape": [1, 5], "f32": [0, 0, 0, 0, 0]}), "wrong_type"),
        ("NaN in audio", _with("na", audio=_frames((3, 5), base64.b64encode(nan.tobytes()).decode())), "non_finite"),
        ("Inf in visual", _with("iv", visual=_frames((3, 20), base64.b64encode(inf.tobytes()).decode())),
         "non_finite"),
        ("audio value 3e38", _with("ab", audio=_frames((3, 5), base64.b64encode(
            np.full((3, 5), 3e38, "<f4").tobytes()).decode())), "out_of_range"),
        ("meta list", _with("ml", meta=[1, 2]), "wrong_type"),
        ("meta too large", _with("mt", meta={"blob": "x" * 5000}), "meta_too_large"),
    ] + hostile(max_frames)


def hostile(max_frames: int = MAX_FRAMES) -> list[tuple[str, bytes, str]]:
    """Messages that once escaped the decoder as exceptions or were read ambiguously (issue 12)."""
    good = valid_bytes(segment="bad/hostile")
    return [
        ("nested 10000 deep", b'{"meta": ' + b"[" * 10000 + b"]" * 10000 + b"}", "too_deep"),
        ("meta nested 40 deep", _with("md", meta={"a": json.loads("[" * 40 + "]" * 40)}), "too_deep"),
        ("lone surrogate in text", good.replace(b'"text": "the movie', b'"text": "\\ud800the movie'), "bad_text"),
        ("lone surrogate in meta", _with("lsm", meta={"k": "\ud800"}), "bad_text"),
        ("event_time of 400 digits", _with("eth", event_time=10**400), "bad_timestamp"),
        ("duplicate key", good.replace(b'"text": ', b'"text": "first", "text": '), "duplicate_key"),
        ("duplicate key in frames", _with("dkf").replace(b'"shape": ', b'"shape": [1, 5], "shape": ', 1),
         "duplicate_key"),
        ("stream_id ..", _with("dd", stream_id=".."), "bad_id"),
        ("stream_id ../../x", _with("ddx", stream_id="../../x"), "bad_id"),
        ("stream_id /etc/x", _with("abs", stream_id="/etc/x"), "bad_id"),
        ("stream_id a//b", _with("dsl", stream_id="a//b"), "bad_id"),
        ("segment_id x/./y", _with("dot", segment_id="x/./y"), "bad_id"),
        ("segment_id trailing /", _with("ts", segment_id="x/"), "bad_id"),
    ]


def conflicting_pair(stream="bad", segment="bad/conflict") -> tuple[bytes, bytes]:
    """Two messages with one segment_id and different content: the first is valid, the second
    must be refused as a conflicting duplicate."""
    first = encode_segment(stream, segment, time.time() - 3, "first version", np.zeros((2, 5)), np.zeros((2, 20)))
    second = encode_segment(stream, segment, time.time() - 3, "edited version", np.zeros((2, 5)), np.zeros((2, 20)))
    return first, second
