"""`vio status` for people: the daemon's status JSON as aligned tables.

Groups this module knows (disks, switches, ports) get their own tables; a
group added by another kind (ds, vhost, ...) is shown generically, one line
per service with its scalar fields, so a new kind shows up without changes here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def render(status: dict[str, Any]) -> str:
    daemon = status["daemon"]
    out = [f"daemon: pid {daemon['pid']}, up {daemon['uptime']}s, config {daemon['config']}, control {daemon['control_socket']}"]
    domains = status.get("domains", [])
    if domains:
        out += section("DOMAINS", ["NAME", "SERVICES", "CHANNELS"],
                       [[d["name"], " ".join(d["services"]) or "-", str(len(d["channels"]))] for d in domains])
        rows = [[d["name"], f"{c['kind']}:{c['service']}", f"{c['ldc_state']} {c['ldc_version'] or ''}".strip(),
                 f"{c['vio_phase']} {c['vio_version'] or ''}".strip(), c.get("peer_mac") or "-"]
                for d in domains for c in d["channels"]]
        if rows:
            out += section("CHANNELS", ["DOMAIN", "SERVICE", "LDC", "VIO", "PEER MAC"], rows)
    services = status.get("services", {})
    for group, entries in services.items():
        renderer = RENDERERS.get(group, _generic)
        out += renderer(group, entries)
    return "\n".join(out) + "\n"


def _disks(group: str, entries: list[dict[str, Any]]) -> list[str]:
    rows = []
    for d in entries:
        c = d["counters"]
        rows.append([d["name"], d["domain"] or "-", d["path"], human(d["size_bytes"]),
                     "ro" if d["read_only"] else "rw", d["cache"], d.get("transport", "vds"), str(len(d["channels"]) + int(d.get("connected", False))),
                     str(c["reads"]), human(c["read_bytes"]), str(c["writes"]), human(c["written_bytes"]),
                     str(c["flushes"]), str(c["errors"])])
    return section("DISKS", ["NAME", "DOMAIN", "PATH", "SIZE", "MODE", "CACHE", "TRANSPORT", "CLIENTS",
                             "READS", "READ", "WRITES", "WRITTEN", "FLUSHES", "ERRORS"], rows)


def _switches(group: str, entries: list[dict[str, Any]]) -> list[str]:
    out: list[str] = []
    for s in entries:
        uplink = s["uplink"]
        where = "no uplink" if uplink is None else (
            f"uplink {uplink['tap']}" + (f" on bridge {uplink['bridge']}" + (" (ours)" if uplink["created_bridge"] else "")
                                         if uplink["bridge"] else ""))
        stats = s["stats"]
        heading = (f"SWITCH {s['name']}: mac {s['mac']}, mtu {s['mtu']}, {where}; "
                   f"learned {stats['learned']}, flooded {stats['flooded']}, moves {stats['moves']}, aged {stats['aged']}")
        out += ["", heading]
        rows = []
        for p in s["ports"]:
            c = p["counters"]
            drops = ",".join(f"{k}={v}" for k, v in sorted(c["drops"].items())) or "0"
            rows.append([p["name"], "uplink" if p["uplink"] else "port", str(p["pvid"]),
                         ",".join(map(str, p["vlans"])) or "-", str(c["rx_frames"]), human(c["rx_bytes"]),
                         str(c["tx_frames"]), human(c["tx_bytes"]), drops])
        out += indent(table(["PORT", "ROLE", "PVID", "VLANS", "RX", "RX BYTES", "TX", "TX BYTES", "DROPS"], rows))
        fdb = [[e["mac"], str(e["vlan"]), p["name"], f"{e['age']}s"] for p in s["ports"] for e in p["fdb"]]
        if fdb:
            out += indent(["", *table(["MAC", "VLAN", "PORT", "AGE"], fdb)])
    return out


def _ports(group: str, entries: list[dict[str, Any]]) -> list[str]:
    rows = []
    for p in entries:
        channel = p["channels"][0] if p["channels"] else None
        rows.append([p["name"], p.get("switch", "-"), p["domain"] or "-", p["socket"],
                     "yes" if channel or p.get("connected") else "no", (channel or {}).get("vio_version") or "-",
                     (channel or {}).get("peer_mac") or "-", str(p.get("connections", 0))])
    return section("PORTS", ["NAME", "SWITCH", "DOMAIN", "SOCKET", "CONNECTED", "VNET", "PEER MAC", "CONNECTIONS"], rows)


def _generic(group: str, entries: list[dict[str, Any]]) -> list[str]:
    rows = []
    for e in entries:
        details = ", ".join(f"{k} {v}" for k, v in e.items()
                            if k not in ("kind", "name", "domain") and isinstance(v, (str, int, float)) and v is not None)
        rows.append([e["name"], e["kind"], e.get("domain") or "-", details])
    return section(group.upper(), ["NAME", "KIND", "DOMAIN", "DETAILS"], rows)


RENDERERS = {"disks": _disks, "switches": _switches, "ports": _ports}


def section(title: str, headers: Sequence[str], rows: list[list[str]]) -> list[str]:
    return ["", title, *indent(table(headers, rows))]


def table(headers: Sequence[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return ["(none)"]
    widths = [max(len(str(r[i])) for r in [list(headers), *rows]) for i in range(len(headers))]
    return ["  ".join(str(cell).ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in [list(headers), *rows]]


def indent(lines: list[str]) -> list[str]:
    return [f"  {line}" if line else line for line in lines]


def human(count: int | None) -> str:
    if count is None:
        return "-"
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f}{unit}" if unit == "B" else f"{value:.1f}{unit}"
        value /= 1024
    return f"{value:.1f}TiB"
