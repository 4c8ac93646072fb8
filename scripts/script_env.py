"""A script's own virtual environment under .deps/, made on first use: the Python checks that need
packages fer does not (onnxruntime, LiteRT) run themselves again inside it."""
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

# The exit status when the environment could not be installed (no network, no venv module):
# callers may skip on it, and only on it; every other failure is the check's own.
INSTALL_FAILED = 77


def venv_dir(name):
    """Where the virtual environment `name` lives (also a place for what its script downloads)."""
    return ROOT / ".deps" / name


def rerun_in_venv(script, name, packages):
    """Runs `script` again, with this process's arguments, in .deps/<name> holding `packages`."""
    venv = venv_dir(name)
    python = venv / "bin" / "python"
    if not python.exists():
        print(f"installing {' '.join(packages)} into .deps/{name} ...", file=sys.stderr)
        try:
            subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
            subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *packages], check=True)
        except (subprocess.CalledProcessError, OSError) as e:
            shutil.rmtree(venv, ignore_errors=True)  # half an environment would be taken for a whole one
            print(f"could not install {' '.join(packages)} into .deps/{name}: {e}", file=sys.stderr)
            sys.exit(INSTALL_FAILED)
    sys.exit(subprocess.run([str(python), script, *sys.argv[1:]]).returncode)
