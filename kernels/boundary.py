"""What every Triton launcher checks on entry, with one error type and one message form.

A kernel reads raw pointers: a tensor of the wrong shape, dtype or layout, or one on
another device, gives garbage or a crash inside Triton. Each launcher names its
arguments here first::

    args = Args("pair_terms")
    args.tensor("features", features, "B D", layout=CONTIGUOUS)
    args.tensor("targets", targets, "B C", "features", layout=CONTIGUOUS)

Dimension names bind to sizes (the first tensor naming one fixes it), a dtype is a tuple
of those allowed or the name of an earlier argument to match, and every tensor must sit
on the first one's device. A failure raises ``KernelInputError`` (a ``ValueError``)
naming the launcher, the argument, what was expected and what was given:
``pair_terms: targets must be torch.float32 like features, got torch.int64``.

Only metadata is read (shape, dtype, device, strides): no device synchronisation, and a
call that passes does exactly what it did without the checks. What a kernel takes by its
stride arguments is not checked; what it assumes is: ``ROWS`` (unit stride along the last
dimension: the kernel is given the row stride only) and ``CONTIGUOUS`` (the kernel reads
it, and the other tensors or outputs laid out like it, with one row stride).
"""
from __future__ import annotations

import functools

import torch

from drcl_fast.errors import KernelInputError

FLOATS = (torch.float32, torch.float64)
INDICES = (torch.int32, torch.int64)

ANY = "any"
ROWS = "rows"
CONTIGUOUS = "contiguous"


def _names(dtypes: tuple[torch.dtype, ...]) -> str:
    return " or ".join(str(d) for d in dtypes)


@functools.lru_cache(maxsize=None)
def _ranks(dims: str | tuple[str, ...]) -> dict[int, list[str]]:
    """{rank: dimension names} of a ``dims`` argument (parsed once: launchers run in the training loop)."""
    return {len(f): f for f in (d.split() for d in ((dims,) if isinstance(dims, str) else dims))}


class Args:
    """The tensor arguments of one launcher call, checked in the order they are named."""

    def __init__(self, launcher: str) -> None:
        self.launcher = launcher
        self._sizes: dict[str, tuple[int, str]] = {}   # dimension name -> (size, the argument that fixed it)
        self._dtypes: dict[str, torch.dtype] = {}
        self._device: tuple[torch.device, str] | None = None

    def fail(self, message: str) -> KernelInputError:
        """The error to raise, its message led by the launcher's name."""
        return KernelInputError(f"{self.launcher}: {message}")

    def tensor(self, name: str, value: object, dims: str | tuple[str, ...],
               dtype: tuple[torch.dtype, ...] | str | None = FLOATS, *, layout: str = ANY,
               same_device: bool = True) -> None:
        """Check one argument.

        Args:
            name: the argument's name, as the launcher's signature spells it.
            value: what was passed.
            dims: its dimensions' names, space-separated ("B D"); a tuple of such strings where
                several ranks are accepted (the one with the tensor's rank applies).
            dtype: the dtypes allowed; the name of an earlier argument whose dtype it must share;
                None: any dtype.
            layout: ``ANY``, ``ROWS`` or ``CONTIGUOUS`` (the module's docstring).
            same_device: False for a tensor the launcher moves to the others' device itself.
        """
        if not isinstance(value, torch.Tensor):
            raise self.fail(f"{name} must be a torch.Tensor, got {type(value).__name__}")
        shape = value.shape
        names = _ranks(dims).get(len(shape))
        if names is None:
            wanted = " or ".join(f"{len(f)}-D ({' x '.join(f)})" for f in _ranks(dims).values())
            raise self.fail(f"{name} must be {wanted}, got shape {tuple(shape)}")
        sizes = self._sizes
        for dim, size in zip(names, shape):
            bound = sizes.get(dim)
            if bound is None:
                sizes[dim] = (size, name)
            elif bound[0] != size:
                raise self.fail(f"{name} must be {' x '.join(names)} with {dim} = {bound[0]} as in {bound[1]}, "
                                f"got shape {tuple(shape)}")
        if isinstance(dtype, str):
            if value.dtype != self._dtypes[dtype]:
                raise self.fail(f"{name} must be {self._dtypes[dtype]} like {dtype}, got {value.dtype}")
        elif dtype is not None and value.dtype not in dtype:
            raise self.fail(f"{name} must be {_names(dtype)}, got {value.dtype}")
        self._dtypes[name] = value.dtype
        if same_device:
            if self._device is None:
                self._device = (value.device, name)
            elif value.device != self._device[0]:
                raise self.fail(f"{name} is on {value.device} but {self._device[1]} on {self._device[0]}; "
                                f"pass every tensor on one device")
        if layout == ROWS and value.dim() and shape[-1] > 1 and value.stride(-1) != 1:
            raise self.fail(f"{name} must have unit stride along its last dimension (the kernel takes the row "
                            f"stride only), got strides {value.stride()}; pass {name}.contiguous()")
        if layout == CONTIGUOUS and not value.is_contiguous():
            raise self.fail(f"{name} must be contiguous (the kernel reads it and the tensors laid out like it "
                            f"with one row stride), got strides {value.stride()}; pass {name}.contiguous()")

    def strides_like(self, name: str, value: torch.Tensor, other: str, other_value: torch.Tensor) -> None:
        """`value` is read with `other_value`'s strides (after ``tensor`` has checked both)."""
        if value.stride() != other_value.stride():
            raise self.fail(f"{name} must have the strides of {other}, {other_value.stride()}, "
                            f"got {value.stride()}")
