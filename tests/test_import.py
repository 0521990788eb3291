import subprocess
import sys


def test_import_edgelora_does_not_import_torch():
    code = "import sys, edgelora, edgelora.runtime.train, edgelora.runtime.predict, edgelora.runtime.cache; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
