"""Block DCT of RGB faces into 192 frequency channels, and its inverse (docs/design.md §2.2).

The forward transform is: RGB in [0, 255] -> optional bilinear upsample by ``u`` ->
YCbCr (JPEG / BT.601 full range) -> minus 128 -> orthonormal 8x8 DCT-II per block.
Coefficient ``(p, q)`` (vertical, horizontal frequency) of colour plane ``c`` (0=Y, 1=Cb,
2=Cr) of every block forms channel ``64*c + 8*p + q``; the block grid is the spatial grid.

The upsample is never materialised. Upsampling one plane is ``U_h X U_w^T`` and the blockwise
DCT of the result is ``A_h X A_w^T`` with ``A = blockdiag(D) U``. Each 8-row band of ``A``
touches only ``8/u + 2`` input rows (``8`` when ``u = 1``) and, away from the borders, holds the
same weights shifted by ``8/u`` rows. So the whole transform is one strided convolution of each
plane with 64 separable kernels, with edge-replicate padding reproducing the border clamping
of ``F.interpolate``; the kernels are cut from ``A``, which is itself built by interpolating an
identity matrix with ``F.interpolate``. At ``u = 8`` this costs 9 multiply-adds per output
coefficient (126 for the dense products ``A_h X A_w^T`` on 112x112 faces) and builds no
``(B, 3, 8H, 8W)`` intermediate.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor

from fmix.checks import check_float, check_int, check_shape_bchw, check_tensor, is_tracing

BLOCK_SIZE = 8
NUM_PLANES = 3
CHANNELS_PER_PLANE = BLOCK_SIZE * BLOCK_SIZE
NUM_CHANNELS = NUM_PLANES * CHANNELS_PER_PLANE
DC_CHANNELS = (0, 64, 128)
ALLOWED_UPSAMPLE = (1, 2, 4, 8)

# JPEG / BT.601 full range: YCbCr = M @ RGB + offset, on [0, 255].
_YCBCR_MATRIX = (
    (0.299, 0.587, 0.114),
    (-0.168736, -0.331264, 0.5),
    (0.5, -0.418688, -0.081312),
)
_YCBCR_OFFSET = (0.0, 128.0, 128.0)
# Offset of the centred planes fed to the DCT: YCbCr - 128 = M @ RGB + (-128, 0, 0).
_CENTRED_OFFSET = (-128.0, 0.0, 0.0)
_RANGE_TOLERANCE = 1e-3


# --------------------------------------------------------------------------- constants
#
# Constants are float64 CPU tensors made outside any tracing: the transform's own ones when
# the module is imported, the size-dependent ones of the least-squares inverse on first use.
# Each call casts them to the input's dtype and device (a few KiB), so traced or exported
# graphs see them as plain constants and nothing is cached per device.


def _copy_to(constant: Tensor, dtype: torch.dtype | None, device) -> Tensor:
    """Copy of a float64 CPU constant on ``device`` (default CPU) in ``dtype`` (default torch's)."""
    return constant.to(device=device or "cpu", dtype=dtype or torch.get_default_dtype(), copy=True)


def _like(constant: Tensor, x: Tensor) -> Tensor:
    return constant.to(dtype=x.dtype, device=x.device)


def _plain_constant(builder):
    """Run a builder of float64 CPU constants outside inference mode and autograd.

    Tensors made under ``torch.inference_mode`` could not be reused later by autograd.
    """

    @functools.wraps(builder)
    def build(*args):
        with torch.inference_mode(False), torch.no_grad():
            return builder(*args)

    return build


@_plain_constant
def _dct_matrix64(n: int) -> Tensor:
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2.0 / n) ** 0.5
    d[0] /= 2.0**0.5
    return d


@functools.lru_cache(maxsize=64)
@_plain_constant
def _upsample_matrix64(n: int, upsample: int) -> Tensor:
    # Column j is the bilinear upsample of the unit signal e_j: interpolate n one-column
    # images (height n, width 1) at once; width 1 -> 1 is the identity.
    eye = torch.eye(n, dtype=torch.float64).reshape(n, 1, n, 1)
    columns = F.interpolate(eye, scale_factor=(upsample, 1), mode="bilinear", align_corners=False)
    return columns[:, 0, :, 0].T.contiguous()


@functools.lru_cache(maxsize=64)
@_plain_constant
def _upsample_pinv64(n: int, upsample: int) -> Tensor:
    return torch.linalg.pinv(_upsample_matrix64(n, upsample))


def _padding(upsample: int) -> int:
    return 0 if upsample == 1 else 1


@_plain_constant
def _analysis_kernel64(upsample: int) -> Tensor:
    """Conv weights (64, 1, taps, taps) of the folded upsample + block DCT of one plane.

    Cut from one 8-row band of ``A = blockdiag(D) U`` away from the borders: the rows of the
    middle of three blocks, over its non-zero columns ``stride - pad .. 2 stride + pad - 1``.
    (Tests check that the folded transform equals the materialised one, borders included.)
    """
    stride, pad = BLOCK_SIZE // upsample, _padding(upsample)
    band = torch.kron(torch.eye(3, dtype=torch.float64), _dct_matrix64(BLOCK_SIZE))
    a = band @ _upsample_matrix64(3 * stride, upsample)
    k = a[BLOCK_SIZE : 2 * BLOCK_SIZE, stride - pad : 2 * stride + pad]
    taps = k.shape[1]
    return torch.einsum("pi,qj->pqij", k, k).reshape(CHANNELS_PER_PLANE, 1, taps, taps).contiguous()


@_plain_constant
def _colour_constants() -> dict[str, Tensor]:
    matrix = torch.tensor(_YCBCR_MATRIX, dtype=torch.float64)
    return {
        "matrix": matrix,
        "inverse": torch.linalg.inv(matrix),
        "offset": torch.tensor(_YCBCR_OFFSET, dtype=torch.float64)[:, None, None],
        "centred_offset": torch.tensor(_CENTRED_OFFSET, dtype=torch.float64)[:, None, None],
    }


_DCT8 = _dct_matrix64(BLOCK_SIZE)
_ANALYSIS_KERNELS = {u: _analysis_kernel64(u) for u in ALLOWED_UPSAMPLE}
_COLOUR = _colour_constants()


def dct_matrix(n: int = BLOCK_SIZE, dtype: torch.dtype | None = None, device=None) -> Tensor:
    """Orthonormal DCT-II matrix.

    ``D[k, i] = a_k cos(pi (2i + 1) k / (2n))`` with ``a_0 = sqrt(1/n)`` and ``a_k = sqrt(2/n)``,
    so ``D @ D.T = I``; the 2-D DCT of a block ``X`` is ``D X D^T`` (``scipy.fft.dctn`` with
    ``norm="ortho"``).

    Args:
        n: size of the transform, >= 1.
        dtype: floating dtype of the result (default: torch's default dtype).
        device: device of the result (default: CPU).

    Shape:
        - Output: :math:`(n, n)`, rows indexed by frequency, columns by sample.

    Returns:
        The DCT-II matrix, computed in float64 and cast.
    """
    if check_int(n, "n") < 1:
        raise ValueError(f"Expected n >= 1, got {n}")
    return _copy_to(_dct_matrix64(n), dtype, device)


def upsample_matrix(n: int, upsample: int, dtype: torch.dtype | None = None, device=None) -> Tensor:
    """Matrix of 1-D bilinear upsampling exactly as ``F.interpolate`` does it.

    ``upsample_matrix(n, u) @ v`` equals ``F.interpolate`` with ``scale_factor=u``,
    ``mode="bilinear"``, ``align_corners=False`` applied along one axis of length ``n``. It is
    built by interpolating the identity matrix, so it follows torch's source-index rule
    (including the clamping at the borders) by construction.

    Args:
        n: input length, >= 1.
        upsample: factor ``u`` in {1, 2, 4, 8}.
        dtype: floating dtype of the result (default: torch's default dtype).
        device: device of the result (default: CPU).

    Shape:
        - Output: :math:`(n u, n)`.

    Returns:
        The upsampling matrix; every row sums to 1.
    """
    if check_int(n, "n") < 1:
        raise ValueError(f"Expected n >= 1, got {n}")
    u = _check_upsample(upsample)
    return _copy_to(_upsample_matrix64(n, u), dtype, device)


def block_dct_conv(
    upsample: int, dtype: torch.dtype | None = None, device=None
) -> tuple[Tensor, Tensor, Tensor, int, int]:
    """The transform of :func:`block_dct` as an affine map and a strided convolution.

    ``block_dct(x, u)`` equals, for every colour plane ``c``, ``conv2d(pad(P_c), kernel,
    stride)`` with ``P_c = sum_r matrix[c, r] x_r + offset[c]`` (the centred YCbCr plane) and
    edge-replicate padding of ``padding`` pixels; output channel ``64 c + f`` uses
    ``kernel[f]``. Since everything is linear, callers can fold the colour conversion, a channel
    selection and a normalisation into one convolution of the RGB input.

    Args:
        upsample: factor ``u`` in {1, 2, 4, 8}.
        dtype: floating dtype of the results (default: torch's default dtype).
        device: device of the results (default: CPU).

    Shape:
        - Output: kernel :math:`(64, 1, t, t)`, matrix :math:`(3, 3)`, offset :math:`(3,)`.

    Returns:
        ``(kernel, matrix, offset, stride, padding)``.
    """
    u = _check_upsample(upsample)
    return (
        _copy_to(_ANALYSIS_KERNELS[u], dtype, device),
        _copy_to(_COLOUR["matrix"], dtype, device),
        _copy_to(_COLOUR["centred_offset"].reshape(NUM_PLANES), dtype, device),
        BLOCK_SIZE // u,
        _padding(u),
    )


# --------------------------------------------------------------------------- checks


def _check_upsample(upsample: object) -> int:
    if isinstance(upsample, bool) or not isinstance(upsample, int):
        raise TypeError(f"Expected upsample to be an int in {ALLOWED_UPSAMPLE}, got {upsample!r}")
    if upsample not in ALLOWED_UPSAMPLE:
        raise ValueError(f"Expected upsample in {ALLOWED_UPSAMPLE}, got {upsample}")
    return upsample


def _check_rgb_image(x: object, name: str = "image") -> Tensor:
    x = check_tensor(x, name)
    check_shape_bchw(x, name, NUM_PLANES)
    check_float(x, name)
    return x


def _check_block_divisible(height: int, width: int, upsample: int) -> None:
    for axis, size in (("height", height), ("width", width)):
        if (size * upsample) % BLOCK_SIZE:
            raise ValueError(
                f"Expected the {axis} times upsample to be divisible by {BLOCK_SIZE}, "
                f"got {axis} {size} * upsample {upsample} = {size * upsample}"
            )


def _check_rgb_range(x: Tensor) -> None:
    lo, hi = torch.aminmax(x.detach())
    lo, hi = lo.item(), hi.item()
    if not (lo >= -_RANGE_TOLERANCE and hi <= 255.0 + _RANGE_TOLERANCE):
        raise ValueError(
            f"Expected RGB values in [0, 255], got min {lo:.4g} and max {hi:.4g} "
            "(scale [0, 1] images by 255; pass check_range=False to skip this check)"
        )


def _check_frequency(y: object, name: str = "coefficients") -> Tensor:
    y = check_tensor(y, name)
    check_shape_bchw(y, name, NUM_CHANNELS)
    check_float(y, name)
    return y


# --------------------------------------------------------------------------- colour


def _to_ycbcr(image: Tensor, offset_name: str) -> Tensor:
    """``M @ RGB + offset`` with the named offset ("offset" or "centred_offset")."""
    matrix, offset = _like(_COLOUR["matrix"], image), _like(_COLOUR[offset_name], image)
    return torch.einsum("ij,...jhw->...ihw", matrix, image) + offset


def _to_rgb(planes: Tensor, offset_name: str) -> Tensor:
    """Inverse of :func:`_to_ycbcr` with the same offset."""
    inverse, offset = _like(_COLOUR["inverse"], planes), _like(_COLOUR[offset_name], planes)
    return torch.einsum("ij,...jhw->...ihw", inverse, planes - offset)


def _check_colour_image(x: object, name: str) -> Tensor:
    x = check_tensor(x, name)
    if x.dim() < 3 or x.shape[-3] != NUM_PLANES:
        raise ValueError(f"Expected {name} of shape (*, 3, H, W), got {tuple(x.shape)}")
    check_float(x, name)
    return x


def rgb_to_ycbcr(image: Tensor) -> Tensor:
    """Convert RGB to YCbCr, JPEG / BT.601 full range, on the [0, 255] scale.

    ``Y = 0.299 R + 0.587 G + 0.114 B``, ``Cb = 128 - 0.168736 R - 0.331264 G + 0.5 B``,
    ``Cr = 128 + 0.5 R - 0.418688 G - 0.081312 B``. Values are not clamped.

    Args:
        image: RGB image with values in [0, 255], floating dtype.

    Shape:
        - Input: :math:`(*, 3, H, W)`.
        - Output: :math:`(*, 3, H, W)`, planes Y, Cb, Cr.

    Returns:
        The YCbCr image, same dtype and device.
    """
    return _to_ycbcr(_check_colour_image(image, "image"), "offset")


def ycbcr_to_rgb(image: Tensor) -> Tensor:
    """Convert YCbCr (JPEG / BT.601 full range, [0, 255] scale) back to RGB.

    Uses the exact inverse of the 3x3 matrix of :func:`rgb_to_ycbcr` (computed in float64), so
    a round trip reproduces the input up to floating-point rounding. Values are not clamped.

    Args:
        image: YCbCr image, floating dtype.

    Shape:
        - Input: :math:`(*, 3, H, W)`, planes Y, Cb, Cr.
        - Output: :math:`(*, 3, H, W)`, planes R, G, B.

    Returns:
        The RGB image, same dtype and device.
    """
    return _to_rgb(_check_colour_image(image, "image"), "offset")


# --------------------------------------------------------------------------- transform


def block_dct(image: Tensor, upsample: int = 1, check_range: bool = True) -> Tensor:
    """Block DCT of RGB faces into 192 frequency channels (docs/design.md §2.2).

    Computes, for every colour plane of ``YCbCr(upsample_u(image)) - 128``, the orthonormal
    8x8 DCT-II of each block; coefficient ``(p, q)`` of plane ``c`` becomes channel
    ``64*c + 8*p + q``. The upsample is bilinear with the semantics of
    ``F.interpolate(scale_factor=u, mode="bilinear", align_corners=False)`` but is folded into
    the transform (see the module docstring), so no upsampled image is built. Differentiable.

    Args:
        image: RGB faces with values in [0, 255], floating dtype.
        upsample: bilinear upsampling factor ``u`` in {1, 2, 4, 8}; the family uses 8
            (112x112 faces -> 192 channels of 112x112), ``u=1`` gives 14x14 maps.
        check_range: raise if a value lies outside [0, 255] (1e-3 tolerance). Set False in
            graphs that are traced or exported, where the check cannot run.

    Shape:
        - Input: :math:`(B, 3, H, W)` with ``H u`` and ``W u`` divisible by 8.
        - Output: :math:`(B, 192, H u / 8, W u / 8)`.

    Returns:
        The DCT coefficients, same dtype and device as ``image``.

    Raises:
        TypeError: ``image`` is not a floating tensor, or ``upsample`` is not an int.
        ValueError: wrong shape, ``upsample`` not allowed, sizes not divisible, values out of
            range.
    """
    image = _check_rgb_image(image)
    u = _check_upsample(upsample)
    height, width = image.shape[-2:]
    _check_block_divisible(height, width, u)
    if check_range and not is_tracing():
        _check_rgb_range(image)
    planes = _to_ycbcr(image, "centred_offset").reshape(-1, 1, height, width)
    pad = _padding(u)
    if pad:
        planes = F.pad(planes, (pad, pad, pad, pad), mode="replicate")
    kernel = _like(_ANALYSIS_KERNELS[u], image)
    coefficients = F.conv2d(planes, kernel, stride=BLOCK_SIZE // u)
    return coefficients.reshape(-1, NUM_CHANNELS, height * u // BLOCK_SIZE, width * u // BLOCK_SIZE)


def block_idct(
    coefficients: Tensor,
    upsample: int = 1,
    clamp: bool = False,
    downsample_to_input: bool = False,
) -> Tensor:
    """Inverse of :func:`block_dct`.

    Puts the channels back into 8x8 blocks of the Y, Cb, Cr planes, applies the inverse DCT,
    adds 128 and converts to RGB. This inverts the transform exactly at the resolution the DCT
    was taken at, i.e. it returns the upsampled image ``upsample_u(image)``.

    With ``downsample_to_input=True`` and ``u > 1`` it instead returns the least-squares image
    at the original resolution, ``argmin_X ||A_h X A_w^T - Y||`` per plane with
    ``A = blockdiag(D) U``, computed as ``pinv(U_h) P pinv(U_w)^T`` on the inverse-DCT planes
    ``P`` (``blockdiag(D)`` is orthogonal, so this is ``pinv(A)`` applied to the coefficients).
    ``U`` has full column rank, so for the output of :func:`block_dct` this recovers the input
    exactly; for edited coefficients (e.g. dropped channels) it is the best fit.

    Args:
        coefficients: DCT coefficients as produced by :func:`block_dct`.
        upsample: the factor ``u`` the coefficients were computed with, in {1, 2, 4, 8}.
        clamp: clamp the RGB result to [0, 255].
        downsample_to_input: return the least-squares image at the input resolution (only
            changes the result when ``u > 1``).

    Shape:
        - Input: :math:`(B, 192, h, w)`.
        - Output: :math:`(B, 3, 8h, 8w)`, or :math:`(B, 3, 8h/u, 8w/u)` with
          ``downsample_to_input``.

    Returns:
        RGB image on the [0, 255] scale, same dtype and device.
    """
    coefficients = _check_frequency(coefficients)
    u = _check_upsample(upsample)
    batch, _, h, w = coefficients.shape
    d = _like(_DCT8, coefficients)
    blocks = coefficients.reshape(batch, NUM_PLANES, BLOCK_SIZE, BLOCK_SIZE, h, w)
    planes = torch.einsum("bcpqhw,pi,qj->bchiwj", blocks, d, d)
    planes = planes.reshape(batch, NUM_PLANES, BLOCK_SIZE * h, BLOCK_SIZE * w)
    if downsample_to_input and u > 1:
        rows = _like(_upsample_pinv64(BLOCK_SIZE * h // u, u), coefficients)
        cols = _like(_upsample_pinv64(BLOCK_SIZE * w // u, u), coefficients)
        planes = rows @ planes @ cols.T
    rgb = _to_rgb(planes, "centred_offset")
    return rgb.clamp(0.0, 255.0) if clamp else rgb


# --------------------------------------------------------------------------- channels


def channel_index(plane: int, p: int, q: int) -> int:
    """Channel holding DCT coefficient ``(p, q)`` of colour plane ``plane``.

    Args:
        plane: colour plane, 0 = Y, 1 = Cb, 2 = Cr.
        p: vertical frequency in [0, 7].
        q: horizontal frequency in [0, 7].

    Returns:
        ``64 * plane + 8 * p + q``.
    """
    limits = (("plane", plane, NUM_PLANES), ("p", p, BLOCK_SIZE), ("q", q, BLOCK_SIZE))
    for name, value, upper in limits:
        if not 0 <= check_int(value, name) < upper:
            raise ValueError(f"Expected {name} in [0, {upper - 1}], got {value}")
    return CHANNELS_PER_PLANE * plane + BLOCK_SIZE * p + q


def channel_frequency(channel: int) -> tuple[int, int, int]:
    """Inverse of :func:`channel_index`: ``(plane, p, q)`` of a channel in [0, 191]."""
    if not 0 <= check_int(channel, "channel") < NUM_CHANNELS:
        raise ValueError(f"Expected channel in [0, {NUM_CHANNELS - 1}], got {channel}")
    plane, rest = divmod(channel, CHANNELS_PER_PLANE)
    return (plane, *divmod(rest, BLOCK_SIZE))


def low_frequency_channels(threshold: int) -> list[int]:
    """Channels with ``p + q <= threshold`` in each of the three colour planes.

    Args:
        threshold: largest ``p + q`` included, >= 0 (0 gives the DC channels 0, 64, 128;
            2 gives the 6 lowest frequencies of each plane, 18 channels).

    Returns:
        Sorted list of channel indices.
    """
    if check_int(threshold, "threshold") < 0:
        raise ValueError(f"Expected threshold >= 0, got {threshold}")
    return [
        channel_index(c, p, q)
        for c in range(NUM_PLANES)
        for p in range(BLOCK_SIZE)
        for q in range(BLOCK_SIZE)
        if p + q <= threshold
    ]
