"""A stand-in accelerator on the CPU: catches device faults and counts host syncs without a GPU.

    with VirtualDevice() as device:
        cell = device.move(cell)                      # parameters and buffers onto it
        y, state = cell.scan(device.put(x), cell.initial_state(3))
    device.syncs                                      # host syncs seen, by kind

A tensor on the virtual device computes on the CPU (its values are the CPU's, exactly) but says
it lives on device "meta", as a CUDA tensor says "cuda". So code that takes the device from its
inputs (`torch.zeros(..., device=x.device)`, `x.new_zeros`, `.to(x.device)`) creates tensors on
the virtual device, while code that creates one without `device=` gets a plain CPU tensor, and
an op mixing the two raises `DeviceFault`, as CUDA raises "Expected all tensors to be on the
same device". As on CUDA, a 0-dim CPU tensor may meet device tensors (a scalar), indexing may
take CPU index tensors (counted in `syncs["cpu index"]`: each is a copy to the device), and
`copy_` and `.to()` move data either way.

A host sync is an op whose result the host must wait for: `bool(t)`, `t.item()`, `int(t)`,
`t.tolist()` (`_local_scalar_dense`, "scalar") and a copy of a device tensor to the CPU
(`.cpu()`, `.to("cpu")`, "download"). Each one is counted in `syncs`; on a GPU each stalls the
host until the device has caught up. `.numpy()` of a device tensor raises, as on CUDA.
"""

from __future__ import annotations

import collections

import torch
from torch import Tensor, nn
from torch.utils import _pytree as pytree
from torch.overrides import TorchFunctionMode
from torch.utils._mode_utils import no_dispatch
from torch.utils._python_dispatch import TorchDispatchMode

VIRTUAL = torch.device("meta")
_CPU = torch.device("cpu")
_aten = torch.ops.aten
_COPIES = (_aten._to_copy.default, _aten.copy_.default, _aten._copy_from.default,
           _aten._copy_from_and_resize.default)
# CUDA takes CPU index tensors here (it copies them over): allowed, and counted
_INDEXING = (_aten.index.Tensor, _aten.index_put.default, _aten.index_put_.default,
             _aten._index_put_impl_.default)
_LAZY_VIEWS = {_aten._conj.default: torch.conj_physical, _aten._neg_view.default: torch.neg}
# ... and wants a packed sequence's lengths and batch sizes on the CPU here
_CPU_ARGUMENTS = (_aten._pack_padded_sequence.default, _aten._pad_packed_sequence.default,
                  _aten.gru.data, _aten.lstm.data, _aten.rnn_tanh.data, _aten.rnn_relu.data)


class DeviceFault(RuntimeError):
    """An op mixed tensors on the virtual device with CPU tensors (not 0-dim scalars)."""


class OnVirtualDevice(Tensor):
    """A CPU tensor (`inner`) presented as a tensor on VIRTUAL (see the module docstring)."""

    inner: Tensor
    __module__ = "torch"     # libraries that pick a backend by a tensor's module (opt_einsum)
                             # see a torch tensor, as they would on CUDA

    @staticmethod
    def __new__(cls, inner: Tensor):
        return Tensor._make_wrapper_subclass(cls, inner.size(), strides=inner.stride(),
                                             storage_offset=inner.storage_offset(),
                                             dtype=inner.dtype, layout=inner.layout,
                                             device=VIRTUAL, requires_grad=False)

    def __init__(self, inner: Tensor):
        self.inner = inner

    def __repr__(self) -> str:
        return f"OnVirtualDevice({self.inner!r})"

    def data_ptr(self) -> int:
        return self.inner.data_ptr()

    def tolist(self):
        VirtualDevice.active.syncs["scalar"] += 1
        return self.inner.tolist()

    def numpy(self, *args, **kwargs):
        raise TypeError("can't convert a tensor on the (virtual) device to numpy: "
                        "use Tensor.cpu() first, as on CUDA")

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if VirtualDevice.active is None:
            raise RuntimeError("tensors on the virtual device compute only inside "
                               "`with VirtualDevice():`")
        return VirtualDevice.active.run(func, args, kwargs or {})


class VirtualDevice(TorchDispatchMode):
    """The dispatch mode that runs ops on the virtual device (see the module docstring)."""

    active: VirtualDevice | None = None

    def __init__(self):
        super().__init__()
        self.syncs: collections.Counter = collections.Counter()

    def __enter__(self):
        VirtualDevice.active = self
        self._literals = _LiteralsOnDevice().__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        VirtualDevice.active = None
        super().__exit__(*exc)
        return self._literals.__exit__(*exc)

    # ------------------------------------------------------------------ moving things there
    @staticmethod
    def put(value):
        """A tensor (or a dict/list/tuple of them) copied onto the virtual device; the
        requires_grad flag of each is kept."""
        def to_device(t):
            if not isinstance(t, Tensor):
                return t
            return OnVirtualDevice(t.detach().clone()).requires_grad_(t.requires_grad)
        return pytree.tree_map(to_device, value)

    @staticmethod
    def take(value):
        """The CPU tensors of values on the virtual device (detached, for comparisons)."""
        return pytree.tree_map(
            lambda t: t.detach().inner if isinstance(t, OnVirtualDevice) else t, value)

    def move(self, module: nn.Module) -> nn.Module:
        """`module` with its parameters and buffers on the virtual device, in place, through
        `nn.Module._apply` (as `.to(device)`, so modules that rebuild things on a move do)."""
        return module._apply(lambda t: t if isinstance(t, OnVirtualDevice)
                             else OnVirtualDevice(t.detach()))

    # ------------------------------------------------------------------ every op
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        return self.run(func, args, kwargs or {})

    def run(self, func, args, kwargs):
        leaves = pytree.tree_leaves((args, kwargs))
        on_device = [t for t in leaves if isinstance(t, OnVirtualDevice)]
        device = kwargs.get("device")
        to_device = device is not None and torch.device(device) == VIRTUAL
        to_cpu = device is not None and torch.device(device) == _CPU
        if on_device and func not in _COPIES + _CPU_ARGUMENTS:
            mixed = [t for t in leaves if isinstance(t, Tensor)
                     and not isinstance(t, OnVirtualDevice) and t.device == _CPU and t.dim() > 0]
            if mixed and func in _INDEXING:
                self.syncs["cpu index"] += 1
            elif mixed:
                raise DeviceFault(
                    f"{func}: tensors on the device mixed with CPU tensors of shapes "
                    f"{[tuple(t.shape) for t in mixed]} (created without device=?)")
        if func is _aten._local_scalar_dense.default and on_device:
            self.syncs["scalar"] += 1
        downloads = on_device and (to_cpu or (func is _aten.copy_.default
                                              and not isinstance(args[0], OnVirtualDevice)))
        if downloads:
            self.syncs["download"] += 1
        if to_device:
            kwargs = {**kwargs, "device": _CPU}
        wrappers = {id(t.inner): t for t in on_device}
        if func in _LAZY_VIEWS and on_device:
            # a lazy conj/neg view keeps its bit on the inner tensor only, which the ops on
            # the wrappers lose: the values are conjugated (negated) instead
            return OnVirtualDevice(_LAZY_VIEWS[func](args[0].inner))
        out = func(*pytree.tree_map(_unwrap, args), **pytree.tree_map(_unwrap, kwargs))
        if func is _aten._local_scalar_dense.default or to_cpu or not (on_device or to_device):
            return out
        if func is _aten.copy_.default and not isinstance(args[0], OnVirtualDevice):
            return out
        if func is _aten._pack_padded_sequence.default:     # (data, batch_sizes on the CPU)
            return OnVirtualDevice(out[0]), out[1]
        def wrap(t):        # an in-place op returns its input: the same wrapper
            if not isinstance(t, Tensor):
                return t
            same = wrappers.get(id(t))
            return OnVirtualDevice(t) if same is None else same
        if torch.Tag.inplace_view in func.tags:        # transpose_, ...: the wrapper's own
            _change_view_in_place(func, args, kwargs)  # shape and strides change as well
        return pytree.tree_map(wrap, out)


class _LiteralsOnDevice(TorchFunctionMode):
    """torch.tensor / torch.as_tensor with device=VIRTUAL, and Tensor.new_tensor of a tensor
    on it: made on the CPU and put on the virtual device (torch makes these without
    dispatching a factory op)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        device = kwargs.get("device")
        if func is Tensor.new_tensor and isinstance(args[0], OnVirtualDevice) and device is None:
            like = args[0]
            return OnVirtualDevice(torch.tensor(args[1], dtype=kwargs.get("dtype", like.dtype)))
        if func in (torch.tensor, torch.as_tensor) and device is not None \
                and torch.device(device) == VIRTUAL:
            data = args[0] if args else kwargs["data"]
            if isinstance(data, OnVirtualDevice):
                return func(data, **{**kwargs, "device": None})
            cpu = func(*args, **{**kwargs, "device": _CPU})
            return VirtualDevice.put(cpu) if cpu.requires_grad else OnVirtualDevice(cpu)
        return func(*args, **kwargs)


def _change_view_in_place(func, args, kwargs) -> None:
    """Run an in-place view op (transpose_, unsqueeze_, ...) on the wrappers themselves,
    which have no data: only their shape and strides change (torch's own recipe for wrapper
    subclasses, torch.utils._python_dispatch.return_and_correct_aliasing)."""
    with no_dispatch():
        meta_in_tls = torch._C._meta_in_tls_dispatch_include()
        torch._C._set_meta_in_tls_dispatch_include(True)
        try:
            func(*args, **kwargs)
        finally:
            torch._C._set_meta_in_tls_dispatch_include(meta_in_tls)


def _unwrap(t):
    return t.inner if isinstance(t, OnVirtualDevice) else t
