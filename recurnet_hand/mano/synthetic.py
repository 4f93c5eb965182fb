"""Procedural MANO-format hand assets, for tests, demos and synthetic images without the licensed model.

:func:`synthetic_mano_assets` builds a right hand (and mirrors it for the left)
with MANO's array shapes, joint order and fingertip vertex ids, so everything
that reads MANO (``smplx.MANO``, :class:`~recurnet_hand.mano.layer.ManoLayer`)
runs on it unchanged. It is a plausible hand, not a statistical model: shape and
pose spaces are hand-designed.

Right-hand rest pose, metres: wrist at the origin, fingers along +x, palm
facing -y (back of the hand +y), thumb towards -z; about 18 cm from wrist to
middle fingertip. The left hand is the mirror image (x -> -x).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
from smplx.vertex_ids import vertex_ids as _SMPLX_VERTEX_IDS

from recurnet_hand.mano._hand_mesh import FingerSpec, HandMesh, PalmSpec, build_hand_mesh, renumbered
from recurnet_hand.mano.io import NUM_KINEMATIC_JOINTS, NUM_POSE_BASIS, ManoAssets

__all__ = ["synthetic_mano_assets", "SHAPE_DIRECTIONS", "POSE_COMPONENTS"]

#: Meaning of each of the 10 shape coefficients (positive = more of it), in order.
#: The directions are orthogonalised in this order, so later ones are relative to
#: earlier ones; each moves some vertex by 5 mm per unit (thickness: 2 mm per unit).
SHAPE_DIRECTIONS: tuple[str, ...] = (
    "overall size",
    "finger length (index to pinky)",
    "palm width",
    "finger and thumb thickness",
    "palm length",
    "palm thickness",
    "thumb length",
    "index longer, ring shorter",
    "pinky length",
    "finger spread at rest",
)

#: Meaning of the first rows of ``hands_components`` (positive coefficient = more of it).
#: Rows 6..44 complete an orthonormal basis and have no particular meaning.
POSE_COMPONENTS: tuple[str, ...] = (
    "whole-hand curl (fist)",
    "finger spread",
    "thumb opposition",
    "hook: proximal joints extend, distal joints flex",
    "index and middle curl, ring and pinky extend",
    "pointing: index extends, other fingers curl",
)

# Fingers in mesh order (index, middle, ring, pinky, thumb) -> MANO kinematic joints.
_MANO_JOINTS = ((1, 2, 3), (4, 5, 6), (10, 11, 12), (7, 8, 9), (13, 14, 15))
_PARENTS = np.array([-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14])
# smplx's tip table is keyed thumb, index, middle, ring, pinky; mesh order puts the thumb last.
_TIP_IDS = tuple(_SMPLX_VERTEX_IDS["mano"][k] for k in ("index", "middle", "ring", "pinky", "thumb"))

_PALM = PalmSpec(
    knuckle_x=(0.088, 0.092, 0.088, 0.080),
    width=(0.070, 0.084),
    thickness=(0.030, 0.026),
    web=0.005,
    cup=0.003,
    thumb_dir=(np.cos(np.deg2rad(32.0)), -0.30, -np.sin(np.deg2rad(32.0))),
    thumb_base_dir=(1.0, 0.0, -1.2),
)
_FINGERS = (
    FingerSpec((0.038, 0.022, 0.020), (0.0095, 0.0075), 0.85, (5, 4, 6), 8, spread=0.08),
    FingerSpec((0.042, 0.026, 0.022), (0.0100, 0.0078), 0.85, (6, 4, 6), 8, spread=0.0),
    FingerSpec((0.040, 0.025, 0.021), (0.0095, 0.0074), 0.85, (5, 4, 6), 8, spread=-0.08),
    FingerSpec((0.031, 0.018, 0.019), (0.0083, 0.0065), 0.85, (5, 3, 6), 8, spread=-0.18),
    FingerSpec((0.034, 0.028, 0.024), (0.0115, 0.0090), 0.90, (4, 3, 4), 10),
)
_SHAPE_STEP = 0.005  # metres: largest vertex displacement of one unit of each beta
_THICKNESS_STEP = 0.002  # metres: the same for the finger-thickness direction
_BACK = np.array([0.0, 1.0, 0.0])  # back of the hand; the palm faces -y


def synthetic_mano_assets(side: str = "right", seed: int = 0) -> ManoAssets:
    """Generate MANO-format assets procedurally (no licensed data).

    The mesh has MANO's 778 vertices and 1538 triangles: a rounded palm slab open at
    the wrist and five tubes capped by fingertip vertices placed at smplx's MANO tip ids
    (thumb 744, index 320, middle 443, ring 554, pinky 671). Joints sit at the knuckles
    and are regressed exactly by ``J_regressor`` (each row averages one vertex ring).
    Skinning weights blend each finger segment with its parent across the joint.
    ``posedirs`` is all zeros: the model has no pose-corrective blend shapes. Shape
    directions are listed in :data:`SHAPE_DIRECTIONS`, the first PCA pose components in
    :data:`POSE_COMPONENTS`; ``hands_mean`` is a relaxed, slightly curled hand.

    Args:
        side: ``"right"`` or ``"left"`` (the mirror image of the right hand).
        seed: varies finger lengths and thicknesses and palm size by up to +-3 % around the
            built-in proportions, so several seeds give a few distinct plausible hands. The
            result is a deterministic function of ``(side, seed)``.

    Returns:
        :class:`~recurnet_hand.mano.io.ManoAssets`, lengths in metres.

    Raises:
        ValueError: ``side`` is not ``"right"`` or ``"left"``.

    Examples:
        >>> assets = synthetic_mano_assets("right")
        >>> assets.v_template.shape, assets.f.shape
        ((778, 3), (1538, 3))
    """
    if side not in ("right", "left"):
        raise ValueError(f"side must be 'right' or 'left', got {side!r}")
    palm, fingers = _jittered_specs(np.random.default_rng(seed))
    mesh = _with_tips_at_smplx_ids(build_hand_mesh(palm, fingers))
    wrist = mesh.vertices[mesh.wrist_ring].mean(axis=0)
    mesh = _translated(mesh, -wrist)

    regressor = _joint_regressor(mesh)
    joints = _design_joints(mesh)
    components, mean = _pose_space(mesh)
    assets = ManoAssets(
        v_template=mesh.vertices,
        shapedirs=_shape_directions(mesh),
        posedirs=np.zeros((len(mesh.vertices), 3, NUM_POSE_BASIS)),
        J_regressor=regressor,
        J=joints,
        weights=_skinning_weights(mesh),
        kintree_table=np.stack([_PARENTS, np.arange(NUM_KINEMATIC_JOINTS)]),
        f=mesh.faces,
        hands_components=components,
        hands_mean=mean,
        side="right",
    )
    return assets if side == "right" else _mirrored(assets)


# --------------------------------------------------------------------------- mesh


def _jittered_specs(rng: np.random.Generator) -> tuple[PalmSpec, tuple[FingerSpec, ...]]:
    def jitter(n: int) -> np.ndarray:
        return 1.0 + 0.03 * rng.uniform(-1.0, 1.0, n)

    length, width = jitter(2)
    palm = PalmSpec(
        knuckle_x=tuple(length * x for x in _PALM.knuckle_x),
        width=tuple(width * w for w in _PALM.width),
        thickness=_PALM.thickness,
        web=_PALM.web,
        cup=_PALM.cup,
        thumb_dir=_PALM.thumb_dir,
        thumb_base_dir=_PALM.thumb_base_dir,
    )
    fingers = []
    for spec, (lf, rf) in zip(_FINGERS, jitter(2 * len(_FINGERS)).reshape(-1, 2)):
        fingers.append(
            FingerSpec(
                tuple(lf * x for x in spec.lengths),
                tuple(rf * r for r in spec.radii),
                spec.flatness,
                spec.rings,
                spec.ring_size,
                spec.spread,
            )
        )
    return palm, tuple(fingers)


def _with_tips_at_smplx_ids(mesh: HandMesh) -> HandMesh:
    """Renumber vertices so each fingertip gets smplx's MANO tip id; others keep their order."""
    n = len(mesh.vertices)
    tips = [g.tip for g in mesh.fingers]
    order = np.full(n, -1)
    order[list(_TIP_IDS)] = tips
    order[order < 0] = np.setdiff1d(np.arange(n), tips)  # old id of each new slot
    new_id = np.empty(n, dtype=np.int64)
    new_id[order] = np.arange(n)
    return renumbered(mesh, order, new_id)


def _translated(mesh: HandMesh, offset: np.ndarray) -> HandMesh:
    fingers = tuple(replace(g, base=g.base + offset, joints=g.joints + offset) for g in mesh.fingers)
    return replace(mesh, vertices=mesh.vertices + offset, axis_point=mesh.axis_point + offset, fingers=fingers)


# --------------------------------------------------------------------------- rigging


def _joint_regressor(mesh: HandMesh) -> np.ndarray:
    """Each joint is the mean of one vertex loop: the wrist opening, a finger's hole, or a joint ring."""
    reg = np.zeros((NUM_KINEMATIC_JOINTS, len(mesh.vertices)))
    reg[0, mesh.wrist_ring] = 1.0 / len(mesh.wrist_ring)
    for geom, ids in zip(mesh.fingers, _MANO_JOINTS):
        for joint, ring in zip(ids, (geom.base_ring, *geom.joint_rings)):
            reg[joint, ring] = 1.0 / len(ring)
    return reg


def _design_joints(mesh: HandMesh) -> np.ndarray:
    """Joint positions from the construction (loop centres and axis points), independent of the regressor."""
    joints = np.zeros((NUM_KINEMATIC_JOINTS, 3))
    for geom, ids in zip(mesh.fingers, _MANO_JOINTS):
        joints[list(ids)] = np.stack([geom.base, geom.joints[0], geom.joints[1]])
    return joints  # the wrist stays at the origin (the mesh was centred on its loop)


def _smoothstep(t: np.ndarray, at: float, half_width: float) -> np.ndarray:
    x = np.clip((t - at + half_width) / (2.0 * half_width), 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


def _skinning_weights(mesh: HandMesh) -> np.ndarray:
    """Each vertex follows its segment's joint, blended smoothly with the parent across each joint."""
    v = mesh.vertices
    weights = np.zeros((len(v), NUM_KINEMATIC_JOINTS))
    palm = mesh.part < 0
    claimed = np.zeros(len(v))
    centres_z = np.array([g.base[2] for g in mesh.fingers[:4]])
    for f, (geom, ids) in enumerate(zip(mesh.fingers, _MANO_JOINTS)):
        arcs = geom.joint_arcs
        half = (0.012 if f == 4 else 0.010, 0.3 * min(arcs[0], arcs[1] - arcs[0]), 0.3 * (arcs[1] - arcs[0]))
        tube = mesh.part == f
        t = mesh.arc[tube]
        s1, s2, s3 = _smoothstep(t, 0.0, half[0]), _smoothstep(t, arcs[0], half[1]), _smoothstep(t, arcs[1], half[2])
        weights[np.ix_(tube, ids)] = np.stack([s1 - s2, s2 - s3, s3], axis=1)
        weights[tube, 0] = 1.0 - s1
        # Palm vertices near the finger's hole follow its first joint partly.
        rel = v[palm] - geom.base
        if f < 4:
            # Piecewise-linear partition of unity across the four finger columns.
            lateral = np.interp(v[palm, 2], centres_z, np.eye(4)[f])
            near = lateral * _smoothstep(rel @ geom.base_dir, 0.0, half[0])
        else:
            # The thumb leaves the radial side (-z) obliquely; measure along the side's normal so
            # its whole hole loop sits at the blend centre, and fade out over the thenar region.
            along = -rel[:, 2]
            radial = np.linalg.norm(rel[:, :2], axis=1)
            near = _smoothstep(along, 0.0, 0.02) * (1.0 - _smoothstep(radial, 0.036, 0.012))
        weights[palm, ids[0]] = near
        claimed[palm] += near
    over = np.maximum(claimed, 1.0)
    weights[palm] /= over[palm, None]
    weights[palm, 0] = 1.0 - claimed[palm] / over[palm]
    return weights


def _shape_directions(mesh: HandMesh) -> np.ndarray:
    """The 10 directions of :data:`SHAPE_DIRECTIONS`, orthogonalised and scaled to 5 mm per unit (thickness 2 mm)."""
    v, axis, part = mesh.vertices, mesh.axis_point, mesh.part
    palm = part < 0
    base = np.zeros_like(v)  # base centre of each vertex's finger (palm: unused)
    along = np.zeros_like(v)  # axis offset from the finger base
    for f, geom in enumerate(mesh.fingers):
        base[part == f] = geom.base
        along[part == f] = axis[part == f] - geom.base
    radial = np.where(palm[:, None], 0.0, v - axis)
    palm_len = max(g.base[0] for g in mesh.fingers[:4])

    def palm_field(fn) -> np.ndarray:
        # Palm vertices move by fn(p); finger vertices move rigidly with their base centre.
        return np.where(palm[:, None], fn(v), fn(base))

    def fingers(*weights: float) -> np.ndarray:
        w = np.zeros(len(v))
        for f, wf in enumerate(weights):
            w[part == f] = wf
        return w[:, None]

    spread = np.array([1.0, 0.2, -0.6, -1.2, 0.0])
    raw = [
        v,
        fingers(1, 1, 1, 1, 0) * along,
        palm_field(lambda p: p * [0, 0, 1] * (0.4 + 0.6 * np.clip(p[:, :1] / palm_len, 0, 1))),
        radial,
        palm_field(lambda p: p * [1, 0, 0]),
        np.where(palm[:, None], v * [0, 1, 0], 0.0),
        fingers(0, 0, 0, 0, 1) * along,
        fingers(1, 0, -1, 0, 0) * along,
        fingers(0, 0, 0, 1, 0) * along,
        fingers(*spread) * np.cross(_BACK, v - base),
    ]
    basis = []
    for d in raw:
        d = d.ravel().copy()
        for b in basis:
            d -= (d @ b) * b
        basis.append(d / np.linalg.norm(d))
    dirs = np.stack([b.reshape(v.shape) for b in basis], axis=-1)
    dirs *= _SHAPE_STEP / np.linalg.norm(dirs, axis=1).max(axis=0)
    # Fingers are only ~8 mm in radius: a full step would thin them to needles at beta = -2.
    dirs[..., 3] *= _THICKNESS_STEP / _SHAPE_STEP
    return dirs


def _pose_space(mesh: HandMesh) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal ``hands_components`` (first rows: :data:`POSE_COMPONENTS`) and ``hands_mean``."""
    palm_normal = -_BACK
    flex = [np.cross(g.base_dir, palm_normal) for g in mesh.fingers[:4]]
    flex = [a / np.linalg.norm(a) for a in flex]
    thumb = mesh.fingers[4]
    t_dir = thumb.joints[1] - thumb.joints[0]
    t_dir /= np.linalg.norm(t_dir)
    # The thumb flexes towards the palm and across it (towards the little finger, +z).
    t_flex = np.cross(t_dir, palm_normal + 0.5 * np.array([0.0, 0.0, 1.0]))
    t_flex /= np.linalg.norm(t_flex)
    # Opposition swings the whole thumb under the palm towards the little finger.
    t_opp = np.cross(t_dir, palm_normal + 0.8 * np.array([0.0, 0.0, 1.0]))
    t_opp /= np.linalg.norm(t_opp)

    def pose(fingers=(0, 0, 0), per_finger=(1, 1, 1, 1), spread=(0, 0, 0, 0), thumb=(0, 0, 0), twist=0.0, abduct=0.0):
        """45-vector: ``fingers`` flexion per joint level scaled by ``per_finger``; spread at the MCPs."""
        p = np.zeros((NUM_KINEMATIC_JOINTS, 3))
        for f in range(4):
            for level, joint in enumerate(_MANO_JOINTS[f]):
                p[joint] = fingers[level] * per_finger[f] * flex[f]
            p[_MANO_JOINTS[f][0]] += spread[f] * _BACK
        t1, t2, t3 = _MANO_JOINTS[4]
        p[t1] = thumb[0] * t_opp + twist * t_dir + abduct * _BACK
        p[t2], p[t3] = thumb[1] * t_flex, thumb[2] * t_flex
        return p[1:].ravel()

    meaningful = [
        pose(fingers=(0.9, 1.1, 0.8), thumb=(0.3, 0.6, 0.8)),
        pose(spread=(1.0, 0.15, -0.6, -1.1), abduct=0.8),
        pose(thumb=(1.0, 0.4, 0.3), twist=0.3),
        pose(fingers=(-1.0, 1.0, 0.8)),
        pose(fingers=(1, 1, 1), per_finger=(1, 1, -1, -1)),
        pose(fingers=(1, 1, 1), per_finger=(-1, 0.6, 0.6, 0.6), thumb=(0, 0.5, 0.5)),
    ]
    # Gram-Schmidt keeps each component's meaning up to the parts shared with earlier ones;
    # QR against the identity completes the basis.
    q, _ = np.linalg.qr(np.concatenate([np.stack(meaningful, axis=1), np.eye(45)], axis=1))
    components = q[:, :45].T
    for k, m in enumerate(meaningful):  # QR may flip signs; keep "positive = more of it"
        if components[k] @ m < 0:
            components[k] *= -1
    mean = pose(fingers=(0.25, 0.35, 0.2), thumb=(0.15, 0.2, 0.25))
    return components, mean


def _mirrored(assets: ManoAssets) -> ManoAssets:
    """The other hand: reflect x, flip face winding, mirror pose-space rotations."""
    flip = np.array([-1.0, 1.0, 1.0])
    # Axis-angle vectors are pseudovectors: under x -> -x they map to (a, -b, -c).
    rot_flip = np.tile(-flip, NUM_KINEMATIC_JOINTS - 1)
    # posedirs act on (R - I) entries; mirroring conjugates R by diag(flip): entry (a, b) gets flip[a] * flip[b].
    entry_flip = np.tile(np.outer(flip, flip).ravel(), NUM_KINEMATIC_JOINTS - 1)
    return ManoAssets(
        v_template=assets.v_template * flip,
        shapedirs=assets.shapedirs * flip[:, None],
        posedirs=assets.posedirs * flip[:, None] * entry_flip,
        J_regressor=assets.J_regressor,
        J=assets.J * flip,
        weights=assets.weights,
        kintree_table=assets.kintree_table,
        f=assets.f[:, ::-1],
        hands_components=assets.hands_components * rot_flip,
        hands_mean=assets.hands_mean * rot_flip,
        side="left" if assets.side == "right" else "right",
    )
