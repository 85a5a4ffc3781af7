"""The replay's report: JSON for the golden files and tools, text for people."""

from __future__ import annotations

import json
import os
from typing import Any

from alg.replay.engine import Report


def as_dict(report: Report) -> dict[str, Any]:
    return {
        "capture": os.path.basename(report.capture),
        "mode": {k: v for k, v in report.mode.items() if v},
        "frames": report.frames,
        "control_packets": report.control_packets,
        "changed": report.changed,
        "held": report.held,
        "dropped": report.dropped,
        "other_packets": report.other,
        "not_inspected": dict(sorted(report.not_inspected.items())),
        "roundtrip": {
            "checked": report.roundtrip_checked,
            "mismatched": report.roundtrip_mismatched,
        },
        "sessions": [report.sessions[k] for k in sorted(report.sessions)],
        "counters": report.counters,
    }


def as_json(report: Report) -> str:
    return json.dumps(as_dict(report), indent=1, sort_keys=False) + "\n"


def as_text(report: Report) -> str:
    d = as_dict(report)
    mode = ", ".join(f"{k.replace('_', ' ')} {' '.join(v)}" for k, v in d["mode"].items())
    lines = [f"capture {d['capture']}: {mode or 'no NAT'}"]
    for s in d["sessions"]:
        who = f"{s.get('client', '?')} -> {s.get('server', '?')}" if s["id"] else "(no session)"
        lines.append(f"session {s['id']}  {who}")
        for e in s["events"]:
            reason = f" [{e['reason']}]" if "reason" in e else ""
            lines.append(f"  #{e['frame']:<6} {e['kind']}{reason}: {e['message']}")
            if "before" in e and e["kind"] in ("rewrite", "refusal"):
                lines.append(f"  {'':7} before: {e['before']}")
            if "after" in e:
                lines.append(f"  {'':7} after:  {e['after']}")
    rt = d["roundtrip"]
    lines.append(
        f"frames {d['frames']}, control packets {d['control_packets']}, changed {d['changed']},"
        f" held {d['held']}, dropped {d['dropped']}; acks checked by round trip {rt['checked']},"
        f" mismatched {rt['mismatched']}"
    )
    if d["not_inspected"]:
        why = ", ".join(f"{k} x{v}" for k, v in d["not_inspected"].items())
        lines.append(f"not inspected: {why} (a router reassembles fragments before the queue)")
    counters = ", ".join(f"{k} {v}" for k, v in d["counters"].items())
    lines.append(f"counters: {counters or 'none'}")
    return "\n".join(lines) + "\n"
