"""``python -m aromni.cli ...`` (tests and scripts that want this checkout's code, not the installed script)."""
from aromni.cli import main

if __name__ == "__main__":
    main()
