#!/usr/bin/env python3
"""Writes the small GLB objects of pipelines/offline.toml (standard library only).

Each object is one mesh with flat normals and a plain base colour: boxes, a sphere, a
cylinder, a cone and a torus. The files are committed; this script is how they were made:

    python3 pipelines/offline/make_objects.py
"""
import json
import math
import os
import struct

HERE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "objects")


def glb(positions, triangles, colour):
    # Flat shading: every triangle gets its own three vertices and its face normal.
    pos, nrm = [], []
    for a, b, c in triangles:
        pa, pb, pc = positions[a], positions[b], positions[c]
        u = [pb[i] - pa[i] for i in range(3)]
        v = [pc[i] - pa[i] for i in range(3)]
        n = [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]]
        length = math.sqrt(sum(x * x for x in n)) or 1.0
        n = [x / length for x in n]
        for p in (pa, pb, pc):
            pos.append(p)
            nrm.append(n)
    count = len(pos)
    bin_pos = b"".join(struct.pack("<3f", *p) for p in pos)
    bin_nrm = b"".join(struct.pack("<3f", *n) for n in nrm)
    data = bin_pos + bin_nrm
    lo = [min(p[i] for p in pos) for i in range(3)]
    hi = [max(p[i] for p in pos) for i in range(3)]
    doc = {
        "asset": {"version": "2.0", "generator": "mvc pipelines/offline/make_objects.py"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "NORMAL": 1}, "material": 0}]}],
        "materials": [{"pbrMetallicRoughness": {"baseColorFactor": colour + [1.0],
                                                 "metallicFactor": 0.0, "roughnessFactor": 0.8}}],
        "buffers": [{"byteLength": len(data)}],
        "bufferViews": [
            {"buffer": 0, "byteOffset": 0, "byteLength": len(bin_pos)},
            {"buffer": 0, "byteOffset": len(bin_pos), "byteLength": len(bin_nrm)},
        ],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": count, "type": "VEC3", "min": lo, "max": hi},
            {"bufferView": 1, "componentType": 5126, "count": count, "type": "VEC3"},
        ],
    }
    js = json.dumps(doc, separators=(",", ":")).encode()
    js += b" " * (-len(js) % 4)
    data += b"\0" * (-len(data) % 4)
    body = struct.pack("<I4s", len(js), b"JSON") + js + struct.pack("<I4s", len(data), b"BIN\0") + data
    return struct.pack("<4sII", b"glTF", 2, 12 + len(body)) + body


def box(x, y, z):
    p = [(sx * x, sy * y, sz * z) for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)]
    quads = [(0, 1, 3, 2), (4, 6, 7, 5), (0, 4, 5, 1), (2, 3, 7, 6), (0, 2, 6, 4), (1, 5, 7, 3)]
    return p, [t for a, b, c, d in quads for t in ((a, b, c), (a, c, d))]


def revolve(profile, segments=24):
    """A surface of revolution around +Z through the (radius, z) points of `profile`."""
    p = []
    for r, z in profile:
        for k in range(segments):
            a = 2 * math.pi * k / segments
            p.append((r * math.cos(a), r * math.sin(a), z))
    t = []
    for i in range(len(profile) - 1):
        for k in range(segments):
            a, b = i * segments + k, i * segments + (k + 1) % segments
            c, d = a + segments, b + segments
            t += [(a, b, d), (a, d, c)]
    return p, t


def sphere(r, rings=12):
    return revolve([(r * math.sin(math.pi * i / rings), -r * math.cos(math.pi * i / rings))
                    for i in range(rings + 1)])


def torus(big, small, rings=16):
    p, t = [], []
    for i in range(rings):
        a = 2 * math.pi * i / rings
        for k in range(rings):
            b = 2 * math.pi * k / rings
            r = big + small * math.cos(b)
            p.append((r * math.cos(a), r * math.sin(a), small * math.sin(b)))
    for i in range(rings):
        for k in range(rings):
            a, b = i * rings + k, i * rings + (k + 1) % rings
            c, d = ((i + 1) % rings) * rings + k, ((i + 1) % rings) * rings + (k + 1) % rings
            t += [(a, c, d), (a, d, b)]
    return p, t


OBJECTS = {
    "crate": (box(0.5, 0.5, 0.5), [0.6, 0.4, 0.2]),
    "carton": (box(0.3, 0.3, 0.8), [0.9, 0.9, 0.85]),
    "plate": (revolve([(0.0, 0.0), (0.8, 0.0), (0.9, 0.08), (0.0, 0.08)]), [0.95, 0.95, 0.95]),
    "orange": (sphere(0.5), [1.0, 0.55, 0.05]),
    "cup": (revolve([(0.0, 0.0), (0.35, 0.0), (0.42, 0.7), (0.38, 0.7), (0.3, 0.05), (0.0, 0.05)]), [0.3, 0.15, 0.05]),
    "cone": (revolve([(0.0, 0.0), (0.4, 0.0), (0.0, 1.0)]), [0.95, 0.85, 0.5]),
    "donut": (torus(0.5, 0.2), [0.85, 0.5, 0.6]),
    "bar": (box(0.8, 0.2, 0.1), [0.35, 0.2, 0.1]),
}

if __name__ == "__main__":
    os.makedirs(HERE, exist_ok=True)
    for name, ((positions, triangles), colour) in OBJECTS.items():
        with open(os.path.join(HERE, f"{name}.glb"), "wb") as f:
            f.write(glb(positions, triangles, colour))
        print(name, len(triangles), "triangles")
