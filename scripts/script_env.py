"""A script's own virtual environment under .deps/, made on first use: the Python checks that need
packages fer does not (onnxruntime, LiteRT) run themselves again inside it."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def venv_dir(name):
    """Where the virtual environment `name` lives (also a place for what its script downloads)."""
    return ROOT / ".deps" / name


def rerun_in_venv(script, name, packages):
    """Runs `script` again, with this process's arguments, in .deps/<name> holding `packages`."""
    venv = venv_dir(name)
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"installing {' '.join(packages)} into .deps/{name} ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages], check=True)
    sys.exit(subprocess.run([str(python), script, *sys.argv[1:]]).returncode)
