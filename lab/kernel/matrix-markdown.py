#!/usr/bin/env python3
"""The README's kernel matrix from lab/kernel-matrix's JSON lines on stdin: the first line is
this machine's selection (schema only), then one line per guest kernel. Prints the matrix
table and the table of each event's site on every kernel."""
import json
import sys

rows = [json.loads(line) for line in sys.stdin if line.strip()]
host, guests = rows[0], rows[1:]

print("| kernel | exact | approximate | unavailable | scenarios passed | tcp_fragment calls / TCP_SENDPACKET (wire-tcp) | wire packets over 1500 bytes / all, largest (wire-offload) |")
print("|---|---|---|---|---|---|---|")
for o in [host] + guests:
    p, s, f = o["placements"], o["scenarios"], o["figures"]
    passed = f'{sum(1 for x in s if x["passed"] and not x["violated"])} of {len(s)}' if s else "(lab/test)"
    tf = f.get("tcp_fragment") or {}
    frag = f'{tf.get("calls")} / {tf.get("sendpackets")}' if tf.get("visible") else "not visible" if s else ""
    o_ = f.get("offload")
    split = f'{o_["over_mtu"]} / {o_["frames"]}, {o_["largest"]} bytes' if o_ else ""
    print(f'| {o["kernel"]} ({o["name"]}) | {p.get("exact", 0)} | {p.get("approximate", 0)} | {p.get("unavailable", 0)} | {passed} | {frag} | {split} |')

print()
cols = [host] + guests
print("| event | " + " | ".join(o["kernel"] for o in cols) + " |")
print("|---|" + "---|" * len(cols))


def cell(o, name):
    placement, site = o["sites"].get(name, ["–", None])
    return f"{placement}: `{site}`" if site else placement


for name in host["sites"]:
    print(f"| {name} | " + " | ".join(cell(o, name) for o in cols) + " |")
