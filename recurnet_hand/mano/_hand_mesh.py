"""Procedural hand tessellation with MANO's vertex and face counts.

The palm is the surface of a lattice box (``nx x ny x nz`` cells along length,
thickness and width) bent into a rounded slab. Holes are cut into it by
dropping quads: one ``6 x 2`` patch on the proximal face (the open wrist, a
16-vertex loop as in MANO), four ``2 x 2`` patches covering the distal face
(one per finger, 8-vertex loops) and a ``3 x 2`` patch on the radial side (the
thumb, a 10-vertex loop). Each finger is a tube of elliptic rings grown from its
hole and closed by a fan around a single fingertip vertex.

With ``nx = nz = 8``, ``ny = 2`` the palm keeps 183 vertices; tubes of
15/16/15/14 rings of 8 (index, middle, ring, pinky) and 11 rings of 10 (thumb)
bring the total to 778. The surface is a disc (one boundary loop, the wrist),
so Euler's formula fixes the face count at ``2 V - 2 - 16 = 1538``.

Right hand, metres: wrist centre at the origin, fingers along +x, palm facing
-y (back of the hand +y), thumb on the -z side.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

PALM_CELLS = (8, 2, 8)  # (length x, thickness y, width z)
WRIST_PATCH = (1, 7)  # lattice columns k of the wrist opening on the proximal face
THUMB_PATCH = (1, 4)  # lattice rows i of the thumb opening on the k = 0 side


@dataclass(frozen=True)
class FingerSpec:
    """Shape of one finger tube (right hand, metres).

    Attributes:
        lengths: axis lengths base->joint 2, joint 2->joint 3, joint 3->tip.
        radii: half-width at the base and before the fingertip cap.
        flatness: half-thickness / half-width of the cross-section.
        rings: rings per segment; the last ring of segments 1 and 2 sits on the joint.
        ring_size: vertices per ring (8 for fingers, 10 for the thumb).
        spread: angle (radians) of the axis away from +x toward the thumb (-z).
    """

    lengths: tuple[float, float, float]
    radii: tuple[float, float]
    flatness: float
    rings: tuple[int, int, int]
    ring_size: int
    spread: float = 0.0


@dataclass(frozen=True)
class PalmSpec:
    """Shape of the palm slab (right hand, metres).

    Attributes:
        knuckle_x: x of the distal face at the centre of each finger hole (index..pinky).
        width: palm width at the wrist face and at the distal face.
        thickness: palm thickness at the wrist face and at the distal face.
        web: how far the web vertices between two fingers sit beyond the knuckle line.
        cup: upward bow of the cross-section centre (cupped palm, arched back).
        thumb_dir: direction of the straight part of the thumb.
        thumb_base_dir: direction the thumb leaves the palm side with.
    """

    knuckle_x: tuple[float, float, float, float]
    width: tuple[float, float]
    thickness: tuple[float, float]
    web: float
    cup: float
    thumb_dir: tuple[float, float, float]
    thumb_base_dir: tuple[float, float, float]


@dataclass(frozen=True)
class FingerGeometry:
    """Where a built finger tube lies.

    Attributes:
        base: centre of the hole loop, the first joint ``(3,)``.
        base_dir: axis direction where the tube leaves the palm ``(3,)``.
        joints: positions of joints 2 and 3 and of the tip ``(3, 3)``.
        joint_arcs: arc length of joints 2, 3 and the tip along the axis ``(3,)``.
        base_ring / joint_rings: vertex ids of the hole loop and of the rings at joints 2, 3.
        tip: fingertip vertex id.
    """

    base: np.ndarray
    base_dir: np.ndarray
    joints: np.ndarray
    joint_arcs: np.ndarray
    base_ring: np.ndarray
    joint_rings: tuple[np.ndarray, np.ndarray]
    tip: int


@dataclass(frozen=True)
class HandMesh:
    """A built hand surface with per-vertex bookkeeping for rigging.

    Attributes:
        vertices: ``(V, 3)`` metres. faces: ``(F, 3)`` outward-oriented triangles.
        part: ``(V,)`` -1 for the palm, else the finger index (index, middle, ring, pinky, thumb).
        arc: ``(V,)`` arc length along the finger axis (0 on the palm).
        axis_point: ``(V, 3)`` the axis point of each tube vertex's ring (the vertex itself on the palm).
        wrist_ring: ids of the 16-vertex wrist loop. fingers: one :class:`FingerGeometry` per finger.
    """

    vertices: np.ndarray
    faces: np.ndarray
    part: np.ndarray
    arc: np.ndarray
    axis_point: np.ndarray
    wrist_ring: np.ndarray
    fingers: tuple[FingerGeometry, ...]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _rotate_onto(vec: np.ndarray, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Apply the smallest rotation taking unit ``src`` to unit ``dst`` (parallel transport step)."""
    axis = np.cross(src, dst)
    s, c = np.linalg.norm(axis), float(np.dot(src, dst))
    if s < 1e-12:
        return vec
    k = axis / s
    return vec * c + np.cross(k, vec) * s + k * np.dot(k, vec) * (1.0 - c)


class _Builder:
    """Accumulates vertices (with their bookkeeping) and triangles."""

    def __init__(self) -> None:
        self.pos: list[np.ndarray] = []
        self.part: list[int] = []
        self.arc: list[float] = []
        self.axis: list[np.ndarray] = []
        self.tris: list[tuple[int, int, int]] = []

    def add(self, p: np.ndarray, part: int = -1, arc: float = 0.0, axis: np.ndarray | None = None) -> int:
        self.pos.append(np.asarray(p, dtype=np.float64))
        self.part.append(part)
        self.arc.append(arc)
        self.axis.append(self.pos[-1] if axis is None else np.asarray(axis, dtype=np.float64))
        return len(self.pos) - 1

    def quad(self, a: int, b: int, c: int, d: int) -> None:
        """Counter-clockwise quad ``a b c d``, split along ``a c``.

        The split never depends on vertex positions, so every proportion (seed) shares one
        face array, as MANO models do.
        """
        self.tris += [(a, b, c), (a, c, d)]


# --------------------------------------------------------------------------- palm


def _palm_point(i: int, j: int, k: int, palm: PalmSpec) -> np.ndarray:
    nx, ny, nz = PALM_CELLS
    u, a, b = i / nx, 2.0 * k / nz - 1.0, 2.0 * j / ny - 1.0
    # Round the rectangular cross-section towards a superellipse (exponent 3).
    inf_norm = max(abs(a), abs(b))
    if inf_norm > 0:
        scale = inf_norm / (abs(a) ** 3 + abs(b) ** 3) ** (1.0 / 3.0)
        a, b = a * scale, b * scale
    width = palm.width[0] + (palm.width[1] - palm.width[0]) * u
    thick = palm.thickness[0] + (palm.thickness[1] - palm.thickness[0]) * u
    centres = np.array([-0.75, -0.25, 0.25, 0.75])  # column parameter of the finger hole centres
    x = u * np.interp(2.0 * k / nz - 1.0, centres, palm.knuckle_x)
    if i == nx and k in (2, 4, 6):
        x += palm.web
    y = b * thick / 2 + palm.cup * (1.0 - a * a)
    return np.array([x, y, a * width / 2])


def _patch_loop(fixed_axis: int, fixed: int, p_range: tuple[int, int], q_range: tuple[int, int]) -> list[tuple]:
    """Lattice points around a rectangular patch of one box face, in loop order."""
    (p0, p1), (q0, q1) = p_range, q_range
    pq = [(p, q0) for p in range(p0, p1)] + [(p1, q) for q in range(q0, q1)]
    pq += [(p, q1) for p in range(p1, p0, -1)] + [(p0, q) for q in range(q1, q0, -1)]
    p_axis, q_axis = (fixed_axis + 1) % 3, (fixed_axis + 2) % 3
    loop = []
    for p, q in pq:
        ijk = [0, 0, 0]
        ijk[fixed_axis], ijk[p_axis], ijk[q_axis] = fixed, p, q
        loop.append(tuple(ijk))
    return loop


def _build_palm(b: _Builder, palm: PalmSpec) -> tuple[dict, list[tuple[int, int, int, int]]]:
    """Add the palm lattice; return the lattice->id map and the dropped patches."""
    nx, ny, nz = PALM_CELLS
    dims = (nx, ny, nz)
    # Holes as (face axis, face index, p range, q range), p/q the face's in-plane axes in cyclic order.
    holes = [(0, 0, (0, ny), WRIST_PATCH)]  # proximal face, axes (y, z)
    holes += [(0, nx, (0, ny), (2 * f, 2 * f + 2)) for f in range(4)]  # distal face
    holes += [(2, 0, THUMB_PATCH, (0, ny))]  # radial side face, axes (x, y)

    def in_hole(axis: int, fixed: int, p: int, q: int) -> bool:
        return any(
            h[0] == axis and h[1] == fixed and h[2][0] <= p < h[2][1] and h[3][0] <= q < h[3][1] for h in holes
        )

    ids: dict[tuple[int, int, int], int] = {}
    quads: list[tuple[int, ...]] = []
    for axis in range(3):
        p_axis, q_axis = (axis + 1) % 3, (axis + 2) % 3
        for fixed in (0, dims[axis]):
            for p in range(dims[p_axis]):
                for q in range(dims[q_axis]):
                    if in_hole(axis, fixed, p, q):
                        continue
                    corners = []
                    for dp, dq in ((0, 0), (1, 0), (1, 1), (0, 1)):
                        ijk = [0, 0, 0]
                        ijk[axis], ijk[p_axis], ijk[q_axis] = fixed, p + dp, q + dq
                        corners.append(tuple(ijk))
                    # Counter-clockwise seen from outside: reverse on the low face.
                    quads.append(tuple(corners if fixed else corners[::-1]))
    # Hole loops include web points between two finger holes that no palm quad touches.
    points = [ijk for quad in quads for ijk in quad] + [ijk for h in holes for ijk in _patch_loop(*h)]
    for ijk in points:
        if ijk not in ids:
            ids[ijk] = b.add(_palm_point(*ijk, palm))
    for quad in quads:
        b.quad(*(ids[ijk] for ijk in quad))
    return ids, holes


# --------------------------------------------------------------------------- fingers


def _ring_arcs(spec: FingerSpec) -> tuple[np.ndarray, np.ndarray]:
    """Arc lengths and half-widths of the rings of one finger (tip vertex excluded)."""
    l1, l2, l3 = spec.lengths
    n1, n2, n3 = spec.rings
    r_base, r_tip = spec.radii
    total = l1 + l2 + l3
    cap_start = total - r_tip
    arcs = [l1 * k / n1 for k in range(1, n1 + 1)]
    arcs += [l1 + l2 * k / n2 for k in range(1, n2 + 1)]
    n_cyl = n3 - 3
    arcs += [l1 + l2 + (cap_start - l1 - l2) * k / n_cyl for k in range(1, n_cyl + 1)]
    radii = [r_base + (r_tip - r_base) * a / cap_start for a in arcs]
    # Hemispherical fingertip: three rings at 35, 60 and 80 degrees of latitude.
    for deg in (35.0, 60.0, 80.0):
        phi = np.deg2rad(deg)
        arcs.append(cap_start + r_tip * np.sin(phi))
        radii.append(r_tip * np.cos(phi))
    return np.array(arcs), np.array(radii)


class _Axis:
    """Finger axis: an optional quadratic Bezier bend of length ``l1``, then a straight line."""

    def __init__(self, base: np.ndarray, base_dir: np.ndarray, direction: np.ndarray, l1: float, bend: bool):
        self.base, self.dir = base, direction
        if not bend:
            self.bend_len, self.bend_end = 0.0, base
            return
        ctrl = base + 0.5 * l1 * base_dir
        end = ctrl + 0.5 * l1 * direction
        u = np.linspace(0.0, 1.0, 401)[:, None]
        pts = (1 - u) ** 2 * base + 2 * u * (1 - u) * ctrl + u**2 * end
        self._pts = pts
        self._cum = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(pts, axis=0), axis=1))])
        self.bend_len, self.bend_end = float(self._cum[-1]), end

    def point(self, s: float) -> np.ndarray:
        if s >= self.bend_len:
            return self.bend_end + (s - self.bend_len) * self.dir
        return np.array([np.interp(s, self._cum, self._pts[:, d]) for d in range(3)])

    def tangent(self, s: float) -> np.ndarray:
        if s >= self.bend_len:
            return self.dir
        h = 1e-5
        return _unit(self.point(min(s + h, self.bend_len)) - self.point(max(s - h, 0.0)))


def _build_finger(
    b: _Builder, part: int, spec: FingerSpec, loop: list[int], base_dir: np.ndarray, direction: np.ndarray
) -> FingerGeometry:
    base = np.mean([b.pos[v] for v in loop], axis=0)
    bend = not np.allclose(base_dir, direction)
    axis = _Axis(base, base_dir, direction, spec.lengths[0], bend)
    # Bent axes reach joint 2 at the end of the bend; straight ones after l1.
    l1 = axis.bend_len if bend else spec.lengths[0]
    scaled = FingerSpec((l1,) + spec.lengths[1:], spec.radii, spec.flatness, spec.rings, spec.ring_size)
    arcs, radii = _ring_arcs(scaled)
    n = spec.ring_size
    if len(loop) != n:
        raise ValueError(f"finger ring_size {n} does not match its palm hole of {len(loop)} vertices")

    # Frame at the base: e1 towards the back of the hand, e2 = t x e1.
    e1 = _unit(np.array([0.0, 1.0, 0.0]) - base_dir * base_dir[1])
    rel = np.array([b.pos[v] for v in loop]) - base
    angles = np.arctan2(rel @ np.cross(base_dir, e1), rel @ e1)
    if np.mean(np.sin(np.diff(np.unwrap(angles)))) < 0:  # make the loop run with increasing angle
        loop, angles = loop[::-1], angles[::-1]
    start = int(np.argmin(np.abs(angles)))
    loop = loop[start:] + loop[:start]
    phi0 = angles[start]

    prev_ring, prev_t = list(loop), base_dir
    rings: dict[float, np.ndarray] = {}
    for s, r in zip(arcs, radii):
        t = axis.tangent(s)
        e1 = _unit(_rotate_onto(e1, prev_t, t))
        e2 = np.cross(t, e1)
        centre = axis.point(s)
        phis = phi0 + 2 * np.pi * np.arange(n) / n
        ring = [
            b.add(centre + r * spec.flatness * np.cos(p) * e1 + r * np.sin(p) * e2, part, float(s), centre)
            for p in phis
        ]
        for j in range(n):
            b.quad(prev_ring[j], prev_ring[(j + 1) % n], ring[(j + 1) % n], ring[j])
        prev_ring, prev_t = ring, t
        rings[float(s)] = np.array(ring)
    total = l1 + spec.lengths[1] + spec.lengths[2]
    tip_pos = axis.point(total)
    tip = b.add(tip_pos, part, total, tip_pos)
    for j in range(n):
        b.tris.append((prev_ring[j], prev_ring[(j + 1) % n], tip))

    joint_arcs = np.array([l1, l1 + spec.lengths[1], total])
    return FingerGeometry(
        base=base,
        base_dir=base_dir,
        joints=np.stack([axis.point(a) for a in joint_arcs]),
        joint_arcs=joint_arcs,
        base_ring=np.array(loop),
        joint_rings=(rings[float(arcs[spec.rings[0] - 1])], rings[float(arcs[sum(spec.rings[:2]) - 1])]),
        tip=tip,
    )


def build_hand_mesh(palm: PalmSpec, fingers: tuple[FingerSpec, ...]) -> HandMesh:
    """Build the right-hand surface from palm and finger specs (index, middle, ring, pinky, thumb).

    Returns:
        The :class:`HandMesh`, with vertices ordered palm first, then each finger.
    """
    b = _Builder()
    ids, holes = _build_palm(b, palm)
    wrist_loop = [ids[p] for p in _patch_loop(*holes[0])]
    geoms = []
    for f, spec in enumerate(fingers):
        loop = [ids[p] for p in _patch_loop(*holes[1 + f])]
        if f < 4:
            direction = np.array([np.cos(spec.spread), 0.0, -np.sin(spec.spread)])
            base_dir = direction
        else:
            direction, base_dir = _unit(np.array(palm.thumb_dir)), _unit(np.array(palm.thumb_base_dir))
        geoms.append(_build_finger(b, f, spec, loop, base_dir, direction))

    # Drop lattice points inside the holes (never used by a face) and renumber.
    faces = np.array(b.tris, dtype=np.int64)
    used = np.zeros(len(b.pos), dtype=bool)
    used[faces.ravel()] = True
    new_id = np.cumsum(used) - 1
    mesh = HandMesh(
        vertices=np.array(b.pos),
        faces=faces,
        part=np.array(b.part),
        arc=np.array(b.arc),
        axis_point=np.array(b.axis),
        wrist_ring=np.array(wrist_loop),
        fingers=tuple(geoms),
    )
    return renumbered(mesh, np.flatnonzero(used), new_id)


def renumbered(mesh: HandMesh, order: np.ndarray, new_id: np.ndarray) -> HandMesh:
    """Keep vertices ``order`` (old ids, in their new order); ``new_id[old]`` gives each kept vertex's new id."""
    fingers = tuple(
        replace(
            g,
            base_ring=new_id[g.base_ring],
            joint_rings=(new_id[g.joint_rings[0]], new_id[g.joint_rings[1]]),
            tip=int(new_id[g.tip]),
        )
        for g in mesh.fingers
    )
    return HandMesh(
        vertices=mesh.vertices[order],
        faces=new_id[mesh.faces],
        part=mesh.part[order],
        arc=mesh.arc[order],
        axis_point=mesh.axis_point[order],
        wrist_ring=new_id[mesh.wrist_ring],
        fingers=fingers,
    )
