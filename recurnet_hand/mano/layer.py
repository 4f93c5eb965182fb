"""A MANO hand layer that runs ``smplx.MANO`` and returns the project's 21-joint skeleton.

The forward kinematics, PCA pose space and blend shapes are smplx's; this module
only feeds it :class:`~recurnet_hand.mano.io.ManoAssets`, checks input shapes,
appends the fingertips through smplx's vertex-joint selector and reorders the
joints into :data:`recurnet_hand.joints.JOINT_NAMES` order.
"""

from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass

import numpy as np
import smplx
import smplx.lbs
import torch
from smplx.utils import Struct
from torch import Tensor, nn

from recurnet_hand.joints import MANO_TO_HAND21
from recurnet_hand.mano.io import NUM_BETAS, ManoAssets, load_mano
from recurnet_hand.mano.synthetic import synthetic_mano_assets

__all__ = ["ManoLayer", "ManoOutput"]


@dataclass(frozen=True)
class ManoOutput:
    """Result of a :class:`ManoLayer` forward pass.

    Attributes:
        vertices: posed mesh vertices ``(B, 778, 3)``, metres.
        joints: 21 joints ``(B, 21, 3)``, metres, in :data:`recurnet_hand.joints.JOINT_NAMES`
            order (wrist first, fingertips taken from mesh vertices).
        faces: triangle vertex indices ``(F, 3)``, int64 (the layer's ``faces`` buffer).
    """

    vertices: Tensor
    joints: Tensor
    faces: Tensor


class ManoLayer(nn.Module):
    """MANO hand model: pose and shape parameters to a posed mesh and 21 joints.

    Wraps ``smplx.MANO`` built from in-memory :class:`ManoAssets` (no file is
    written). The layer holds no learnable parameters and no per-call state; all
    pose and shape parameters are forward arguments. Its buffers (the MANO arrays,
    ``faces``) are non-persistent: ``state_dict()`` is empty, so checkpoints of models
    that contain the layer neither ship nor override the user's MANO data.

    Coordinates are metres in the model frame. The global rotation acts about the
    wrist joint (joint 0); with ``root_relative=False`` the outputs stay where the
    model puts them (the wrist is at the origin for the synthetic assets at zero
    shape, but not for the official MANO files).

    Args:
        assets: the MANO arrays (see :func:`~recurnet_hand.mano.io.load_mano` and
            :func:`~recurnet_hand.mano.synthetic.synthetic_mano_assets`).
        use_pca: pose the fingers with ``num_pca_comps`` PCA coefficients instead of
            45 axis-angle values.
        num_pca_comps: number of PCA components; 6 is smplx's default. 45 turns PCA
            off (as in smplx).
        flat_hand_mean: if ``False`` the finger pose is an offset from the model's mean
            pose (``hands_mean``, a relaxed slightly curled hand); if ``True`` zero pose is
            the flat template hand.
        root_relative: subtract the wrist joint from vertices and joints.
        dtype: floating point type of the model buffers.

    Examples:
        >>> import torch
        >>> layer = ManoLayer.synthetic("right")
        >>> out = layer(torch.zeros(2, 3), torch.zeros(2, layer.num_pose_params), torch.zeros(2, 10))
        >>> tuple(out.vertices.shape), tuple(out.joints.shape), tuple(layer.faces.shape)
        ((2, 778, 3), (2, 21, 3), (1538, 3))
    """

    faces: Tensor

    def __init__(
        self,
        assets: ManoAssets,
        *,
        use_pca: bool = True,
        num_pca_comps: int = 6,
        flat_hand_mean: bool = False,
        root_relative: bool = False,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not isinstance(assets, ManoAssets):
            raise TypeError(f"ManoLayer: assets must be ManoAssets, got {type(assets).__name__}")
        if not 1 <= int(num_pca_comps) <= 45:
            raise ValueError(f"ManoLayer: num_pca_comps must be in [1, 45], got {num_pca_comps}")
        self.side = assets.side
        self.root_relative = bool(root_relative)
        self.flat_hand_mean = bool(flat_hand_mean)
        # smplx treats 45 components as "no PCA"; mirror that so num_pose_params agrees.
        self.use_pca = bool(use_pca) and int(num_pca_comps) < 45
        self.num_pca_comps = int(num_pca_comps)

        # smplx prints a warning for every model with only 10 shape components (all MANO
        # models have 10); keep construction quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            self.smplx_model = smplx.MANO(
                model_path="",
                data_struct=Struct(**assets.to_dict()),
                is_rhand=assets.side == "right",
                use_pca=self.use_pca,
                num_pca_comps=self.num_pca_comps,
                flat_hand_mean=self.flat_hand_mean,
                create_global_orient=False,
                create_hand_pose=False,
                create_betas=False,
                create_transl=False,
                create_body_pose=False,
                dtype=dtype,
            )
        # The arrays come from the MANO file (licensed, user-supplied): keep them out of state_dict
        # so model checkpoints neither carry nor override them.
        for module in self.smplx_model.modules():
            for name, buffer in list(module.named_buffers(recurse=False)):
                module.register_buffer(name, buffer, persistent=False)
        self.register_buffer("faces", torch.tensor(np.array(assets.f), dtype=torch.long), persistent=False)
        self.register_buffer("_to_hand21", torch.as_tensor(MANO_TO_HAND21, dtype=torch.long), persistent=False)

    @classmethod
    def from_file(cls, path: str | os.PathLike, side: str | None = None, **kwargs) -> ManoLayer:
        """Build a layer from a MANO file (see :func:`~recurnet_hand.mano.io.load_mano`).

        Args:
            path: ``.pkl`` / ``.npz`` file, or a folder with ``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``.
            side: ``"right"`` / ``"left"``; needed for folders and files whose side is unknown.
            **kwargs: forwarded to :class:`ManoLayer`.
        """
        return cls(load_mano(path, side=side), **kwargs)

    @classmethod
    def synthetic(cls, side: str = "right", seed: int = 0, **kwargs) -> ManoLayer:
        """Build a layer on procedurally generated assets (no licensed data needed).

        Args:
            side: ``"right"`` or ``"left"``.
            seed: forwarded to :func:`~recurnet_hand.mano.synthetic.synthetic_mano_assets`.
            **kwargs: forwarded to :class:`ManoLayer`.
        """
        return cls(synthetic_mano_assets(side=side, seed=seed), **kwargs)

    @property
    def num_pose_params(self) -> int:
        """Width of ``hand_pose``: ``num_pca_comps`` with PCA, else 45 (15 joints x 3)."""
        return self.num_pca_comps if self.use_pca else 45

    @property
    def num_betas(self) -> int:
        """Width of ``betas`` (10)."""
        return NUM_BETAS

    @property
    def tip_vertex_ids(self) -> Tensor:
        """Vertex ids used as fingertips (thumb, index, middle, ring, pinky), ``(5,)`` int64."""
        return self.smplx_model.vertex_joint_selector.extra_joints_idxs

    def forward(self, global_orient: Tensor, hand_pose: Tensor, betas: Tensor | None = None) -> ManoOutput:
        """Pose and shape the hand.

        Args:
            global_orient: wrist rotation ``(B, 3)``, axis-angle radians.
            hand_pose: finger pose ``(B, num_pose_params)``: PCA coefficients, or 15 joints x
                axis-angle radians (MANO joint order, relative to each parent) without PCA.
            betas: shape coefficients ``(B, 10)``; zeros if ``None``.

        Returns:
            :class:`ManoOutput` with vertices ``(B, 778, 3)`` and joints ``(B, 21, 3)`` in metres.

        Raises:
            ValueError: an argument has the wrong shape or batch size.
        """
        ref = self.smplx_model.v_template
        batch = _check_shape("global_orient", global_orient, None, 3)
        _check_shape("hand_pose", hand_pose, batch, self.num_pose_params)
        if betas is None:
            betas = torch.zeros(batch, NUM_BETAS, dtype=ref.dtype, device=ref.device)
        _check_shape("betas", betas, batch, NUM_BETAS)

        out = self.smplx_model(
            betas=betas.to(ref),
            global_orient=global_orient.to(ref),
            hand_pose=hand_pose.to(ref),
        )
        # MANO.forward leaves the tip selection commented out; smplx's selector holds the MANO tip ids.
        joints = self.smplx_model.vertex_joint_selector(out.vertices, out.joints)
        joints = joints.index_select(1, self._to_hand21)
        vertices = out.vertices
        if self.root_relative:
            root = joints[:, :1]
            vertices, joints = vertices - root, joints - root
        return ManoOutput(vertices=vertices, joints=joints, faces=self.faces)

    def _joint_model(self) -> dict:
        """Arrays of a 21-point stand-in mesh: the 16 rest joints and the 5 tip vertices.

        Joints depend on the mesh only through ``J_regressor @ v_shaped``, which is linear in
        ``betas``; regressing the template and the shape directions once gives 16 "vertices"
        that sit exactly on the rest joints. With the 5 tips appended, smplx's ``lbs`` run on
        these 21 points yields the posed joints without skinning the other 773 vertices.
        """
        m = self.smplx_model
        key = (m.v_template.device, m.v_template.dtype)
        cached = self.__dict__.get("_joint_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        tips = self.tip_vertex_ids
        n_joints = m.J_regressor.shape[0]
        j_template = m.J_regressor @ m.v_template
        j_shapedirs = torch.einsum("jv,vcs->jcs", m.J_regressor, m.shapedirs)
        posedirs = m.posedirs.view(m.posedirs.shape[0], -1, 3)
        arrays = {
            "v_template": torch.cat([j_template, m.v_template[tips]]),
            "shapedirs": torch.cat([j_shapedirs, m.shapedirs[tips]]),
            "posedirs": torch.cat([torch.zeros_like(posedirs[:, :n_joints]), posedirs[:, tips]], dim=1).flatten(1),
            "J_regressor": torch.cat([torch.eye(n_joints), torch.zeros(n_joints, len(tips))], dim=1).to(j_template),
            "lbs_weights": torch.cat([torch.eye(n_joints).to(j_template), m.lbs_weights[tips]]),
        }
        self.__dict__["_joint_cache"] = (key, arrays)
        return arrays

    def joints(self, global_orient: Tensor, hand_pose: Tensor, betas: Tensor | None = None) -> Tensor:
        """Only the 21 joints ``(B, 21, 3)`` (metres), much cheaper than :meth:`forward`.

        Same arguments and result as ``forward(...).joints``; the linear blend skinning runs
        on the 16 rest joints and the 5 fingertip vertices instead of the whole mesh, with
        the chain of joint transforms computed one batched product per tree level (three
        for MANO) rather than one per joint.
        """
        m = self.smplx_model
        ref = m.v_template
        batch = _check_shape("global_orient", global_orient, None, 3)
        _check_shape("hand_pose", hand_pose, batch, self.num_pose_params)
        if betas is None:
            betas = torch.zeros(batch, NUM_BETAS, dtype=ref.dtype, device=ref.device)
        _check_shape("betas", betas, batch, NUM_BETAS)
        pose = hand_pose.to(ref)
        if self.use_pca:  # the same expansion smplx.MANO.forward applies
            pose = pose @ m.hand_components
        full_pose = torch.cat([global_orient.to(ref), pose], dim=1) + m.pose_mean
        a = self._joint_model()
        joints = _skin_joints(betas.to(ref), full_pose, a, self._levels()).index_select(1, self._to_hand21)
        return joints - joints[:, :1] if self.root_relative else joints

    def _levels(self) -> list[tuple[Tensor, Tensor]]:
        """The kinematic tree by depth: per level, ``(joints, their parents)`` index tensors.

        Every joint of a level depends only on the level above, so the chain of rigid
        transforms is one batched product per level (3 for MANO) instead of one per joint.
        """
        parents = self.smplx_model.parents
        key = parents.device
        cached = self.__dict__.get("_level_cache")
        if cached is not None and cached[0] == key:
            return cached[1]
        p = parents.tolist()
        depth = [0] * len(p)
        for j in range(1, len(p)):
            depth[j] = depth[p[j]] + 1
        levels = []
        for d in range(1, max(depth) + 1):
            ids = [j for j in range(len(p)) if depth[j] == d]
            levels.append((torch.tensor(ids, device=key), torch.tensor([p[j] for j in ids], device=key)))
        self.__dict__["_level_cache"] = (key, levels)
        return levels

    def extra_repr(self) -> str:
        return (
            f"side={self.side!r}, use_pca={self.use_pca}, num_pca_comps={self.num_pca_comps}, "
            f"flat_hand_mean={self.flat_hand_mean}, root_relative={self.root_relative}"
        )


def _skin_joints(betas: Tensor, full_pose: Tensor, a: dict, levels) -> Tensor:
    """Posed rest joints and skinned tip points of the 21-point joint model, ``(B, 16 + 5, 3)``.

    The same computation as ``smplx.lbs.lbs`` on the joint model (shape blend, pose blend,
    rigid transforms along the tree, linear blend skinning), written for 21 points: the
    joint model's regressor is the identity on its first 16 points, and the transform
    chain runs one batched product per tree level.
    """
    b, n = betas.shape[0], a["lbs_weights"].shape[1]
    shaped = a["v_template"] + torch.einsum("bl,mkl->bmk", betas, a["shapedirs"])
    rest = shaped[:, :n]  # the joint model's regressor picks its first n points
    rot = smplx.lbs.batch_rodrigues(full_pose.reshape(-1, 3)).view(b, n, 3, 3)
    eye = torch.eye(3, dtype=rot.dtype, device=rot.device)
    posed_points = shaped + (rot[:, 1:] - eye).reshape(b, -1).matmul(a["posedirs"]).view(b, -1, 3)
    # Local transforms: rotation about each joint, placed at its offset from the parent.
    offsets = rest.clone()
    for ids, par in levels:
        offsets[:, ids] = rest[:, ids] - rest[:, par]
    local = torch.zeros(b, n, 4, 4, dtype=rot.dtype, device=rot.device)
    local[..., :3, :3] = rot
    local[..., :3, 3] = offsets
    local[..., 3, 3] = 1.0
    world = local.clone()
    for ids, par in levels:  # parents are complete before their children's level runs
        world[:, ids] = world[:, par] @ local[:, ids]
    posed_joints = world[..., :3, 3]
    # Skinning transforms map rest positions to posed ones: subtract the rotated rest joint.
    skin = world.clone()
    skin[..., :3, 3] = posed_joints - (world[..., :3, :3] @ rest.unsqueeze(-1)).squeeze(-1)
    tips_w = a["lbs_weights"][n:]  # (5, n)
    t = torch.einsum("vj,bjrc->bvrc", tips_w, skin)
    tips = (t[..., :3, :3] @ posed_points[:, n:].unsqueeze(-1)).squeeze(-1) + t[..., :3, 3]
    return torch.cat([posed_joints, tips], dim=1)


def _check_shape(name: str, value: Tensor, batch: int | None, width: int) -> int:
    """Check ``value`` is a floating ``(B, width)`` tensor (with ``B == batch`` if given); return ``B``."""
    if not isinstance(value, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (B, {width}), got {type(value).__name__}")
    if value.ndim != 2 or value.shape[1] != width:
        raise ValueError(f"{name} must have shape (B, {width}), got {tuple(value.shape)}")
    if batch is not None and value.shape[0] != batch:
        raise ValueError(f"{name} has batch size {value.shape[0]}, expected {batch} (from global_orient)")
    if not value.is_floating_point():
        raise ValueError(f"{name} must be a floating point tensor, got {value.dtype}")
    return value.shape[0]  # kept symbolic (no int()) so torch.export can vary the batch
