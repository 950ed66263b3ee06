"""The one way the project reads a pickle: an unpickler that can build numpy arrays, numbers,
strings and plain containers, and nothing else.

Dataset pickles (miniImageNet caches, the CIFAR-100 python files) come from the internet. A
plain ``pickle.load`` runs whatever callable the file names (``os.system`` in a crafted
``__reduce__``) before any format check could look at the result; here every global the file
asks for is checked against a short list first, so a crafted file is refused and its payload
never runs.
"""

from __future__ import annotations

import _compat_pickle
import pickle
from pathlib import Path
from typing import Any

from mtl.errors import DataError

# (module, name) pairs a data pickle may load: what numpy arrays, dtypes and scalars need under
# every protocol and numpy version, and plain containers
ALLOWED = {
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
    *((m, "_frombuffer") for m in ("numpy.core.numeric", "numpy._core.numeric")),
    ("numpy", "ndarray"), ("numpy", "dtype"),
    ("_codecs", "encode"),  # how protocol 2 stores bytes written by Python 2
    ("builtins", "set"), ("builtins", "frozenset"), ("builtins", "bytearray"), ("builtins", "complex"),
    ("collections", "OrderedDict"),
}


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        # Python 2 names (protocol < 3: __builtin__.set) as the standard unpickler maps them
        module, name = _compat_pickle.NAME_MAPPING.get((module, name), (module, name))
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"{module}.{name}")
        return super().find_class(module, name)


def load_pickle(path: str | Path) -> Any:
    """The object in a data pickle; a file that asks for anything but arrays, numbers, strings and
    containers, or a corrupt one, is a one-line DataError naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            # latin1 lets pickles written by Python 2 (CIFAR, old caches) restore numpy arrays
            return _Restricted(f, encoding="latin1").load()
    except pickle.UnpicklingError as e:
        what = str(e)
        if "." in what and " " not in what:
            raise DataError(f"{path} is a pickle that would call {what}: data files may hold only arrays, numbers, "
                            "strings and containers, so it is not read (nothing in a data file may run code); "
                            "get the file from its original source") from None
        raise DataError(f"cannot read pickle {path} (UnpicklingError: {what}); "
                        "the file is corrupt or truncated, download it again") from None
    except Exception as e:
        raise DataError(f"cannot read pickle {path} ({type(e).__name__}: {e}); "
                        f"the file is corrupt or truncated, download it again") from None
