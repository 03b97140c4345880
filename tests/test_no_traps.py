"""Nothing the gate installs is a trap for code that walks modules.

dill.__diff, inspect, documentation tools and IDE helpers walk every module's
attributes (`getattr(obj, "__dict__", None)`); none of them expects a BaseException.
The dry run's placeholder class used to raise one on any attribute access.
"""

from __future__ import annotations

import pytest

from conftest import fresh_python

pytestmark = pytest.mark.usefixtures("wheel_installed")

WALK = r"""
import inspect, pickle, sys
import pickleguard, pickleguard._gate, pickleguard._core
# An input the reader cannot delimit (a bad opcode after a global): its dry run
# builds the placeholder, and plain pickle's own error comes out.
try:
    pickle.loads(b"\x80\x04cos\nsystem\n\xff")
except pickle.UnpicklingError as e:
    print("dry run:", type(e).__name__)
touched = 0
for module in list(sys.modules.values()):
    for name in dir(module):
        try:
            value = getattr(module, name)
        except Exception:
            continue
        for attribute in ("__dict__", "__module__", "__name__", "__qualname__", "__doc__", "__wrapped__", "__mro__"):
            getattr(value, attribute, None)
        try:
            repr(value); dir(value); inspect.isclass(value); callable(value)
            isinstance(value, type) and issubclass(value, Exception)
        except Exception:
            pass
        touched += 1
print("walked", touched > 1000)
placeholder = pickleguard._gate._Placeholder
print(placeholder.__name__, type(placeholder.__dict__).__name__)
try:
    placeholder()
except TypeError as e:
    print("TypeError")
"""


def test_walking_every_module_meets_no_trap(tmp_path):
    proc = fresh_python(tmp_path, WALK, PICKLEGUARD_MODE="warn")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "dry run: UnpicklingError",
        "walked True",
        "_Placeholder mappingproxy",
        "TypeError",
    ], proc.stdout + proc.stderr
