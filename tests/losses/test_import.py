"""``crossentropy.losses`` without torch: a clear message, and the rest of the package works."""

from __future__ import annotations

import subprocess
import sys


def test_losses_without_torch_names_the_install_line():
    code = (
        "import sys\n"
        "class NoTorch:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ModuleNotFoundError(f'No module named {name!r}', name=name)\n"
        "sys.meta_path.insert(0, NoTorch())\n"
        "from crossentropy import info, coding\n"
        "assert abs(info.entropy([0.5, 0.5]) - 1.0) < 1e-15\n"
        "try:\n"
        "    from crossentropy import losses\n"
        "except ModuleNotFoundError as error:\n"
        "    print(error)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=120
    )
    assert "crossentropy.losses needs PyTorch" in result.stdout
    assert "pip install 'crossentropy[torch]'" in result.stdout
