"""``python -m aromni.train RECIPE [key=value ...]`` (what ``deepspeed --module aromni.train`` runs)."""
import sys

from aromni.cli import app

if __name__ == "__main__":
    app(["train", *sys.argv[1:]], prog_name="aromni")
