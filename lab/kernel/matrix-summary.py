#!/usr/bin/env python3
"""Summarizes one guest's kernel-matrix run (run by lab/kernel-matrix inside the guest).

Reads DIR/schema.json (klab schema --json), DIR/results/*/run.json and verdicts.json, and
prints one JSON object: the kernel, how many events each placement has, every scenario with
its outcome and verdicts, and the figures that differ between kernels (tcp_fragment calls,
super-packets in offload mode, segmentation, ACKs per freed frame)."""
import json
import os
import struct
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        return {"error": f"{path}: {e}"}


def frame_lengths(path):
    """Each packet's length as it crossed the wire (the pcap records' original length)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    lengths, at = [], 24
    while at + 16 <= len(data):
        _, _, kept, length = struct.unpack_from("<IIII", data, at)
        lengths.append(length)
        at += 16 + kept
    return lengths


def main(folder, scenario_files):
    schema = load(os.path.join(folder, "schema.json"))
    events = schema.get("events", [])
    placements = {}
    for e in events:
        placements.setdefault(e.get("placement", "?"), []).append(e["name"])
    out = {
        "kernel": schema.get("kernel"),
        "schema_error": schema.get("error"),
        "placements": {k: len(v) for k, v in placements.items()},
        "unavailable": sorted(placements.get("unavailable", [])),
        "approximate": sorted(placements.get("approximate", [])),
        "sites": {e["name"]: [e.get("placement"), e.get("site")] for e in events},
        "scenarios": [],
        "figures": {},
    }
    for file in scenario_files:
        name = os.path.splitext(os.path.basename(file))[0]
        d = os.path.join(folder, "results", name)
        run = load(os.path.join(d, "run.json"))
        outcome = run.get("outcome") or {}
        verdicts = load(os.path.join(d, "verdicts.json"))
        rows = verdicts.get("verdicts", [])
        started, stopped = outcome.get("started_ns"), (run.get("capture") or {}).get("stopped_ns")
        out["scenarios"].append({
            "name": name,
            "passed": outcome.get("passed") is True,
            "failures": outcome.get("failures", [run.get("error")] if "error" in run else ["no outcome"]),
            "events": outcome.get("events_emitted", 0),
            "judged": sum(r.get("judged", 0) for r in rows),
            "violated": [f'{r["event"]} at {r.get("site")}: {r["rule"]} ({r["judged"] - r["held"]} of {r["judged"]})'
                         for r in rows if r.get("judged") != r.get("held")],
            "seconds": round((stopped - started) / 1e9, 1) if started and stopped else None,
        })
        figures = verdicts.get("figures") or {}
        join = verdicts.get("join") or {}
        if name == "wire-tcp":
            out["figures"]["tcp_fragment"] = figures.get("tcp_fragment")
            out["figures"]["segmentation"] = figures.get("segmentation")
        if name == "wire-offload":
            # Offload mode: TSO/GSO segments cross the wire whole, so the capture's packets
            # longer than the 1500-byte MTU are the super-packets.
            lengths = frame_lengths(os.path.join(d, "capture.pcap"))
            out["figures"]["offload"] = {"frames": len(lengths), "over_mtu": sum(1 for n in lengths if n > 1500),
                                         "largest": max(lengths, default=0)}
        if name == "tcp-receive-window":
            out["figures"]["acks_per_freed_frame"] = figures.get("acks_per_freed_frame")
    json.dump(out, sys.stdout, sort_keys=True)
    print()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:])
